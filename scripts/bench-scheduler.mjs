#!/usr/bin/env node
// The scheduler's own CPU time per step, with no model: a context whose decode returns at once.
// 256 sequences run at once; as they finish, new requests arrive (prompts that share prefixes, so
// admission hashes blocks and finds cached ones). Reports plan() + complete() time per step.
//
// usage: npm run build && node scripts/bench-scheduler.mjs [--sequences 256] [--steps 3000] [--json out.json]
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Scheduler } from "../dist/lib/scheduler/scheduler.js";

const { values: args } = parseArgs({
    options: {
        sequences: { type: "string", default: "256" },
        steps: { type: "string", default: "3000" },
        "block-size": { type: "string", default: "16" },
        prompt: { type: "string", default: "512" },
        "max-tokens": { type: "string", default: "256" },
        json: { type: "string" },
    },
});
const sequences = Number(args.sequences), steps = Number(args.steps), blockSize = Number(args["block-size"]);
const promptLen = Number(args.prompt), maxTokens = Number(args["max-tokens"]);
const vocab = 32000;

// a context with the calls the scheduler makes, doing nothing but sampling a pseudo-random token
let x = 1;
const backend = {
    seqRemove: () => true,
    seqCopy: () => {},
    setSampler: () => ({ backend: true }),
    saveSequence: async () => new Uint8Array(16),
    restoreSequence: async () => 16,
    decode: async (b) => {
        let n = 0;
        for (let i = 0; i < b.outputs.length; i++) n += b.outputs[i];
        const tokens = new Int32Array(n);
        for (let i = 0; i < n; i++) tokens[i] = 100 + ((x = (x * 1103515245 + 12345) >>> 0) % (vocab - 100));
        return { tokens, logprobs: null, topK: 0, decodeMs: 0, sampleMs: 0 };
    },
};

const numBlocks = Math.ceil((sequences * (promptLen + maxTokens)) / blockSize) + 1024;
const sched = new Scheduler(backend, {
    numBlocks, blockSize, maxRunning: sequences, seqIds: sequences * 2, batchTokens: 2048,
    maxContext: 8192, prefixCache: true, preemption: "recompute", swapSpaceBytes: 0, watermark: 0.01,
    isEog: () => false, vocabSize: 32000,
});

const prefixes = Array.from({ length: 16 }, (_, f) => Array.from({ length: promptLen / 2 }, (_, i) => 100 + ((f * 7919 + i * 31) % 30000)));
let submitted = 0;
function submit() {
    const id = submitted++;
    const prompt = prefixes[id % prefixes.length].concat(Array.from({ length: promptLen / 2 }, (_, i) => 100 + ((id * 104729 + i * 17) % 30000)));
    sched.submit({
        prompt, n: 1, maxTokens: maxTokens - (id % 64), priority: 0, ignoreEos: true, stopTokens: new Set(),
        samplers: [{ temperature: 0 }], useCache: true, cacheSalt: "",
    }, id);
}
for (let i = 0; i < sequences; i++) submit();

const decodeOnly = [], withPrefill = [];
let generated = 0, finished = 0;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
for (let s = 0; s < steps; s++) {
    const a = performance.now();
    const step = sched.plan();
    const b = performance.now();
    if (!step) break;
    const result = await backend.decode(step.batch);
    const c = performance.now();
    sched.complete(step, result);
    const d = performance.now();
    for (const e of sched.takeEvents()) {
        if (e.kind === "token") generated++;
        else {
            finished++;
            submit(); // keep the engine full
        }
    }
    (step.promptTokens > 0 ? withPrefill : decodeOnly).push(b - a + (d - c));
}
const wall = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);

const stat = (xs) => {
    const v = xs.slice().sort((p, q) => p - q);
    const q = (f) => v[Math.min(v.length - 1, Math.floor(f * v.length))];
    return { steps: v.length, meanMs: v.reduce((p, q) => p + q, 0) / Math.max(1, v.length), p50Ms: q(0.5), p99Ms: q(0.99), maxMs: v.at(-1) };
};
const st = sched.stats();
const report = {
    date: new Date().toISOString(), node: process.version, cpu: (await import("node:os")).cpus()[0]?.model,
    config: { sequences, blockSize, promptLen, maxTokens, batchTokens: 2048, numBlocks },
    decodeSteps: stat(decodeOnly), stepsWithPrefill: stat(withPrefill),
    generated, finished, preemptions: st.preemptions, prefixHitRate: st.kv.queries ? st.kv.hits / st.kv.queries : 0,
    wallMs: wall, cpuMs: (cpu.user + cpu.system) / 1000,
};
const f = (v) => v.toFixed(3);
console.log(`scheduler CPU time per step, ${sequences} sequences, block ${blockSize}, prompts ${promptLen} (half shared), ${maxTokens} out`);
console.log(`| steps | count | mean ms | p50 ms | p99 ms | max ms |`);
console.log(`|---|---:|---:|---:|---:|---:|`);
for (const [name, s] of [["decode only", report.decodeSteps], ["with prompt chunks", report.stepsWithPrefill]]) {
    console.log(`| ${name} | ${s.steps} | ${f(s.meanMs)} | ${f(s.p50Ms)} | ${f(s.p99Ms)} | ${f(s.maxMs)} |`);
}
console.log(`${generated} tokens, ${finished} requests finished, prefix hit rate ${(report.prefixHitRate * 100).toFixed(1)}%, ${(wall / 1000).toFixed(2)} s wall, ${(report.cpuMs / 1000).toFixed(2)} s CPU`);
if (args.json) writeFileSync(args.json, JSON.stringify(report, null, 2));
