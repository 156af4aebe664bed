#!/usr/bin/env bash
# Long-context figures side by side with llama.cpp (flash attention on), in one run: prompt processing at 128, 512,
# 2048 and 4096 tokens, and generation at depth 0 and 4096. The engines alternate for ROUNDS rounds and medians
# are reported. Tern keeps its KV in the server's paged f16 blocks, as llama.cpp keeps f16 KV. Needs a release
# build and llama-cpp-python (see bench_llamacpp.py).
# Usage: scripts/bench_long_context.sh [ROUNDS=2] [THREADS=2] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
threads=${2:-2}
model=${3:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tern=.build/release/tern
[ -x "$tern" ] || { echo "build first: swift build -c release" >&2; exit 1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
printf "%-22s %9s %9s %7s\n" measure tern llama.cpp ratio
run() {   # label, tern args, llama args, field
    local t=() c=()
    for _ in $(seq "$rounds"); do
        t+=("$("$tern" bench --model "$model" --threads "$threads" --repetitions 1 --kv-type f16 --json $2 2>/dev/null | field "$4")")
        c+=("$(python3 scripts/bench_llamacpp.py "$model" --threads "$threads" --repetitions 1 --flash-attn $3 | field "$4")")
    done
    local mt mc
    mt=$(printf "%s\n" "${t[@]}" | median); mc=$(printf "%s\n" "${c[@]}" | median)
    printf "%-22s %9.1f %9.1f %6.2fx\n" "$1" "$mt" "$mc" "$(awk "BEGIN {print $mt / $mc}")"
}
for n in 128 512 2048 4096; do
    run "pp$n" "--prompt-tokens $n --gen-tokens 0" "--prompt-tokens $n --gen-tokens 0" pp_tokens_per_s
done
run "tg64 @ depth 0" "--prompt-tokens 0 --gen-tokens 64" "--prompt-tokens 0 --gen-tokens 64" tg_tokens_per_s
run "tg64 @ depth 4096" "--prompt-tokens 0 --gen-tokens 64 --depth 4096" "--prompt-tokens 0 --gen-tokens 64 --depth 4096" tg_tokens_per_s
