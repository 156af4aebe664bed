#!/usr/bin/env bash
# Tern vs llama.cpp on the same machine, same files, same threads, in one run: for each weight type, both
# engines alternate for ROUNDS rounds (so drift in machine speed hits both) and the medians are compared.
# Needs a release build (swift build -c release) and llama-cpp-python (pip install llama-cpp-python).
# Usage: scripts/bench_vs_llamacpp.sh [ROUNDS=3] [THREADS=2] [MODEL.gguf]
# Without MODEL, SmolLM2-135M in Q4_1, Q4_0, Q8_0 and F16 (converted from the default model); with it, that file.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-2}
tern=.build/release/tern
base=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$tern" ] || { echo "build first: swift build -c release" >&2; exit 1; }
[ -f "$base" ] || models/fetch
model=${3:-}
if [ -z "$model" ]; then
    for t in q8_0 q4_0 f16; do
        f=models/SmolLM2-135M-Instruct.$t.gguf
        [ -f "$f" ] || "$tern" convert --model "$base" --type "$t" --output "$f" >&2
    done
fi
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
printf "%-6s %9s %9s %7s %9s %9s %7s %8s\n" type tern_pp cpp_pp ratio tern_tg cpp_tg ratio ceiling
types="Q4_1 Q4_0 Q8_0 F16"
[ -z "$model" ] || types=file
for t in $types; do
    f=models/SmolLM2-135M-Instruct.$t.gguf
    [ "$t" = Q4_1 ] || f=models/SmolLM2-135M-Instruct.$(echo $t | tr A-Z a-z).gguf
    [ "$t" = file ] && f=$model
    tp=(); tt=(); cp=(); ct=(); share=()
    for _ in $(seq "$rounds"); do
        out=$("$tern" bench --model "$f" --threads "$threads" --repetitions 3 --json 2>/dev/null)
        tp+=("$(echo "$out" | field pp_tokens_per_s)"); tt+=("$(echo "$out" | field tg_tokens_per_s)")
        share+=("$(echo "$out" | field ceiling_fraction)")
        out=$(python3 scripts/bench_llamacpp.py "$f" --threads "$threads" --repetitions 3)
        cp+=("$(echo "$out" | field pp_tokens_per_s)"); ct+=("$(echo "$out" | field tg_tokens_per_s)")
    done
    mtp=$(printf "%s\n" "${tp[@]}" | median); mcp=$(printf "%s\n" "${cp[@]}" | median)
    mtt=$(printf "%s\n" "${tt[@]}" | median); mct=$(printf "%s\n" "${ct[@]}" | median)
    msh=$(printf "%s\n" "${share[@]}" | median)
    printf "%-6s %9.1f %9.1f %6.2fx %9.1f %9.1f %6.2fx %7.0f%%\n" "$t" "$mtp" "$mcp" "$(awk "BEGIN {print $mtp / $mcp}")" \
        "$mtt" "$mct" "$(awk "BEGIN {print $mtt / $mct}")" "$(awk "BEGIN {print $msh * 100}")"
done
