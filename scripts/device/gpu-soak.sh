#!/bin/bash
# On the GPU machine: the mixed-load soak against `batchwise serve` on a CUDA build, on a head-128 random model on
# the paged path (the load that made whole batches fail with "token N is outside the vocabulary").
#   here:  npm run build && bash scripts/device/prepare.sh && cp SOAK.mjs .carry/soak.mjs
#   there: bash scripts/device/gpu-soak.sh NAME SECONDS [CONCURRENCY]
# Builds the addon if needed (BATCHWISE_CUDA=1, kept between calls on a warm machine), makes the model once, runs
# the soak for SECONDS and writes $OUT/NAME.json (its report) and $OUT/NAME-server.log.
set -uo pipefail
OUT=${OUT:-/tmp/out}
name=${1:?name}; secs=${2:?seconds}; conc=${3:-64}
mkdir -p "$OUT"
source .carry/env.sh
[ -d node_modules ] || tar xJf .carry/node_modules.tar.xz
[ -d dist ] || tar xJf .carry/dist.tar.xz
export BATCHWISE_CUDA=1 BATCHWISE_CUDA_ARCHITECTURES=${BATCHWISE_CUDA_ARCHITECTURES:-90a}
t0=$(date +%s)
node scripts/build-native.mjs > "$OUT/$name-build.log" 2>&1 || { tail -30 "$OUT/$name-build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
model=/root/soak-model.gguf
[ -f $model ] || node --input-type=module -e "
const { createRandomModel } = await import('./dist/lib/index.js');
await createRandomModel({ vocabFrom: 'qwen2', out: '$model', architecture: 'qwen2', embeddingSize: 1024, layers: 4, heads: 8, kvHeads: 2, feedForwardSize: 2816, contextLength: 32768, type: 'f16', seed: 1 });"
node dist/lib/cli/main.js serve --model "soak=$model" --gpu-layers -1 --ctx-size 16384 --parallel 64 --port 8102 --max-queued 100000 > "$OUT/$name-server.log" 2>&1 &
pid=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8102/ready > /dev/null && break; sleep 1; done
node .carry/soak.mjs 8102 $pid "$conc" "$secs" "/tmp/$name" > "$OUT/$name-soak.log" 2>&1
cp "/tmp/$name.json" "$OUT/$name.json"
kill -TERM $pid; wait $pid; echo "server exit: $?"
node -e "const r = JSON.parse(require('fs').readFileSync('$OUT/$name.json')).res; const s = r.stats; const k = Object.keys(s).filter((x) => !x.startsWith('ex:'));
console.log('sent', r.sent, 'in', r.load_seconds, 's');
for (const x of k.sort()) console.log(' ', x, s[x]);
for (const x of Object.keys(s).filter((x) => x.startsWith('ex:'))) console.log(' ', x, String(s[x]).slice(0, 200));
console.log('after the load:', r.after_request);"
