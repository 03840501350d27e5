#!/bin/bash
# Packs what a run on the GPU machine needs into .carry/ (git-ignored): Node, the patched llama.cpp
# source, the runtime node_modules (no TypeScript), and the compiled dist/.
# usage: npm run build && bash scripts/device/prepare.sh     then carry [".carry"] and run scripts/device/gpu-test.sh
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
llama=$(node scripts/fetch-llama.mjs | tail -1)
bash ../shared/device/prepare-carry.sh "$llama" >/dev/null
# the FIM tests' vocabulary (the shared script carries qwen2 and llama-spm)
cp "$llama"/models/ggml-vocab-deepseek-coder.gguf .carry/
# the tool-calling tests' chat templates and Llama 3's vocabulary
cp "$llama"/models/ggml-vocab-llama-bpe.gguf .carry/
tar cJf .carry/templates.tar.xz -C "$llama"/models templates
tar cJf .carry/node_modules.tar.xz --exclude=node_modules/typescript --exclude=node_modules/@types \
    --exclude=node_modules/prebuildify node_modules
tar cJf .carry/dist.tar.xz dist
du -sh .carry/*
