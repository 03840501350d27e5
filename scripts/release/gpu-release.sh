#!/bin/bash
# On the GPU machine (no Node, no npm, no network), with .carry-release carried (scripts/release/carry.sh made it):
# builds @batchwise/linux-x64-cuda (the addon, every x86 CPU variant and libggml-cuda.so for CUDA 13), packs it into
# release/, then installs it with batchwise and the vocab package from the tarballs, offline and with nvcc off the PATH,
# and decodes on the GPU (scripts/release/verify-cuda.sh). Logs, sizes and the manifest go to $OUT.
#   BATCHWISE_CUDA_ARCHITECTURES  default "80-real;90a-real;90-virtual" (pack.mjs); "90a-real" for a quick check
#   BATCHWISE_JOBS                default: all cores
# The build keeps its folder (build-native/prebuild-cuda-*): a run cut short at the device's 10-minute limit resumes
# where it stopped when the same command runs again while the machine is still warm.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source .carry-release/env.sh
[ -d node_modules/cmake-js ] || tar xJf .carry-release/tools.tar.xz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvcc --version | tail -2 | tee -a "$OUT/gpu.txt"
(ldd --version | head -1; ldconfig -p | grep -E "libcudart.so|libcublas.so|libcuda.so") | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
# stop short of the device's limit so that the logs come back; a second run resumes the build
timeout ${BUILD_TIMEOUT:-540} node scripts/release/pack.mjs --only cuda --out release > "$OUT/build.log" 2>&1
rc=$?
t1=$(date +%s)
echo "cuda package: rc=$rc, $((t1 - t0)) s with $(nproc) cores" | tee "$OUT/build-time.txt"
grep -E "^\[release\]|error" "$OUT/build.log" | tail -8
if [ $rc -eq 124 ]; then echo "the build was cut at ${BUILD_TIMEOUT:-540} s: run this again (at once, while the machine is warm) to resume"; exit 124; fi
[ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit $rc; }
cp .carry-release/release/*.tgz release/
cp release/manifest.json "$OUT/"
ls -l release/*.tgz | tee "$OUT/tarballs.txt"
# the device hands back files of 16 MiB at most: a larger CUDA tarball stays there (its size and sha256 are in the manifest)
for t in release/batchwise-linux-x64-cuda-*.tgz; do [ "$(stat -c %s "$t")" -le 16777216 ] && cp "$t" "$OUT/"; done
NPM_CACHE=$PWD/.carry-release/npm-cache OUT=$OUT bash scripts/release/verify-cuda.sh release
