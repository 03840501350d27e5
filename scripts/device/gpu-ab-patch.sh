#!/bin/bash
# On the GPU machine: one extra llama.cpp patch, before and after, in one call. Builds the CUDA addon and
# test-backend-ops from the carried (patched) llama.cpp, runs the paged flash-attention checks (test-backend-ops
# eval, TBO_PARAMS, default every paged case) and their perf cases (patch 0011: with and without a block table), and
# the KV benchmark (BENCH_KV_ARGS, if set); then applies PATCH to the carried tree, rebuilds (only what it touches)
# and runs the same again. Logs go to $OUT/before and $OUT/after, a summary to $OUT/summary.txt.
# TBO_BEFORE=0 skips the eval on the before side (the carried tree's kernels checked in an earlier run).
# The patch is reverted when the script ends. It may change files but not add new ones: the addon is built before
# build-llama-tools.mjs reconfigures, so a new source file would reach the tools but not the addon.
#   here:  npm run build && bash scripts/device/prepare.sh
#          cp my-change.patch .carry/extra.patch   (a diff against the patched tree, paths from llama.cpp's root, made
#          as native/patches/README.md says for a new patch; the carried tree must not already hold it)
#   there: PATCH=.carry/extra.patch TBO_PARAMS="type_kv=f16" \
#            BENCH_KV_ARGS="--shape 1.5b --npl 1 --npp 117964 --ntg 4 --modes unified,paged" bash scripts/device/gpu-ab-patch.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
[ -f "${PATCH:-}" ] || { echo "PATCH must name a patch file (got '${PATCH:-}')"; exit 2; }
mkdir -p "$OUT/before" "$OUT/after"
source .carry/env.sh
[ -d node_modules ] || tar xJf .carry/node_modules.tar.xz
[ -d dist ] || tar xJf .carry/dist.tar.xz
export BATCHWISE_CUDA=1 BATCHWISE_CUDA_ARCHITECTURES=${BATCHWISE_CUDA_ARCHITECTURES:-90a}
patch_path=$(realpath "$PATCH")

run_side() { # $1: before | after
    local d="$OUT/$1" t0 bindir rc
    t0=$(date +%s)
    bindir=$(node scripts/build-llama-tools.mjs test-backend-ops 2> "$d/build.log")
    rc=$?
    echo "$1: build rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || { tail -30 "$d/build.log"; return $rc; }
    if [ "$1" = after ] || [ "${TBO_BEFORE:-1}" != 0 ]; then
        "$bindir/test-backend-ops" -o FLASH_ATTN_EXT -b CUDA0 -p "${TBO_PARAMS:-bs=}" > "$d/test-backend-ops.log" 2>&1
        echo "$1: test-backend-ops rc=$?: $(grep -a "tests passed" "$d/test-backend-ops.log" | head -1)" | tee -a "$OUT/summary.txt"
        grep -aE "FAIL" "$d/test-backend-ops.log" | head -10
    fi
    "$bindir/test-backend-ops" perf -o FLASH_ATTN_EXT -b CUDA0 -p "table=" > "$d/perf.log" 2>&1
    awk -v side="$1" -f scripts/device/tbo-perf.awk "$d/perf.log" | tee -a "$OUT/summary.txt"
    if [ -n "${BENCH_KV_ARGS:-}" ]; then
        # shellcheck disable=SC2086 # the arguments are words
        node scripts/bench-kv.mjs $BENCH_KV_ARGS --out "$d/kv.md" > "$d/bench-kv.log" 2>&1
        grep -E "prefill .* tok/s" "$d/bench-kv.log" | sed "s/^/$1: /" | tee -a "$OUT/summary.txt"
    fi
}

: > "$OUT/summary.txt"
run_side before || exit $?
llama=${LLAMA_CPP_DIR:-deps/llama.cpp}
# the carried tree is no git checkout: git apply works on plain folders too; patch(1) where git is missing
if command -v git > /dev/null; then apply() { git -C "$llama" apply --whitespace=nowarn "$@" "$patch_path"; }
else apply() { patch -d "$llama" -p1 -s "$@" < "$patch_path"; }; fi
apply || { echo "the patch does not apply to $llama"; exit 1; }
# taken back out at the end, so that a later run on the same (warm) machine starts from the carried tree
trap 'apply -R && echo "reverted $PATCH"' EXIT
echo "applied $PATCH to $llama" | tee -a "$OUT/summary.txt"
run_side after
