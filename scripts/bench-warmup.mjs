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
// Without --model it makes a random-weight Qwen2-architecture model (about 1.1B parameters) first.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRandomModel, systemInfo, getDevices } from "../dist/lib/index.js";
import { createServer } from "../dist/lib/server/server.js";

const args = process.argv.slice(2);
const arg = (k, d) => (args.includes(k) ? args[args.indexOf(k) + 1] : d);
const gpuLayers = Number(arg("--gpu-layers", "-1"));
const outPath = arg("--out", null);

let model = arg("--model", null);
if (!model) {
    const dir = join(tmpdir(), "batchwise-bench");
    mkdirSync(dir, { recursive: true });
    model = join(dir, "qwen2-1b-random.gguf");
    if (!existsSync(model)) {
        const t0 = performance.now();
        await createRandomModel({ vocabFrom: "qwen2", architecture: "qwen2", out: model, embeddingSize: 2048, layers: 16, heads: 16, kvHeads: 4,
            feedForwardSize: 5632, contextLength: 32768, type: "f16", seed: 11 });
        process.stderr.write(`made ${model} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
}

function prompt(seed, n = 1000) {
    let x = seed * 2654435761 + 7;
    return Array.from({ length: n }, () => ((x = (x * 1103515245 + 12345) >>> 0), 1000 + (x % 100000)));
}

async function ttft(url, seed) {
    const t0 = performance.now();
    const res = await fetch(`${url}/v1/completions`, {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: prompt(seed), max_tokens: 16, ignore_eos: true, temperature: 0, stream: true }),
    });
    if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
    const reader = res.body.getReader();
    let first = -1;
    let text = "";
    for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
        if (first < 0 && text.includes('"text":')) first = performance.now() - t0;
    }
    return { ttftMs: first, totalMs: performance.now() - t0 };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

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
    for (let i = 0; i < 20; i++) steady.push((await ttft(server.url, seedBase + 100 + i)).ttftMs);
    const burst2 = await Promise.all(Array.from({ length: 8 }, (_, i) => ttft(server.url, seedBase + 200 + i)));
    await server.close();
    const steadyMs = median(steady);
    const burstMax = Math.max(...burst.map((b) => b.ttftMs));
    const burst2Max = Math.max(...burst2.map((b) => b.ttftMs));
    return {
        warmup: warmup !== false, readyMs: Math.round(readyMs), firstTtftMs: +first.ttftMs.toFixed(1),
        burstMaxTtftMs: +burstMax.toFixed(1), steadyMedianTtftMs: +steadyMs.toFixed(1), steadyBurstMaxTtftMs: +burst2Max.toFixed(1),
        firstOverSteady: +(first.ttftMs / steadyMs).toFixed(2), firstBurstOverSteadyBurst: +(burstMax / burst2Max).toFixed(2),
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
