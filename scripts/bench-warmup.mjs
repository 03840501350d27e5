#!/usr/bin/env node
// Cold start: time to first token of the first requests a fresh server gets, against its steady state,
// with and without the warm-up that runs before /ready. Each run is a fresh process (CUDA context,
// kernels and JIT all cold; the model file in the page cache for every run), alternating off, on, off,
// on. Each starts a server and sends, after /ready:
//   1. one request alone (a 1000-token code prompt, 16 tokens out), timed to its first streamed token;
//   2. a burst of 8 at once (the first concurrent batch), each timed the same way;
//   3. 20 more alone, one after another: the steady state (median);
//   4. another burst of 8: the steady state of a burst (its slowest TTFT is mostly queueing: 8 prompts
//      of 1000 tokens share the 2048-token steps).
// Prompts are distinct random token ids, so the prefix cache never helps.
//
//   node scripts/bench-warmup.mjs [--model PATH] [--gpu-layers N] [--out results.json]
// Without --model it uses a random-weight Qwen2-architecture model (about 1.35B parameters), made once.
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { percentile, randomTokens, streamOne } from "../dist/lib/bench/loadgen.js";
import { cachedRandomModel, systemInfo, getDevices } from "../dist/lib/index.js";
import { createServer } from "../dist/lib/server/server.js";

const args = process.argv.slice(2);
const arg = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
const gpuLayers = Number(arg("--gpu-layers", "-1"));
const outPath = arg("--out", null);

const model = arg("--model", null) ?? (await cachedRandomModel("warmup-qwen2-1.3b", {
    vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 2048, layers: 16, heads: 16, kvHeads: 4,
    feedForwardSize: 5632, contextLength: 32768, type: "f16", seed: 11,
})).path;

/** TTFT of one streamed 1000-token prompt (16 out), timed by the benchmark's load generator. */
async function ttft(url, seed) {
    const r = await streamOne(url, undefined, { prompt: randomTokens(1000, seed, 1000, 101000), maxTokens: 16 }, performance.now());
    if (!r.ok) throw new Error(r.error);
    return r.ttftMs;
}

async function run(warmup, seedBase) {
    const t0 = performance.now();
    const server = await createServer({
        models: [{ name: "m", path: model, options: { gpuLayers, contextSize: 32768, maxSequences: 16, flashAttention: "auto" } }],
        port: 0, logger: false, warmup,
    });
    await server.ready();
    const readyMs = performance.now() - t0;
    // the client's own cold start (connection, fetch's JIT) is not the server's: one probe first
    await (await fetch(`${server.url}/health`)).text();
    const first = await ttft(server.url, seedBase);
    const burst = await Promise.all(Array.from({ length: 8 }, (_, i) => ttft(server.url, seedBase + 1 + i)));
    const steady = [];
    for (let i = 0; i < 20; i++) steady.push(await ttft(server.url, seedBase + 100 + i));
    const burst2 = await Promise.all(Array.from({ length: 8 }, (_, i) => ttft(server.url, seedBase + 200 + i)));
    await server.close();
    const steadyMs = percentile(steady, 50);
    const burstMax = Math.max(...burst);
    const burst2Max = Math.max(...burst2);
    return {
        warmup: warmup !== false, readyMs: Math.round(readyMs), firstTtftMs: +first.toFixed(1),
        burstMaxTtftMs: +burstMax.toFixed(1), steadyMedianTtftMs: +steadyMs.toFixed(1), steadyBurstMaxTtftMs: +burst2Max.toFixed(1),
        firstOverSteady: +(first / steadyMs).toFixed(2), firstBurstOverSteadyBurst: +(burstMax / burst2Max).toFixed(2),
    };
}

const mode = arg("--mode", null);
if (mode) {
    // one run in this process: print its result for the parent
    process.stdout.write(JSON.stringify(await run(mode === "on" ? true : false, mode === "on" ? 1000 : 1)) + "\n");
    process.exit(0);
}
const results = [];
for (const m of ["off", "on", "off", "on"]) {
    const out = execFileSync(process.execPath, [new URL(import.meta.url).pathname, "--mode", m, "--model", model, "--gpu-layers", String(gpuLayers)], { encoding: "utf8" });
    results.push(JSON.parse(out.trim().split("\n").at(-1)));
}
const gpu = getDevices().filter((d) => d.type === "gpu").map((d) => d.description || d.name);
const report = { command: `node scripts/bench-warmup.mjs ${args.join(" ")}`.trim(), model, device: gpu[0] ?? "CPU", llama: systemInfo().llamaTag, results };
process.stdout.write(JSON.stringify(report, null, 2) + "\n");
process.stdout.write("\n| warm-up | ready after | first request TTFT | steady median TTFT | first / steady | first burst of 8, slowest TTFT | a later burst, slowest | first / later burst |\n|---|---|---|---|---|---|---|---|\n");
for (const r of results) {
    process.stdout.write(`| ${r.warmup ? "on" : "off"} | ${(r.readyMs / 1000).toFixed(1)} s | ${r.firstTtftMs} ms | ${r.steadyMedianTtftMs} ms | **${r.firstOverSteady}x** | ` +
        `${r.burstMaxTtftMs} ms | ${r.steadyBurstMaxTtftMs} ms | **${r.firstBurstOverSteadyBurst}x** |\n`);
}
if (outPath) writeFileSync(outPath, JSON.stringify(report, null, 2));
