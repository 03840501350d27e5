#!/bin/bash
# On the GPU machine: the serving benchmark. Builds the CUDA addon with llama-server and llama-batched-bench
# from the same objects (scripts/build-llama-tools.mjs), makes the random-weight models named in MODELS
# (default: none; a bench run makes its own), then runs `batchwise bench` once per argument NAME=ARGS:
#   npm run build && bash scripts/device/prepare.sh
#   then, there: bash scripts/device/gpu-bench.sh full="--model 7b" tensor="--model 32b --split-mode tensor"
# Each run's report.{json,md}, chart.svg and log go to $WORK/NAME; everything is packed into $OUT/results.tgz
# (the device tool brings back few files), with runs.txt (each run's exit code and time) beside it.
# The default workloads (cold, throughput, prefix, hol, ide, long) take about 17 minutes with the 7B shape and three
# servers (12 with --servers batchwise,llama-server), past the device's 10 minutes a command. Either split the run
# (full="--workloads cold,throughput,prefix,hol" ide="--workloads ide,long --no-bound", one device call each; a warm
# machine keeps the build and the model), or run it detached:
#   BG=1 bash scripts/device/gpu-bench.sh full="--model 7b"      starts it (setsid: it outlives the call) and returns
#   bash scripts/device/gpu-bench.sh --collect [SECONDS]          in later calls: waits up to SECONDS (default 540) for it,
#                                                                 then prints its progress and packs what it has into $OUT
set -uo pipefail
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/bench-work}
mkdir -p "$OUT" "$WORK"
if [ "${1:-}" = "--collect" ]; then
    t=$(date +%s)
    while [ -f "$WORK/running" ] && [ $(( $(date +%s) - t )) -lt "${2:-540}" ]; do sleep 2; done
    [ -f "$WORK/running" ] && echo "still running after $(( $(date +%s) - t )) s: collect again" || echo "finished"
    cat "$WORK/runs.txt" 2>/dev/null
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -E "^\[bench\]   |error|Error" "$f" | cut -c1-400 | tail -60; }; done
    tar czf "$OUT/results.tgz" --exclude=./.bg-out -C "$WORK" . && cp "$WORK/runs.txt" "$OUT/" 2>/dev/null
    exit 0
fi
if [ -n "${BG:-}" ]; then
    [ "$WORK" = "$OUT" ] && { echo "BG=1 needs WORK outside \$OUT (emptied before each call)"; exit 2; }
    touch "$WORK/running"
    # the child's own OUT: the call's is emptied before the next one
    BG= OUT="$WORK/.bg-out" setsid nohup bash "$0" "$@" > "$WORK/gpu-bench.out" 2>&1 < /dev/null &
    echo "started in the background (pid $!): collect with: bash $0 --collect"
    exit 0
fi
trap 'rm -f "$WORK/running"' EXIT
source .carry/env.sh
[ -d node_modules ] || tar xJf .carry/node_modules.tar.xz
[ -d dist ] || tar xJf .carry/dist.tar.xz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$WORK/gpu.txt"
export BATCHWISE_CUDA=1 BATCHWISE_CUDA_ARCHITECTURES=${BATCHWISE_CUDA_ARCHITECTURES:-90a}
# WORK=$OUT writes straight into $OUT (fewer files: a run cut off at the time limit still brings back what it saved)
pack() { [ "$WORK" = "$OUT" ] && return 0; tar czf "$OUT/results.tgz" --exclude=./.bg-out -C "$WORK" . && cp "$WORK/runs.txt" "$OUT/" 2>/dev/null; }
t0=$(date +%s)
bindir=$(node scripts/build-llama-tools.mjs 2> "$WORK/build.log")
rc=$?
echo "build (addon, llama-server, llama-batched-bench): rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$WORK/runs.txt"
[ $rc -eq 0 ] || { tail -30 "$WORK/build.log"; pack; exit $rc; }
export BINDIR="$bindir" WORK # for PRE: the llama.cpp tools' folder, and where to write
for m in ${MODELS:-}; do
    t=$(date +%s)
    node --input-type=module -e "const { resolveModel } = await import('./dist/lib/bench/bench.js'); await resolveModel('$m', console.log);" 2>&1 | tail -2
    echo "model $m: $(( $(date +%s) - t )) s" | tee -a "$WORK/runs.txt"
done
# PRE: a shell command run after the build and the models, before the runs (BINDIR and WORK are set)
[ -n "${PRE:-}" ] && { t=$(date +%s); bash -c "$PRE" > "$WORK/pre.log" 2>&1; echo "pre: rc=$?, $(( $(date +%s) - t )) s" | tee -a "$WORK/runs.txt"; tail -25 "$WORK/pre.log"; }
for spec in "$@"; do
    name=${spec%%=*}
    args=${spec#*=}
    t=$(date +%s)
    # shellcheck disable=SC2086 # ARGS are words
    node dist/lib/cli/main.js bench $args --llama-bin "$bindir" --out "$WORK/$name" > /dev/null 2> "$WORK/$name.log"
    rc=$?
    echo "$name ($args): rc=$rc, $(( $(date +%s) - t )) s" | tee -a "$WORK/runs.txt"
    grep -E "^\[bench\]   |error|Error" "$WORK/$name.log" | cut -c1-400 | tail -60
    pack
done
pack
