#!/usr/bin/env bash
# Served throughput, Tern against llama-server, on the same machine, file and threads, in one run: 1 stream and
# C streams (128-token prompts, 128 tokens out, greedy, ignore_eos) through `tern bench-serve` for both servers.
# Each measurement gets a fresh server and its own prompt seed, so no prompt is served from a prefix cache, and
# the engines alternate round by round so drift in the machine's speed hits both. Prints each run and the medians.
#
# Needs a release build (swift build -c release) and a llama-server binary: the llama-cpp-python 0.3.36 sdist's
# vendor/llama.cpp builds one with
#   cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF && \
#   cmake --build build --target llama-server
# Usage: LLAMA_SERVER=path/to/llama-server scripts/bench_serve_vs_llamaserver.sh [MODEL.gguf] [ROUNDS=2] [C=8] [THREADS=2]
# Tern serves with --spec off: llama-server does not speculate without a draft model.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gemma-3-270m-q4_k_m.gguf}
rounds=${2:-2}
streams=${3:-8}
threads=${4:-2}
tern=.build/release/tern
llama=${LLAMA_SERVER:-}
[ -x "$tern" ] || { echo "build first: swift build -c release" >&2; exit 1; }
[ -n "$llama" ] && [ -x "$llama" ] || { echo "set LLAMA_SERVER to a llama-server binary (see the header)" >&2; exit 1; }
[ -f "$model" ] || { echo "no model file $model" >&2; exit 1; }
port=8397
seed=$((RANDOM * 1000))

wait_up() {
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "server on port $port did not come up" >&2
    return 1
}

# serve ENGINE STREAMS SEED: starts a fresh server, runs bench-serve, prints output tokens/s, stops the server
serve() {
    local engine=$1 c=$2 s=$3 n pid
    n=$((c == 1 ? 4 : 2 * c))
    if [ "$engine" = tern ]; then
        "$tern" serve --model "$model" --threads "$threads" --port "$port" --spec off \
            >/tmp/bench_serve_vs_llamaserver.tern.log 2>&1 &
    else
        "$llama" -m "$model" -t "$threads" -tb "$threads" --parallel "$c" -c $((c * 512)) --port "$port" --no-webui \
            >/tmp/bench_serve_vs_llamaserver.llama.log 2>&1 &
    fi
    pid=$!
    wait_up
    "$tern" bench-serve --url "http://127.0.0.1:$port" --concurrency "$c" --num-requests "$n" --seed "$s" --json \
        2>/dev/null | tail -1 | python3 -c "import json,sys; print('%.2f' % json.loads(sys.stdin.read())['output_tokens_per_s'])"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
t1=(); tc=(); l1=(); lc=()
printf "%-6s %12s %12s %12s %12s\n" round tern_1 "tern_$streams" llama_1 "llama_$streams"
for r in $(seq "$rounds"); do
    t1+=("$(serve tern 1 $((seed + 4 * r)))"); l1+=("$(serve llama 1 $((seed + 4 * r + 1)))")
    tc+=("$(serve tern "$streams" $((seed + 4 * r + 2)))"); lc+=("$(serve llama "$streams" $((seed + 4 * r + 3)))")
    printf "%-6s %12s %12s %12s %12s\n" "$r" "${t1[-1]}" "${tc[-1]}" "${l1[-1]}" "${lc[-1]}"
done
mt1=$(printf "%s\n" "${t1[@]}" | median); mtc=$(printf "%s\n" "${tc[@]}" | median)
ml1=$(printf "%s\n" "${l1[@]}" | median); mlc=$(printf "%s\n" "${lc[@]}" | median)
printf "%-6s %12s %12s %12s %12s\n" median "$mt1" "$mtc" "$ml1" "$mlc"
python3 - "$mt1" "$mtc" "$ml1" "$mlc" "$streams" <<'EOF'
import sys
t1, tc, l1, lc, c = map(float, sys.argv[1:])
print(f"{int(c)} streams / 1 stream: Tern {tc / t1:.2f}x, llama-server {lc / l1:.2f}x")
print(f"Tern / llama-server: 1 stream {t1 / l1:.2f}x, {int(c)} streams {tc / lc:.2f}x")
EOF
