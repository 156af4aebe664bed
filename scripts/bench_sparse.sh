#!/usr/bin/env bash
# Sparse checkpoints against the dense 4-bit model, in one run: each file is made from the F16 model with
# `tern convert` (magnitude and Wanda pruning; Wanda reads Tests/Fixtures/longtext/licenses.txt, not the text it
# is scored on), then pp128/tg128 alternate between files for ROUNDS rounds (medians; ratios to dense Q4_0 of the
# same round), and perplexity of Tests/Fixtures/smollm2/essay.txt at context 512 is computed once per file.
# Needs a release build; makes models/SmolLM2-135M-Instruct.f16.gguf from the default model if it is missing.
# Usage: scripts/bench_sparse.sh [ROUNDS=3] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-2}
tern=.build/release/tern
[ -x "$tern" ] || { echo "build first: swift build -c release" >&2; exit 1; }
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || models/fetch
src=models/SmolLM2-135M-Instruct.f16.gguf
[ -f "$src" ] || "$tern" convert --model models/SmolLM2-135M-Instruct.Q4_1.gguf --type f16 --output "$src" >&2
out=models/sparse
mkdir -p "$out"
calib=Tests/Fixtures/longtext/licenses.txt
essay=Tests/Fixtures/smollm2/essay.txt
make() { # name type [convert options...]
    local f="$out/$1.gguf" t=$2; shift 2
    [ -f "$f" ] || "$tern" convert --model "$src" --type "$t" --output "$f" "$@" >&2
}
make dense-q4_0 q4_0
make dense-q4_1 q4_1
make group50-magnitude q4_0 --sparsity 0.5 --sparse-pattern group
make group50-wanda q4_0 --sparsity 0.5 --sparse-pattern group --prune wanda --calibration "$calib"
make group25-wanda q4_0 --sparsity 0.25 --sparse-pattern group --prune wanda --calibration "$calib"
make 2-4-magnitude q4_0 --sparsity 0.5 --sparse-pattern 2:4
make 2-4-wanda q4_0 --sparsity 0.5 --sparse-pattern 2:4 --prune wanda --calibration "$calib"
make unstructured50-magnitude q4_0 --sparsity 0.5 --sparse-pattern unstructured
make unstructured50-wanda q4_0 --sparsity 0.5 --sparse-pattern unstructured --prune wanda --calibration "$calib"
names=(dense-q4_0 dense-q4_1 group50-magnitude group50-wanda group25-wanda 2-4-magnitude 2-4-wanda unstructured50-magnitude unstructured50-wanda)
speed=(dense-q4_0 dense-q4_1 group50-wanda group25-wanda 2-4-wanda unstructured50-wanda)
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A pp tg ppr tgr
for _ in $(seq "$rounds"); do
    declare -A rp rt
    for n in "${speed[@]}"; do
        o=$("$tern" bench --model "$out/$n.gguf" --threads "$threads" --repetitions 3 --json 2>/dev/null)
        rp[$n]=$(echo "$o" | field pp_tokens_per_s); rt[$n]=$(echo "$o" | field tg_tokens_per_s)
    done
    for n in "${speed[@]}"; do
        pp[$n]+="${rp[$n]} "; tg[$n]+="${rt[$n]} "
        ppr[$n]+="$(awk "BEGIN {print ${rp[$n]} / ${rp[dense-q4_0]}}") "
        tgr[$n]+="$(awk "BEGIN {print ${rt[$n]} / ${rt[dense-q4_0]}}") "
    done
done
printf "%-26s %7s %9s %8s %9s %7s %9s %7s\n" file MiB bits/w ppl pp128 ratio tg128 ratio
for n in "${names[@]}"; do
    f="$out/$n.gguf"
    # bits per weight of the layers' projections (the matrices pruning touches), scales and indices included
    bpw=$("$tern" inspect "$f" | awk '/blk\.[0-9]+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight/ {b += $(NF-1); w += $(NF-1) / $(NF-3)} END {printf "%.2f", 8 * b / w}')
    ppl=$("$tern" perplexity --model "$f" --file "$essay" --context 512 --threads "$threads" 2>/dev/null | awk '/^ppl:/ {print $2}')
    mib=$(awk "BEGIN {printf \"%.1f\", $(stat -c %s "$f") / 1048576}")
    if [ -n "${pp[$n]:-}" ]; then
        printf "%-26s %7s %9s %8.2f %9.1f %6.2fx %9.1f %6.2fx\n" "$n" "$mib" "$bpw" "$ppl" \
            "$(echo ${pp[$n]} | tr ' ' '\n' | median)" "$(echo ${ppr[$n]} | tr ' ' '\n' | median)" \
            "$(echo ${tg[$n]} | tr ' ' '\n' | median)" "$(echo ${tgr[$n]} | tr ' ' '\n' | median)"
    else
        printf "%-26s %7s %9s %8.2f %9s %7s %9s %7s\n" "$n" "$mib" "$bpw" "$ppl" - - - -
    fi
done
