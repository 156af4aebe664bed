#!/usr/bin/env bash
# KV eviction's figures (README "KV eviction" table), in one run:
#   1. decode at depth: `tern bench` on paged f16 KV, one stream decoding 128 tokens after DEPTH tokens of context,
#      without eviction and with each policy at BUDGET positions (the depth is filled in chunks, eviction between);
#   2. concurrency in a small KV store: `tern serve --kv-cache-mib MIB` without eviction and with a policy at
#      SERVE_BUDGET, driven by `tern bench-serve` with CONCURRENCY clients each generating OUTPUT tokens; prints the
#      aggregate throughput, errors, preemptions and the mean number of sequences each engine step carried;
#   3. with --perplexity: `tern perplexity` at context 4096 on the committed long text for none and every policy at
#      budgets 2048, 1024, 512 (slow: about a minute per window and run on 2 cores).
# Usage: scripts/bench_eviction.sh [--perplexity]   (after `swift build -c release`; env: MODEL, THREADS, DEPTH,
#        BUDGET, MIB, SERVE_POLICY, SERVE_BUDGET, CONCURRENCY, OUTPUT, PPL_WINDOWS)
set -euo pipefail
cd "$(dirname "$0")/.."
T=.build/release/tern
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
DEPTH=${DEPTH:-4096}
BUDGET=${BUDGET:-1024}
MIB=${MIB:-64}
SERVE_POLICY=${SERVE_POLICY:-alisa}
SERVE_BUDGET=${SERVE_BUDGET:-512}
CONCURRENCY=${CONCURRENCY:-8}
OUTPUT=${OUTPUT:-2048}
PORT=${PORT:-18181}

echo "## decode at depth $DEPTH (paged f16 KV, $THREADS threads)"
for policy in none window alisa dms; do
    line=$($T bench --model "$M" --threads "$THREADS" --kv-type f16 --prompt-tokens 0 --gen-tokens 128 --depth "$DEPTH" \
        --repetitions 2 --kv-policy $policy --kv-budget "$BUDGET" 2>/dev/null | grep '^tg')
    echo "$policy (budget $BUDGET): $line"
done

echo "## $CONCURRENCY concurrent $OUTPUT-token generations, --kv-cache-mib $MIB"
for policy in none "$SERVE_POLICY"; do
    $T serve --model "$M" --threads "$THREADS" --port "$PORT" --kv-cache-mib "$MIB" --kv-policy "$policy" \
        --kv-budget "$SERVE_BUDGET" --spec off >/tmp/tern-bench-eviction-serve.log 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.2; done
    result=$($T bench-serve --url "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY" --num-requests "$CONCURRENCY" \
        --prompt-tokens 32 --output-tokens "$OUTPUT" --duration-limit 1200 --request-timeout 1200 --seed 7 2>&1)
    metrics=$(curl -s "localhost:$PORT/metrics")
    kill $pid; wait $pid 2>/dev/null || true
    # Sequences per engine step (the batch each forward pass carried), averaged over the run.
    batch=$(echo "$metrics" | awk '/^tern_batch_size_sum /{s=$2} /^tern_batch_size_count /{c=$2} END{printf "%.2f", s/c}')
    preempt=$(echo "$metrics" | awk '/^tern_preemptions_total /{print $2}')
    evicted=$(echo "$metrics" | awk -v p="$policy" '$1=="tern_kv_evicted_tokens_total{policy=\""p"\"}"{print $2}')
    echo "### --kv-policy $policy (budget $SERVE_BUDGET): mean sequences per step $batch, preemptions $preempt, evicted ${evicted:-0}"
    echo "$result" | grep -E 'Requests|Duration|Output token throughput|Errors|×' | head -10
done

if [[ "${1:-}" == "--perplexity" ]]; then
    echo "## perplexity, context 4096, Tests/Fixtures/longtext/licenses.txt (${PPL_WINDOWS:-3} windows)"
    F=Tests/Fixtures/longtext/licenses.txt
    echo "none: $($T perplexity --model "$M" --threads "$THREADS" --file $F --context 4096 --chunks "${PPL_WINDOWS:-3}" 2>/dev/null | tail -1)"
    for budget in 2048 1024 512; do
        for policy in window alisa dms; do
            echo "$policy $budget: $($T perplexity --model "$M" --threads "$THREADS" --file $F --context 4096 \
                --chunks "${PPL_WINDOWS:-3}" --kv-policy $policy --kv-budget $budget 2>/dev/null | tail -1)"
        done
    done
fi
