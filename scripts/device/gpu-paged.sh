#!/bin/bash
# On the GPU machine: the paged KV cache's checks. Builds the CUDA addon and llama.cpp's test-backend-ops
# from the same objects, checks the paged flash-attention kernel against the CPU (test-backend-ops), runs
# the test suite on the GPU (unless SKIP_TESTS=1), then (unless SKIP_BENCH=1) the KV layout benchmark
# (BENCH_KV_ARGS: its arguments, e.g. "--npp 4096 --modes paged,paged@q8_0,streams@q8_0 --tie-check"). Logs go to $OUT.
# TBO_PARAMS: which test-backend-ops cases (default "bs=", every paged case); TBO_PERF=1 adds the perf cases that time
# the paged kernel against the same rows without a block table.
#   npm run build && bash scripts/device/prepare.sh     then: bash scripts/device/gpu-paged.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source .carry/env.sh
[ -d node_modules ] || tar xJf .carry/node_modules.tar.xz
[ -d dist ] || tar xJf .carry/dist.tar.xz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
export BATCHWISE_CUDA=1 BATCHWISE_CUDA_ARCHITECTURES=${BATCHWISE_CUDA_ARCHITECTURES:-90a}
t0=$(date +%s)
bindir=$(node scripts/build-llama-tools.mjs test-backend-ops 2> "$OUT/build.log")
rc=$?
echo "cuda build (addon + test-backend-ops): rc=$rc, $(( $(date +%s) - t0 )) s" | tee "$OUT/build-time.txt"
[ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit $rc; }
# the paged kernel (tests whose parameters name a block size; TBO_PARAMS: another filter, e.g. "type_kv=q") against the CPU backend
"$bindir/test-backend-ops" -o FLASH_ATTN_EXT -b CUDA0 -p "${TBO_PARAMS:-bs=}" > "$OUT/test-backend-ops.log" 2>&1
echo "test-backend-ops rc=$?: $(grep -a "tests passed" "$OUT/test-backend-ops.log" | head -1)" | tee "$OUT/tbo-summary.txt"
grep -E "FAIL|not supported" "$OUT/test-backend-ops.log" | head -20
# TBO_PERF=1: the paged kernel's speed against the same rows without a block table (patch 0011's perf cases)
if [ "${TBO_PERF:-0}" = 1 ]; then
    "$bindir/test-backend-ops" perf -o FLASH_ATTN_EXT -b CUDA0 -p "table=" > "$OUT/test-backend-ops-perf.log" 2>&1
    awk -f scripts/device/tbo-perf.awk "$OUT/test-backend-ops-perf.log"
fi
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    BATCHWISE_TEST_GPU=1 node --test --test-concurrency=1 dist/test/ 2>&1 | tee "$OUT/test-gpu.log" | grep -E "^# (tests|pass|fail|skipped|duration)|not ok|fatal|error"
    rc=${PIPESTATUS[0]}
fi
[ "${SKIP_BENCH:-0}" = 1 ] || node scripts/bench-kv.mjs ${BENCH_KV_ARGS:-} --out "$OUT/kv-layouts.md" 2>&1 | tee "$OUT/bench-kv.log" | tail -30
exit $rc
