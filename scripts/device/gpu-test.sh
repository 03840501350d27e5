#!/bin/bash
# On the GPU machine (no Node, no network): unpack the carry, build the CUDA addon for sm_90a, run the
# test suite with every layer on the GPU. Logs and timings go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source .carry/env.sh
tar xJf .carry/node_modules.tar.xz
tar xJf .carry/dist.tar.xz
# the tool-calling tests' chat templates (llama.cpp's models/ is not in the carried source)
[ -f .carry/templates.tar.xz ] && mkdir -p "$LLAMA_CPP_DIR/models" && tar xJf .carry/templates.tar.xz -C "$LLAMA_CPP_DIR/models"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvcc --version | tail -2 | tee -a "$OUT/gpu.txt"
export BATCHWISE_CUDA=1 BATCHWISE_CUDA_ARCHITECTURES=${BATCHWISE_CUDA_ARCHITECTURES:-90a}
t0=$(date +%s)
node scripts/build-native.mjs > "$OUT/build.log" 2>&1
rc=$?
t1=$(date +%s)
echo "cuda build: rc=$rc, $((t1 - t0)) s with $(nproc) cores" | tee "$OUT/build-time.txt"
tail -3 "$OUT/build.log"
[ $rc -eq 0 ] || exit $rc
# a rebuild after touching one addon source: what a C++ change costs
touch native/context.cpp
t0=$(date +%s); node scripts/build-native.mjs > "$OUT/rebuild.log" 2>&1; t1=$(date +%s)
echo "addon-only rebuild: $((t1 - t0)) s" | tee -a "$OUT/build-time.txt"
# TESTS: some test files instead of the whole suite
BATCHWISE_TEST_GPU=1 node --test --test-concurrency=1 ${TESTS:-dist/test/} 2>&1 | tee "$OUT/test-gpu.log" | grep -E "^# (tests|pass|fail|skipped|duration)|not ok|fatal|error" 
rc=${PIPESTATUS[0]}
# how often greedy tokens depend on the batch, in the raw binding and in the engine (f16 and f32)
BATCHWISE_TEST_GPU=1 node scripts/device/batch-variance.mjs "$OUT/batch-variance.json" 2>&1 | tee "$OUT/batch-variance.log" | grep -v "^npm warn"
# cold start: first-request TTFT against the steady state, with and without the server's warm-up
[ "${SKIP_WARMUP_BENCH:-0}" = 1 ] || node scripts/bench-warmup.mjs --out "$OUT/warmup.json" 2>&1 | tee "$OUT/warmup.log" | tail -4
exit $rc
