#!/bin/bash
# Installs the packed tarballs into an empty project as a user would (npm install, offline, from a carried npm cache)
# with nvcc, cmake, the compilers and git off the PATH, then decodes on the GPU (scripts/release/verify-probe.mjs), and
# once more with no GPU visible (the CPU, with a warning).
#
#   bash scripts/release/verify-cuda.sh [release-dir] [--cpu]
#     release-dir  holds batchwise-<v>.tgz, batchwise-vocab-<v>.tgz and batchwise-linux-x64-cuda-<v>.tgz
#                  (batchwise-linux-x64-<v>.tgz too when it is there); default release/
#     --cpu        a dry run without a GPU: installs the CPU package instead and decodes on the CPU
# Environment: NPM_CACHE (default .carry-release/npm-cache): an npm cache holding batchwise's registry dependencies
# (scripts/release/carry.sh fills one); without it npm needs the network. OUT (default /tmp/out): logs and report.
# KEEP_VERIFY=1 keeps the project it installed into (/tmp/bw-verify-*).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rel=$root/release
cpu=0
for a in "$@"; do
    case $a in
        --cpu) cpu=1 ;;
        *) rel=$(cd "$a" && pwd) ;;
    esac
done
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cache=${NPM_CACHE:-$root/.carry-release/npm-cache}
v=$(node -p "require('$root/package.json').version")

tarballs=("$rel/batchwise-$v.tgz" "$rel/batchwise-vocab-$v.tgz")
if [ $cpu = 1 ]; then tarballs+=("$rel/batchwise-linux-x64-$v.tgz"); else tarballs+=("$rel/batchwise-linux-x64-cuda-$v.tgz"); fi
[ $cpu = 0 ] && [ -f "$rel/batchwise-linux-x64-$v.tgz" ] && tarballs+=("$rel/batchwise-linux-x64-$v.tgz")
for t in "${tarballs[@]}"; do [ -f "$t" ] || { echo "verify: missing $t (npm run release:pack)"; exit 1; }; done

# a PATH with node, npm and sh alone (npm runs scripts with sh)
work=$(mktemp -d /tmp/bw-verify-XXXX)
[ "${KEEP_VERIFY:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/app"
ln -s "$(readlink -f "$(command -v node)")" "$work/bin/node"
ln -s /bin/sh "$work/bin/sh"
npmcli=$(readlink -f "$(command -v npm 2>/dev/null)" 2>/dev/null)
[ -f "$npmcli" ] || npmcli=$(dirname "$(readlink -f "$(command -v node)")")/../lib/node_modules/npm/bin/npm-cli.js
[ -f "$npmcli" ] || { echo "verify: no npm (carry it: scripts/release/carry.sh)"; exit 1; }
ln -s "$(readlink -f "$npmcli")" "$work/bin/npm"
cp "$root/scripts/release/verify-probe.mjs" "$work/app/"
echo '{ "name": "verify", "private": true, "type": "module" }' > "$work/app/package.json"
cd "$work/app"
# npm and node run with this environment alone; the script's own tools (tee, du, ldd) keep the usual PATH
bare() { env -i PATH="$work/bin" HOME="$work" XDG_CACHE_HOME="$work/cache" TMPDIR=/tmp ${CUDA_VISIBLE_DEVICES+CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"} ${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="$LD_LIBRARY_PATH"} "$@"; }
if bare sh -c 'command -v nvcc || command -v cmake || command -v c++ || command -v g++ || command -v cc || command -v gcc || command -v git'; then
    echo "verify: the bare PATH still has a toolchain"; exit 1
fi
echo "PATH=$work/bin: no nvcc, cmake, compiler or git" | tee "$OUT/verify.log"

offline=()
[ -d "$cache" ] && offline=(--offline --cache "$cache")
t0=$(date +%s%N)
bare npm install --no-audit --no-fund --foreground-scripts "${offline[@]}" "${tarballs[@]}" >> "$OUT/verify.log" 2>&1
rc=$?
t1=$(date +%s%N)
tail -5 "$OUT/verify.log"
[ $rc -eq 0 ] || { echo "verify: npm install failed (rc $rc), see $OUT/verify.log"; exit $rc; }
ms=$(( (t1 - t0) / 1000000 ))
printf 'install: %d.%01d s; node_modules %s; ' $((ms / 1000)) $((ms % 1000 / 100)) "$(du -sh node_modules | cut -f1)" | tee "$OUT/sizes.txt"
du -sh node_modules/@batchwise/* | tr '\n' ' ' | tee -a "$OUT/sizes.txt"; echo | tee -a "$OUT/sizes.txt"
ls -l "$rel"/*.tgz | awk '{print $5, $9}' | tee -a "$OUT/sizes.txt"
pre=node_modules/@batchwise/linux-x64$([ $cpu = 1 ] || echo -cuda)/prebuilds/linux-x64
ls -l "$pre" | tee -a "$OUT/sizes.txt"
if [ $cpu = 0 ]; then
    # which CUDA libraries the backend resolves to (the driver's libcuda, the toolkit's or the wheels' runtime)
    ldd "$pre/libggml-cuda.so" | grep -E "cuda|cublas" | tee "$OUT/ldd.txt"
fi

echo "--- decode $([ $cpu = 1 ] && echo "on the CPU" || echo "on the GPU")"
bare node verify-probe.mjs $([ $cpu = 1 ] && echo --cpu) 2>&1 | tee "$OUT/probe.json"
rc=${PIPESTATUS[0]}
if [ $cpu = 0 ]; then
    echo "--- no GPU visible (CUDA_VISIBLE_DEVICES=\"\"): the CPU, with a warning"
    CUDA_VISIBLE_DEVICES= bare node verify-probe.mjs --fallback 2>&1 | tee "$OUT/probe-fallback.json"
    [ ${PIPESTATUS[0]} -eq 0 ] || rc=1
fi
echo "verify: $([ $rc -eq 0 ] && echo PASSED || echo FAILED)" | tee -a "$OUT/verify.log"
exit $rc
