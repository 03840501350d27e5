#!/bin/bash
# Here, before the CUDA release run on the GPU machine (no Node, no npm, no network): packs into .carry-release/
# (git-ignored) what scripts/release/gpu-release.sh needs there:
#   node.xz             this machine's node binary
#   llama-src.tar.xz    the patched llama.cpp source (no .git, no models, no other GPU backends)
#   tools.tar.xz        node_modules with the build tools alone (cmake-js, node-addon-api)
#   npm.tar.xz          npm itself (npm pack makes the tarball; npm install verifies it)
#   npm-cache/          an npm cache holding batchwise's registry dependencies, for `npm install --offline` there
#   release/            batchwise-<v>.tgz and batchwise-vocab-<v>.tgz from release/ (CARRY_CPU=1: the CPU package too)
#   env.sh              sourced there: node and npm on PATH, LLAMA_CPP_DIR
# usage: npm run release:pack -- --only main,vocab && bash scripts/release/carry.sh
#        then device run: carry [".carry-release"], command "bash scripts/release/gpu-release.sh"
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
c=.carry-release
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.carry-release/' "$exclude" 2>/dev/null || echo '/.carry-release/' >> "$exclude"
rm -rf "$c"
mkdir -p "$c/release"
v=$(node -p "require('./package.json').version")

for f in "batchwise-$v.tgz" "batchwise-vocab-$v.tgz" $([ "${CARRY_CPU:-0}" = 1 ] && echo "batchwise-linux-x64-$v.tgz"); do
    [ -f "release/$f" ] || { echo "carry: release/$f is missing: npm run release:pack -- --only main,vocab"; exit 1; }
    cp "release/$f" "$c/release/"
done

echo "packing node $(node --version)"
xz -T2 -6 -c "$(readlink -f "$(command -v node)")" > "$c/node.xz"

llama=$(node scripts/fetch-llama.mjs | tail -1)
echo "packing llama.cpp from $llama"
tar cJf "$c/llama-src.tar.xz" -C "$llama" --exclude=.git --exclude=./docs --exclude=./media \
    --exclude='./models/*' --exclude=./examples --exclude=./tests/*.gguf \
    --exclude=./ggml/src/ggml-vulkan --exclude=./ggml/src/ggml-sycl --exclude=./ggml/src/ggml-opencl \
    --exclude=./ggml/src/ggml-hexagon --exclude=./ggml/src/ggml-metal --exclude=./ggml/src/ggml-cann \
    --exclude=./ggml/src/ggml-et --exclude=./ggml/src/ggml-webgpu --exclude=./ggml/src/ggml-openvino .

npmdir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
echo "packing npm $(npm --version) from $npmdir"
tar cJf "$c/npm.tar.xz" -C "$(dirname "$npmdir")" "$(basename "$npmdir")"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# the build tools, at the versions package.json asks for
specs=$(node -p "const d = require('./package.json').devDependencies; ['cmake-js', 'node-addon-api'].map((n) => n + '@' + d[n]).join(' ')")
echo "packing the build tools: $specs"
( cd "$scratch" && echo '{"private":true}' > package.json && npm install --no-audit --no-fund --ignore-scripts --loglevel=error $specs >/dev/null )
tar cJf "$c/tools.tar.xz" -C "$scratch" node_modules
rm -rf "$scratch/node_modules" "$scratch/package.json" "$scratch/package-lock.json"

# an npm cache with everything `npm install batchwise` fetches from the registry
echo "filling an npm cache for an offline install"
( cd "$scratch" && echo '{"private":true}' > package.json && npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
    --cache "$root/$c/npm-cache" "$root/$c/release/"*.tgz >/dev/null )

cat > "$c/env.sh" <<'EOS'
# sourced on the GPU machine: node and npm on PATH (npm where pack.mjs looks: beside node), the llama.cpp source
mkdir -p /root/carry/bin /root/carry/lib/node_modules
[ -x /root/carry/bin/node ] || { xz -dc .carry-release/node.xz > /root/carry/bin/node && chmod +x /root/carry/bin/node; }
[ -d /root/carry/lib/node_modules/npm ] || tar xJf .carry-release/npm.tar.xz -C /root/carry/lib/node_modules
ln -sf ../lib/node_modules/npm/bin/npm-cli.js /root/carry/bin/npm
export PATH=/root/carry/bin:$PATH
if [ ! -d /root/carry/llama.cpp ]; then
    mkdir -p /root/carry/llama.cpp && tar xJf .carry-release/llama-src.tar.xz -C /root/carry/llama.cpp
fi
export LLAMA_CPP_DIR=/root/carry/llama.cpp
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
echo "node $(node --version), npm $(npm --version); LLAMA_CPP_DIR=$LLAMA_CPP_DIR"
EOS
du -sh "$c"/* | sort -h
du -sh "$c"
