#!/usr/bin/env node
// How often greedy tokens change with the batch a sequence runs in, with no scheduler involved (the raw
// binding: 64 sequences decoded alone, then all in one batch) and through the engine (alone, then 64 at
// once), for f16 weights + f16 KV + flash attention and for f32 weights + f32 KV without it.
// If the raw binding diverges as often as the engine, the divergence is the kernels' rounding, not
// scheduling. usage (after npm run build, with the addon built): node scripts/device/batch-variance.mjs [out.json]
import { writeFileSync } from "node:fs";
import { Engine, LlamaModel } from "../../dist/lib/index.js";
import { generate, generateBatched, gpuLayers, modelPath, randomPrompt, tinyQwen } from "../../dist/test/helpers.js";

const N = 64, OUT_TOKENS = 12;
const prompts = Array.from({ length: N }, (_, i) => randomPrompt(40 + ((i * 13) % 60), 3000 + i));

function compare(a, b) {
    const firstDiff = a.map((x, i) => x.findIndex((t, j) => t !== b[i][j]));
    const differ = firstDiff.filter((d) => d >= 0);
    return { requests: N, differing: differ.length, meanFirstDivergence: differ.length ? differ.reduce((p, q) => p + q, 0) / differ.length : null };
}

const configs = [
    { name: "f16 weights, f16 KV, flash attention", type: "f16", ctx: { flashAttention: "on" } },
    { name: "f32 weights, f32 KV, no flash attention", type: "f32", ctx: { flashAttention: "off", kvCacheTypeK: "f32", kvCacheTypeV: "f32" } },
];
const report = { date: new Date().toISOString(), gpu: gpuLayers !== 0, results: [] };
for (const c of configs) {
    const path = await modelPath({ ...tinyQwen, type: c.type });
    const model = await LlamaModel.load(path, { gpuLayers });
    const ctx1 = await model.createContext({ contextSize: 1024, maxSequences: 1, batchSize: 512, ...c.ctx });
    const alone = [];
    for (const p of prompts) {
        ctx1.clear();
        alone.push(await generate(ctx1, 0, p, OUT_TOKENS));
    }
    ctx1.dispose();
    const ctx64 = await model.createContext({ contextSize: 8192, maxSequences: N, batchSize: 8192, ...c.ctx });
    const batched = await generateBatched(ctx64, prompts, OUT_TOKENS);
    ctx64.dispose();
    model.dispose();

    const run = async (o, concurrent) => {
        const e = await Engine.load({ model: path, gpuLayers, contextSize: 8192, batchTokens: 2048, ...c.ctx, ...o });
        const req = (p) => e.complete({ prompt: p, maxTokens: OUT_TOKENS, temperature: 0, ignoreEos: true }).then((r) => r.tokens);
        const out = concurrent ? await Promise.all(prompts.map(req)) : [];
        if (!concurrent) for (const p of prompts) out.push(await req(p));
        await e.close();
        return out;
    };
    const engineAlone = await run({ maxSequences: 1, prefixCache: false }, false);
    const engine64 = await run({ maxSequences: 64 }, true);
    const r = {
        config: c.name,
        rawAloneVsBatched: compare(alone, batched),
        engineAloneVsBatch64: compare(engineAlone, engine64),
        rawAloneVsEngineAlone: compare(alone, engineAlone),
    };
    report.results.push(r);
    console.log(JSON.stringify(r));
}
if (process.argv[2]) writeFileSync(process.argv[2], JSON.stringify(report, null, 2));
