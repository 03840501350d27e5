#!/usr/bin/env node
// KV cache layouts, side by side: the work of llama.cpp's llama-batched-bench (npl parallel sequences,
// npp prompt tokens each, then ntg generated tokens each) through batchwise's binding, for several KV
// layouts of one model in one process, one after the other:
//
//   streams       per-sequence streams (kvUnified: false): each sequence owns a fixed slice of
//                 n_ctx / n_seq cells and attends over its own slice only.
//   unified       llama.cpp's unified pool (kvUnified: true, kvBlockSize: 0): one pool of cells shared by
//                 all sequences; llama.cpp places tokens and every sequence's attention spans the used cells.
//   paged         batchwise's paged KV cache (kvUnified: true, kvBlockSize: B): the pool is cut into blocks
//                 of B cells; each sequence gets a block table (ctx.setBlockTable) and attends to its own
//                 blocks only. Each sequence gets ceil((npp+ntg)/B) blocks drawn from a seeded random
//                 permutation of the whole pool, so blocks lie scattered as in a long-running server.
//   paged-shared  paged, with a common prefix: every sequence's prompt starts with the floor(npp/B) full
//                 blocks of sequence 0. Those blocks head every block table, are computed once on sequence 0
//                 and shared with ctx.seqCopy(0, s, 0, shared*B); each sequence then prefills only its
//                 remaining npp - shared*B tokens. Reports the distinct blocks held against the unshared
//                 npl * ceil((npp+ntg)/B).
//
// Per (mode, npp): a fresh context of contextSize = npl*(npp+ntg) rounded up to a multiple of 256 (and, when a
// paged mode runs, large enough for npl*ceil((npp+ntg)/B) blocks; the same size for every mode), maxSequences
// npl, batchSize 2048 (llama.cpp caps it at the context size), ubatchSize 512, flash attention on. A short warm-up decode (as llama-batched-bench does),
// then the prefill: every sequence's prompt (seeded random token ids), sequence-major, in batches of at most
// 2048 tokens, an output on each sequence's last prompt token; then ntg steps of one batch of npl tokens (each
// sequence's token sampled greedily in the step before, at position npp+t). The context is disposed after
// each mode, and a mode that fails is recorded with its error instead of ending the run.
//
// Timing (--timing): "native" (default) sums, over the decode calls, decodeMs (llama_decode) and sampleMs (the
// greedy pick, which starts by reading the logits and so waits for the GPU). llama_decode returns without
// waiting for the last micro-batch's GPU work (llama.cpp leaves that to whoever reads the outputs), so decodeMs
// alone undercounts a GPU decode step; decode + sample is llama-batched-bench's decode + synchronize plus a
// greedy argmax over the vocabulary for each output row (the same in every mode). "decode" uses decodeMs alone
// (exact on a CPU backend), "wall" the JS wall clock around the calls. All three are kept in the JSON.
//
// usage: npm run build && node scripts/bench-kv.mjs [--shape 7b | --model PATH.gguf] [--npp 512,4096]
//            [--ntg 128] [--npl 64] [--modes streams,unified,paged,paged-shared] [--block-size 128]
//            [--gpu-layers N] [--split-mode none|layer|tensor] [--timing native|decode|wall] [--seed 1] [--out docs/bench/kv-layouts.md]
//            [--json PATH] [--isolate] [--tie-check]     (modes may name a K/V type: paged@q8_0)
// --isolate runs each (mode, npp) in a child process of its own (the model is loaded again for each), so a native
// abort (a failed GGML_ASSERT, a CUDA error) becomes that mode's recorded error and the run goes on; without it,
// a native abort ends the run and the output marks the mode it died in.
// CPU smoke run:
//        node scripts/bench-kv.mjs --shape tiny --npp 64,128 --ntg 8 --npl 4 --gpu-layers 0 --out /tmp/kv.md
//
// K/V types: a mode written MODE@TYPE (paged@q8_0, streams@q4_0) runs with kvCacheTypeK/V = TYPE (default f16).
// Its table row gives its prefill and decode tok/s against the same mode in f16, and the K/V bytes a token takes.
// --tie-check: quantized K/V rounds differently in each kernel, so paged@T is held against streams@T (the same
// quantized data through llama.cpp's own per-sequence path) by the near-tie rule of test/engine.test.ts: every
// sequence samples the same greedy tokens, or first diverges where the reference's top-2 logprob gap is under
// 0.01. The gaps come from an extra, untimed generation pass of each streams@T mode with logprobs on.
// The rule holds where both run the same kernel arithmetic; since patch 0010, paged@T decodes in the MMA kernel
// (f16 queries against dequantized tiles) and streams@T in the vector kernel (queries quantized to q8_1), so
// the two round differently. Every quantized mode is therefore also held against the f16 run of its layout (or
// of paged): how many sequences keep f16's greedy tokens, and the step where the others first differ.
//
// --from-json PATH writes the Markdown report (--out) again from a run's JSON, measuring nothing.
//
// --mixed N (paged mode): after the generation, three runs of 16 steps, each on a prompt of its own (one more
// sequence, from position 0, so the three attend over the same rows), as a serving engine's steps go: (1) one call a
// step that decodes one token of every sequence beside an N-token chunk of the prompt (the same shape every step, so
// llama.cpp may reuse its graph); (2) the same work apart: a decode call, then a call with the chunk alone; (3) as (1)
// with N - t tokens at step t (a new shape every step). The report gives each one's mean step time, and (1) and (3)
// against (2).
//
// Output: a Markdown report (--out: date, devices, model, the command, one table of prefill and decode tokens/s
// per mode with the ratios paged/streams and paged/unified, and one for paged-shared), the same tables on
// stdout, and every raw number as JSON (--json, default: --out with .json).
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { basename, dirname, relative } from "node:path";
import { parseArgs } from "node:util";
import { LlamaModel, getDevices, systemInfo } from "../dist/lib/binding/index.js";
import { randomTokens, seededRandom } from "../dist/lib/bench/loadgen.js";

const MODES = ["streams", "unified", "paged", "paged-shared"];
const KV_TYPES = ["f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"];
const NEAR_TIE = 0.01; // nats, as test/engine.test.ts
/** Bytes per K/V element (ggml's block sizes: q8_0 is 34 bytes a block of 32). */
const KV_TYPE_BYTES = { f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32, q4_1: 20 / 32, q5_0: 22 / 32, q5_1: 24 / 32, iq4_nl: 18 / 32 };
const BATCH = 2048;
const UBATCH = 512;

const { values: args } = parseArgs({
    options: {
        shape: { type: "string", default: "7b" },
        model: { type: "string" },
        npp: { type: "string", default: "512,4096" },
        ntg: { type: "string", default: "128" },
        npl: { type: "string", default: "64" },
        modes: { type: "string", default: MODES.join(",") },
        "block-size": { type: "string", default: "128" },
        "gpu-layers": { type: "string", default: "-1" },
        "split-mode": { type: "string" },
        timing: { type: "string", default: "native" },
        seed: { type: "string", default: "1" },
        out: { type: "string" }, // default: docs/bench/kv-layouts.md; with --from-json, next to the JSON
        json: { type: "string" },
        isolate: { type: "boolean", default: false },
        "tie-check": { type: "boolean", default: false },
        "from-json": { type: "string" },
        mixed: { type: "string", default: "0" },
        child: { type: "string" }, // internal: --isolate runs one "mode:npp" per child process
        help: { type: "boolean", short: "h" },
    },
});
if (args.help) {
    console.log("usage: node scripts/bench-kv.mjs [--shape 7b | --model PATH] [--npp 512,4096] [--ntg 128] [--npl 64]\n" +
        "       [--modes streams,unified,paged,paged-shared] [--block-size 128] [--gpu-layers N] [--split-mode layer|tensor|none] [--timing native|decode|wall]\n" +
        "       [--seed 1] [--out docs/bench/kv-layouts.md] [--json PATH] [--isolate] [--tie-check]\n" +
        "       --from-json PATH: write the report (--out) again from a run's JSON, measuring nothing\n" +
        "       --mixed N: paged mode also times steps of npl decodes beside an N-token prompt chunk (see the top of this file)\n" +
        "       a mode may name a K/V type: paged@q8_0, streams@q4_0 (see the comment at the top of this file)");
    process.exit(0);
}

function int(name, v, min) {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min} (got '${v}')`);
    return n;
}
const nppList = args.npp.split(",").filter(Boolean).map((v) => int("npp", v, 1));
const ntg = int("ntg", args.ntg, 1);
const npl = int("npl", args.npl, 1);
const B = int("block-size", args["block-size"], 1);
const gpuLayers = int("gpu-layers", args["gpu-layers"], -1);
const seed = int("seed", args.seed, 0);
const splitMode = args["split-mode"]; // checked by the binding (ERR_INVALID_ARGUMENT) when the model loads
const loadOptions = { gpuLayers, ...(splitMode && { splitMode }) };
const modes = args.modes.split(",").filter(Boolean).map((m) => m.replace(/@f16$/, "")); // f16 is the default: paged@f16 is paged
/** A mode's layout and K/V type: "paged@q8_0" -> ["paged", "q8_0"]. */
const split = (mode) => {
    const [base, type = "f16"] = mode.split("@");
    return [base, type];
};
for (const m of modes) {
    const [base, type] = split(m);
    if (!MODES.includes(base)) throw new Error(`unknown mode '${m}' (modes: ${MODES.join(", ")}, each optionally @TYPE)`);
    if (!KV_TYPES.includes(type)) throw new Error(`unknown K/V type in '${m}' (types: ${KV_TYPES.join(", ")})`);
}
const tieCheck = args["tie-check"];
const mixedChunk = int("mixed", args.mixed, 0);
const MIXED_STEPS = 16; // steps of each kind in the --mixed phase
if (!["native", "decode", "wall"].includes(args.timing)) throw new Error("--timing must be native, decode or wall");
const outMd = args.out ?? "docs/bench/kv-layouts.md";
const outJson = args.json ?? (outMd.endsWith(".md") ? outMd.slice(0, -3) + ".json" : outMd + ".json");
const command = ["node", "scripts/bench-kv.mjs", ...process.argv.slice(2)]
    .map((a) => (/^[\w./,=:@+-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(" ");
const log = (line) => console.error(line);
/** The settings the report is written with: this run's, or those of the JSON given to --from-json. */
let S;

// ---- helpers ----

function shuffled(n, rand) {
    const a = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
}

const roundUp = (x, m) => Math.ceil(x / m) * m;
const isPaged = (mode) => ["paged", "paged-shared"].includes(split(mode)[0]);

/** Positions each sequence reaches: the prompt, the generation, and the --mixed phase's decodes. */
const seqSpan = (npp) => npp + ntg + (mixedChunk > 0 ? 3 * MIXED_STEPS : 0);
/** Tokens of each of the --mixed phase's three prompts. */
const mixedPromptTokens = () => (mixedChunk > 0 ? MIXED_STEPS * mixedChunk : 0);

/** The context size used for every mode at one npp (see the header). */
function contextSizeFor(npp) {
    let need = npl * seqSpan(npp) + 3 * mixedPromptTokens();
    let multiple = 256;
    if (modes.some(isPaged)) {
        need = Math.max(need, (npl * Math.ceil(seqSpan(npp) / B) + 3 * Math.ceil(mixedPromptTokens() / B)) * B);
        multiple = Math.max(256, B);
    }
    return roundUp(need, multiple);
}

async function resolveModel() {
    // the serving benchmark's model resolution: a path, or a random-weight shape made once and cached
    const { resolveModel: benchModel } = await import("../dist/lib/bench/bench.js");
    const { path, shape } = await benchModel(args.model ?? args.shape, log);
    return { path, label: args.model ? basename(args.model) : `random-weight ${shape}` };
}

function contextOptions(mode, contextSize) {
    const [layout, type] = split(mode);
    // --mixed's three extra sequences run in paged mode only; the other layouts keep npl streams
    const base = { contextSize, maxSequences: npl + (mixedChunk > 0 && layout === "paged" ? 3 : 0), batchSize: BATCH, ubatchSize: UBATCH, flashAttention: "on", kvCacheTypeK: type, kvCacheTypeV: type };
    if (layout === "streams") return { ...base, kvUnified: false };
    if (layout === "unified") return { ...base, kvUnified: true, kvBlockSize: 0 };
    return { ...base, kvUnified: true, kvBlockSize: B };
}

/** Time of a group of decode calls. */
function timer() {
    return { calls: 0, tokens: 0, decodeMs: 0, sampleMs: 0, wallMs: 0, perCallMs: [] };
}

/** Decodes rows [token, position, sequence, output?] as one batch, timed into `t`; the native result (tokens, logprobs). */
async function decode(ctx, t, rows) {
    const n = rows.length;
    const batch = {
        tokens: new Int32Array(n), positions: new Int32Array(n), seqIds: new Int32Array(n), outputs: new Uint8Array(n),
    };
    for (let i = 0; i < n; i++) {
        const [tok, pos, seq, out] = rows[i];
        batch.tokens[i] = tok;
        batch.positions[i] = pos;
        batch.seqIds[i] = seq;
        batch.outputs[i] = out ? 1 : 0;
    }
    const w0 = performance.now();
    const r = await ctx.decode(batch);
    t.wallMs += performance.now() - w0;
    t.decodeMs += r.decodeMs;
    t.sampleMs += r.sampleMs;
    t.calls++;
    t.tokens += n;
    t.perCallMs.push(+(r.decodeMs + r.sampleMs).toFixed(3));
    return r;
}

/**
 * Decodes rows in batches of at most `batch` tokens (BATCH, or less where llama.cpp capped the context's batch
 * size at its context size); returns the sampled tokens of the output rows, keyed by sequence.
 */
async function decodeChunked(ctx, t, rows, batch) {
    const sampled = new Map();
    for (let i = 0; i < rows.length; i += batch) {
        const chunk = rows.slice(i, i + batch);
        const toks = (await decode(ctx, t, chunk)).tokens;
        let k = 0;
        for (const [, , seq, out] of chunk) if (out) sampled.set(seq, toks[k++]);
    }
    return sampled;
}

const ms = (t) => (args.timing === "native" ? t.decodeMs + t.sampleMs : args.timing === "decode" ? t.decodeMs : t.wallMs);

// ---- one (mode, npp) run ----

/**
 * --mixed: npl decodes (each sequence's next token, from position npp + ntg) beside chunks of a prompt of sequence
 * npl, npl + 1, npl + 2: in one call with N tokens a step, in two calls a step (apart), in one call with N - t at step t.
 */
async function mixedPhase(ctx, npp, last, vocab) {
    if (npl + mixedChunk > ctx.info.batchSize) throw new Error(`--mixed: ${npl} decodes + ${mixedChunk} prompt tokens exceed the batch of ${ctx.info.batchSize}`);
    const prompt = randomTokens(mixedPromptTokens(), seed * 7 + npp, 0, vocab);
    let cur = last.map((tok) => (tok >= 0 ? tok : 0));
    let dpos = npp + ntg; // the decoding sequences' next position
    const decodes = () => cur.map((tok, s) => [tok, dpos, s, true]);
    // the chunk's last row has an output in every call, so that each call's time includes its own GPU work (a call
    // with no output returns before the GPU is done, and the next call would be billed for it)
    const chunk = (seq, from, n) => Array.from({ length: n }, (_, k) => [prompt[from + k], from + k, seq, k === n - 1]);
    const took = (r) => {
        // the decodes' tokens come first (rows in batch order); the chunk's sampled token is not used
        cur = Array.from(r.tokens).slice(0, npl).map((tok) => (tok >= 0 ? tok : 0));
        dpos++;
    };
    const together = timer(), apart = timer(), varying = timer();
    for (let i = 0, from = 0; i < MIXED_STEPS; i++, from += mixedChunk) {
        took(await decode(ctx, together, [...decodes(), ...chunk(npl, from, mixedChunk)]));
    }
    for (let i = 0, from = 0; i < MIXED_STEPS; i++, from += mixedChunk) {
        took(await decode(ctx, apart, decodes()));
        await decode(ctx, apart, chunk(npl + 1, from, mixedChunk));
    }
    let varyingChunk = 0;
    for (let i = 0, from = 0; i < MIXED_STEPS; i++) {
        const n = Math.max(1, mixedChunk - i);
        took(await decode(ctx, varying, [...decodes(), ...chunk(npl + 2, from, n)]));
        from += n;
        varyingChunk += n;
    }
    const step = (t) => ms(t) / MIXED_STEPS;
    return {
        chunk: mixedChunk, steps: MIXED_STEPS,
        togetherMs: step(together), apartMs: step(apart), varyingMs: step(varying), varyingChunkMean: varyingChunk / MIXED_STEPS,
        perCallMs: { together: together.perCallMs, apart: apart.perCallMs, varying: varying.perCallMs },
    };
}

async function runMode(model, mode, npp, contextSize) {
    const vocab = model.metadata.vocabSize;
    const perSeqBlocks = Math.ceil(seqSpan(npp) / B);
    const [layout, kvType] = split(mode);
    const mixedBlocks = layout === "paged" ? Math.ceil(mixedPromptTokens() / B) : 0;
    const shared = layout === "paged-shared" ? Math.floor(npp / B) : 0; // full blocks of the common prefix
    const sharedTokens = shared * B;

    // the same prompts in every mode (seeded per npp); paged-shared copies sequence 0's first shared*B tokens
    const prompts = Array.from({ length: npl }, (_, s) => Int32Array.from(randomTokens(npp, seed * 1000003 + npp * 131 + s, 0, vocab)));
    for (let s = 1; s < npl; s++) prompts[s].set(prompts[0].subarray(0, sharedTokens));

    const r = { mode, npp, ntg, npl, contextSizeRequested: contextSize };
    const t0 = performance.now();
    const ctx = await model.createContext(contextOptions(mode, contextSize));
    try {
        const info = ctx.info;
        r.context = info;
        r.createMs = performance.now() - t0;
        const batch = Math.min(BATCH, info.batchSize);
        if (layout === "streams" && info.sequenceContextSize < npp + ntg) {
            throw new Error(`each stream holds ${info.sequenceContextSize} cells, fewer than npp+ntg = ${npp + ntg}`);
        }

        if (isPaged(mode)) {
            const pool = Math.floor(info.contextSize / B);
            const held = shared + npl * (perSeqBlocks - shared) + 3 * mixedBlocks;
            if (held > pool) throw new Error(`${held} blocks needed, the pool has ${pool}`);
            const perm = shuffled(pool, seededRandom(seed * 7919 + npp));
            const common = perm.slice(0, shared);
            let next = shared;
            const tables = [];
            for (let s = 0; s < npl; s++) {
                const own = perm.slice(next, next + perSeqBlocks - shared);
                next += perSeqBlocks - shared;
                const table = Int32Array.from([...common, ...own]);
                ctx.setBlockTable(s, table);
                tables.push(Array.from(table));
            }
            for (let k = 0; k < 3 && mixedBlocks > 0; k++, next += mixedBlocks) ctx.setBlockTable(npl + k, Int32Array.from(perm.slice(next, next + mixedBlocks)));
            r.blocks = {
                blockSize: B, pool, perSequence: perSeqBlocks, shared, held: new Set(tables.flat()).size,
                unshared: npl * perSeqBlocks, tables,
            };
        }

        // warm-up (as llama-batched-bench): a few tokens on sequence 0, then an empty cache
        const warm = Math.min(16, npp);
        await decode(ctx, timer(), Array.from({ length: warm }, (_, p) => [prompts[0][p], p, 0, p === warm - 1]));
        ctx.clear();

        // prefill
        const pre = timer();
        let first;
        if (layout === "paged-shared" && shared > 0) {
            const prefix = Array.from({ length: sharedTokens }, (_, p) => [prompts[0][p], p, 0, p === npp - 1]);
            const fromPrefix = await decodeChunked(ctx, pre, prefix, batch);
            for (let s = 1; s < npl; s++) ctx.seqCopy(0, s, 0, sharedTokens);
            const rest = [];
            for (let s = 0; s < npl; s++) for (let p = sharedTokens; p < npp; p++) rest.push([prompts[s][p], p, s, p === npp - 1]);
            first = await decodeChunked(ctx, pre, rest, batch);
            // a prompt of whole blocks: sequence 0's last prompt token is every sequence's, and so is its sampled token
            if (sharedTokens === npp) for (let s = 0; s < npl; s++) first.set(s, fromPrefix.get(0));
        } else {
            const rows = [];
            for (let s = 0; s < npl; s++) for (let p = 0; p < npp; p++) rows.push([prompts[s][p], p, s, p === npp - 1]);
            first = await decodeChunked(ctx, pre, rows, batch);
        }
        r.prefill = { ...pre, tokensComputed: pre.tokens, tokensLogical: npl * npp };

        // generation: ntg steps of one token per sequence
        const gen = timer();
        let last = Array.from({ length: npl }, (_, s) => first.get(s));
        let hash = 0x811c9dc5; // FNV-1a over every sampled token: the layouts should produce the same greedy text
        const mix = (tok) => (hash = Math.imul(hash ^ (tok & 0xffffffff), 0x01000193) >>> 0);
        last.forEach(mix);
        const tokens = last.map((tok) => [tok]); // per sequence: the first token, then one per step
        for (let t = 0; t < ntg; t++) {
            const toks = (await decode(ctx, gen, last.map((tok, s) => [tok >= 0 ? tok : 0, npp + t, s, true]))).tokens;
            last = Array.from(toks);
            last.forEach(mix);
            last.forEach((tok, s) => tokens[s].push(tok));
        }
        r.decode = gen;
        if (mixedChunk > 0 && layout === "paged") r.mixed = await mixedPhase(ctx, npp, last, vocab);
        r.generated = { firstTokens: Array.from({ length: npl }, (_, s) => first.get(s)), hash: hash.toString(16).padStart(8, "0"), tokens };
        r.kvType = kvType;
        // K and V of every layer for the whole context, from the shape (llama.cpp's per-layer K/V for a plain attention model)
        const md = model.metadata;
        const key = (k) => Number(md.gguf[`${md.architecture}.attention.${k}`]);
        const headK = key("key_length") || (md.heads > 0 ? md.embeddingSize / md.heads : 0);
        const headV = key("value_length") || headK;
        r.kvBytes = Math.round(md.layers * info.contextSize * md.kvHeads * (headK + headV) * KV_TYPE_BYTES[kvType]);

        // --tie-check, the reference side (streams@TYPE for a quantized TYPE): the generation again, untimed, with
        // the top-2 logprobs of each step, from the same prefill: the cache is rolled back to the prompts less their
        // last token, whose decode gives the first token and its gap
        if (tieCheck && layout === "streams" && kvType !== "f16") {
            for (let s = 0; s < npl; s++) ctx.seqRemove(s, npp - 1, -1);
            for (let s = 0; s < npl; s++) ctx.setSampler(s, { temperature: 0, logprobs: 2 });
            let cur = prompts.map((p) => p[npp - 1]);
            const gaps = cur.map(() => []);
            const again = cur.map(() => []);
            const untimed = timer();
            for (let t = 0; t <= ntg; t++) {
                const out = await decode(ctx, untimed, cur.map((tok, s) => [tok >= 0 ? tok : 0, npp - 1 + t, s, true]));
                cur = Array.from(out.tokens);
                cur.forEach((tok, s) => {
                    again[s].push(tok);
                    const top = out.topLogprobs;
                    gaps[s].push(top && out.topK >= 2 ? +(top[s * out.topK] - top[s * out.topK + 1]).toFixed(5) : null);
                });
            }
            r.tieReference = { tokens: again, gaps };
        }
        r.prefillTokPerS = (npl * npp) / (ms(pre) / 1000);
        r.decodeTokPerS = (npl * ntg) / (ms(gen) / 1000);
        r.totalMs = performance.now() - t0;
    } finally {
        ctx.dispose();
    }
    return r;
}

// ---- report ----

const fmt = (x) => (x === undefined || !Number.isFinite(x) ? "" : x >= 100 ? x.toFixed(0) : x.toFixed(1));
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : "");

function tables(results) {
    const get = (mode, npp) => results.find((r) => r.mode === mode && r.npp === npp);
    const cell = (r, key) => (!r ? "" : r.error ? "error" : fmt(r[key]));
    const main = S.modes.filter((m) => m !== "paged-shared" && split(m)[1] === "f16"); // other K/V types: a table of their own
    const lines = [];
    if (main.length) {
        const hasPaged = main.includes("paged");
        const ratios = hasPaged ? main.filter((m) => m !== "paged").map((m) => `paged/${m}`) : [];
        const head = ["npp", ...main.map((m) => `${m} prefill tok/s`), ...ratios.map((x) => `${x} prefill`),
            ...main.map((m) => `${m} decode tok/s`), ...ratios.map((x) => `${x} decode`)];
        lines.push(`| ${head.join(" | ")} |`);
        lines.push("|" + "---|".repeat(1 + 2 * main.length + 2 * ratios.length));
        for (const npp of S.npp) {
            const rs = main.map((m) => get(m, npp));
            const p = get("paged", npp);
            const others = main.filter((m) => m !== "paged").map((m) => get(m, npp));
            const row = [String(npp), ...rs.map((r) => cell(r, "prefillTokPerS"))];
            if (hasPaged) row.push(...others.map((o) => ratio(p?.prefillTokPerS, o?.prefillTokPerS)));
            row.push(...rs.map((r) => cell(r, "decodeTokPerS")));
            if (hasPaged) row.push(...others.map((o) => ratio(p?.decodeTokPerS, o?.decodeTokPerS)));
            lines.push(`| ${row.join(" | ")} |`);
        }
    }
    if (S.modes.includes("paged-shared")) {
        if (lines.length) lines.push("");
        lines.push(`paged-shared: a common prefix of floor(npp/${S.blockSize}) full blocks, computed once on sequence 0 and shared by every sequence.`);
        lines.push("");
        lines.push("| npp | shared blocks (tokens) | blocks held | unshared (npl*ceil((npp+ntg)/B)) | held/unshared | prefill tokens computed / logical | " +
            "prefill tok/s (logical) | decode tok/s | decode vs paged |");
        lines.push("|---|---|---|---|---|---|---|---|---|");
        for (const npp of S.npp) {
            const r = get("paged-shared", npp);
            if (!r) continue;
            if (r.error) {
                lines.push(`| ${npp} | error | | | | | | | |`);
                continue;
            }
            const b = r.blocks;
            lines.push(`| ${npp} | ${b.shared} (${b.shared * S.blockSize}) | ${b.held} | ${b.unshared} | ${(b.held / b.unshared).toFixed(2)} | ` +
                `${r.prefill.tokensComputed} / ${r.prefill.tokensLogical} | ${fmt(r.prefillTokPerS)} | ${fmt(r.decodeTokPerS)} | ` +
                `${ratio(r.decodeTokPerS, get("paged", npp)?.decodeTokPerS)} |`);
        }
    }
    // same prompts and greedy sampling: every layout should sample the same tokens. Paged runs the same attention
    // kernel as per-sequence streams (only the rows' addresses differ), so those two should agree bit for bit;
    // the unified pool runs other kernel shapes, and on a GPU their rounding can flip a near-tie of a random model
    const same = [];
    for (const npp of S.npp) {
        for (const [m, ref] of [["paged", "streams"], ["paged", "unified"], ["streams", "unified"]]) {
            const o = get(m, npp), r = get(ref, npp);
            if (o?.generated && r?.generated) same.push(`${m} vs ${ref} ${o.generated.hash === r.generated.hash ? "same" : "DIFFERENT"} (npp ${npp})`);
        }
    }
    if (same.length) {
        lines.push("");
        lines.push(`Sampled tokens (all npl x ntg greedy tokens, hashed): ${same.join(", ")}.`);
    }
    const quantized = results.filter((r) => split(r.mode)[1] !== "f16" && !r.error);
    if (quantized.length) {
        lines.push("");
        lines.push("K/V types: each mode against the same layout in f16 (KV MiB: K and V of every layer for the whole context, computed from the shape and the type's block size).");
        lines.push("");
        lines.push("| npp | mode | K/V | KV MiB | vs f16 | prefill tok/s | vs f16 | decode tok/s | vs f16 |");
        lines.push("|---|---|---|---|---|---|---|---|---|");
        for (const r of quantized) {
            const base = get(split(r.mode)[0], r.npp);
            const mib = (b) => (b ? (b / 2 ** 20).toFixed(0) : "");
            lines.push(`| ${r.npp} | ${r.mode} | ${r.kvType} | ${mib(r.kvBytes)} | ${ratio(r.kvBytes, base?.kvBytes)} | ${fmt(r.prefillTokPerS)} | ` +
                `${ratio(r.prefillTokPerS, base?.prefillTokPerS)} | ${fmt(r.decodeTokPerS)} | ${ratio(r.decodeTokPerS, base?.decodeTokPerS)} |`);
        }
        const ties = tieResults(results);
        if (ties.length) {
            lines.push("");
            lines.push(`Greedy tokens, paged@TYPE against streams@TYPE (near-tie rule: a sequence may first diverge only where the reference's top-2 logprob gap is under ${NEAR_TIE}):`);
            lines.push("");
            for (const t of ties) {
                lines.push(`- npp ${t.npp}, ${t.mode}: ${t.same} of ${t.sequences} sequences identical, ${t.nearTies} diverge at a near-tie` +
                    `, ${t.other} elsewhere${t.other ? ` (first at step ${t.firstOther.step}, gap ${t.firstOther.gap})` : ""}: **${t.verdict}**`);
            }
        }
        const close = f16Closeness(results);
        if (close.length) {
            lines.push("");
            lines.push("Greedy tokens against the same layout in f16 (quantized K/V changes the numbers, so sequences drift from f16's tokens; " +
                "paged@TYPE and streams@TYPE are each held against the f16 run, the later a sequence first differs the closer):");
            lines.push("");
            lines.push("| npp | mode | against | identical | first differing step: median | mean |");
            lines.push("|---|---|---|---|---|---|");
            for (const c of close) lines.push(`| ${c.npp} | ${c.mode} | ${c.against} | ${c.same} of ${c.sequences} | ${c.median ?? ""} | ${c.mean === null ? "" : c.mean.toFixed(1)} |`);
        }
    }
    const mixed = results.filter((r) => r.mixed);
    if (mixed.length) {
        lines.push("");
        lines.push("Mixed steps (--mixed): npl decodes beside an N-token prompt chunk, mean ms a step, against the same work in two calls:");
        lines.push("");
        lines.push("| npp | mode | N | apart (two calls) | together, one shape | vs apart | together, a new shape each step (mean N) | vs apart |");
        lines.push("|---|---|---|---|---|---|---|---|");
        for (const r of mixed) {
            const m = r.mixed;
            lines.push(`| ${r.npp} | ${r.mode} | ${m.chunk} | ${m.apartMs.toFixed(2)} | ${m.togetherMs.toFixed(2)} | ${(m.togetherMs / m.apartMs).toFixed(2)}x | ` +
                `${m.varyingMs.toFixed(2)} (${m.varyingChunkMean.toFixed(1)}) | ${(m.varyingMs / m.apartMs).toFixed(2)}x |`);
        }
    }
    const errors = results.filter((r) => r.error);
    if (errors.length) {
        lines.push("");
        lines.push("Errors:");
        lines.push("");
        for (const r of errors) lines.push(`- ${r.mode}, npp ${r.npp}: ${r.error.replace(/\s+/g, " ")}`);
    }
    return lines.join("\n");
}

/** The first step where two sequences' greedy tokens differ (over the first's length), or -1. */
const firstDifference = (a, b) => a.findIndex((t, k) => b[k] !== t);

/** Each quantized mode's greedy tokens against its layout's f16 run (same npp): how soon its sequences first differ. */
function f16Closeness(results) {
    const out = [];
    for (const r of results) {
        const [layout, type] = split(r.mode);
        if (type === "f16" || !r.generated?.tokens) continue;
        const f16 = results.find((x) => x.mode === layout && x.npp === r.npp && x.generated?.tokens)
            ?? results.find((x) => x.mode === "paged" && x.npp === r.npp && x.generated?.tokens);
        if (!f16) continue;
        let same = 0;
        const firsts = [];
        r.generated.tokens.forEach((toks, s) => {
            const j = firstDifference(toks, f16.generated.tokens[s]);
            if (j < 0) same++;
            else firsts.push(j);
        });
        firsts.sort((a, b) => a - b);
        out.push({ npp: r.npp, mode: r.mode, against: f16.mode, sequences: r.generated.tokens.length, same,
            median: firsts.length ? firsts[Math.floor(firsts.length / 2)] : null,
            mean: firsts.length ? firsts.reduce((a, b) => a + b, 0) / firsts.length : null });
    }
    return out;
}

/** --tie-check: each paged@TYPE against streams@TYPE's reference tokens and gaps, by the near-tie rule. */
function tieResults(results) {
    const out = [];
    for (const r of results) {
        const [layout, type] = split(r.mode);
        if (layout !== "paged" || type === "f16" || !r.generated?.tokens) continue;
        const ref = results.find((x) => x.mode === `streams@${type}` && x.npp === r.npp)?.tieReference;
        if (!ref) continue;
        let same = 0, nearTies = 0, other = 0, firstOther = null;
        r.generated.tokens.forEach((toks, s) => {
            const j = firstDifference(ref.tokens[s], toks);
            if (j < 0) return void same++;
            const gap = ref.gaps[s][j];
            if (gap !== null && gap < NEAR_TIE) return void nearTies++;
            other++;
            firstOther ??= { sequence: s, step: j, gap };
        });
        out.push({ npp: r.npp, mode: r.mode, sequences: r.generated.tokens.length, same, nearTies, other, firstOther,
            verdict: other === 0 ? "within the rule" : "outside the rule" });
    }
    return out;
}

function markdown(report, mdPath = outMd) {
    const timing = {
        native: "decodeMs + sampleMs summed over the decode calls (llama_decode, then the wait for the GPU and the greedy pick when the outputs are read)",
        decode: "decodeMs summed over the decode calls (time inside llama_decode; on a GPU it does not wait for the last micro-batch)",
        wall: "the JS wall clock around the decode calls",
    }[report.settings.timing];
    return [
        "# KV cache layouts: per-sequence streams, unified pool, paged",
        "",
        `Date: ${report.date}. Device: ${report.device}. llama.cpp ${report.llamaTag}.`,
        `Model: ${report.model.label}${report.model.parameters ? `: ${(report.model.parameters / 1e9).toFixed(2)}B parameters` : ""}.`,
        "",
        "```sh",
        report.command,
        "```",
        "",
        `npl ${S.npl} sequences, npp prompt tokens each, ntg ${S.ntg} generated tokens each; batch ${S.batchSize}, micro-batch ${S.ubatchSize}, ` +
            `flash attention on, gpu layers ${S.gpuLayers}; paged block size ${S.blockSize}. Context size per npp, the same for every mode: ` +
            S.npp.map((npp) => `${npp}: ${S.contextSize[npp]}`).join(", ") + ". " +
            `Prefill tok/s = npl*npp / prefill time; decode tok/s = npl*ntg / decode time. Time: ${timing}. ` +
            "Raw numbers: " + `[${basename(report.json)}](${relative(dirname(mdPath), report.json)}).`,
        "",
        tables(report.results),
        "",
    ].join("\n");
}

// ---- main ----

const errorText = (e) => `${e.code ? e.code + ": " : ""}${e.message}`;

/** One (mode, npp) in this process: the result, or the error it ended with. */
async function measure(model, mode, npp) {
    const contextSize = contextSizeFor(npp);
    try {
        return await runMode(model, mode, npp, contextSize);
    } catch (e) {
        return { mode, npp, ntg, npl, contextSizeRequested: contextSize, error: errorText(e) };
    }
}

const RESULT = "@@bench-kv-result ";

/**
 * --isolate: one (mode, npp) in a child process (this script with --child), so that a native abort (a failed
 * GGML_ASSERT, a CUDA error) is recorded as that mode's error and the run goes on. Each child loads the model.
 */
function measureIsolated(path, mode, npp) {
    const childArgs = [process.argv[1], "--model", path, "--npp", nppList.join(","), "--ntg", String(ntg), "--npl", String(npl),
        "--modes", modes.join(","), "--block-size", String(B), "--gpu-layers", String(gpuLayers), ...(splitMode ? ["--split-mode", splitMode] : []), "--timing", args.timing,
        "--seed", String(seed), ...(tieCheck ? ["--tie-check"] : []), "--mixed", String(mixedChunk), "--child", `${mode}:${npp}`];
    return new Promise((resolve) => {
        const child = spawn(process.execPath, childArgs, { stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "", stderrTail = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => {
            process.stderr.write(d);
            stderrTail = (stderrTail + d).slice(-2000);
        });
        child.on("close", (code, signal) => {
            const line = stdout.split("\n").find((l) => l.startsWith(RESULT));
            if (line) return resolve(JSON.parse(line.slice(RESULT.length)));
            const last = stderrTail.trim().split("\n").filter((l) => !/^\s+at /.test(l)).slice(-3).join(" / ");
            resolve({
                mode, npp, ntg, npl, contextSizeRequested: contextSizeFor(npp),
                error: `the process ended (${signal ? `signal ${signal}` : `exit code ${code}`})${last ? `: ${last}` : ""}`,
            });
        });
    });
}

if (args.child) {
    const [mode, nppText] = args.child.split(":");
    const model = await LlamaModel.load(args.model, loadOptions);
    const r = await measure(model, mode, Number(nppText));
    r.modelInfo = { parameters: model.metadata.parameters, sizeBytes: model.metadata.sizeBytes, vocabSize: model.metadata.vocabSize };
    model.dispose();
    process.stdout.write(RESULT + JSON.stringify(r) + "\n");
    process.exit(0);
}

if (args["from-json"]) {
    const { readFileSync } = await import("node:fs");
    const report = JSON.parse(readFileSync(args["from-json"], "utf8"));
    S = report.settings;
    report.json = args["from-json"];
    // without --out, next to the JSON (not the default docs/bench/kv-layouts.md of a measuring run)
    const md = args.out ?? args["from-json"].replace(/\.json$/, "") + ".md";
    mkdirSync(dirname(md) || ".", { recursive: true });
    writeFileSync(md, markdown(report, md));
    console.log(tables(report.results));
    log(`wrote ${md} from ${args["from-json"]}`);
    process.exit(0);
}

const devices = getDevices();
const gpus = devices.filter((d) => d.type === "gpu" || d.type === "igpu");
const device = gpus.length ? gpus.map((d) => d.description || d.name).join(", ") : `CPU only (${devices.map((d) => d.description || d.name).join(", ") || "no devices listed"})`;
const { path, label } = await resolveModel();
let model = null;
if (!args.isolate) {
    log(`loading ${path} (gpu layers ${gpuLayers}${splitMode ? `, split mode ${splitMode}` : ""})`);
    model = await LlamaModel.load(path, loadOptions);
}
const report = {
    date: new Date().toISOString().slice(0, 10), command, device, devices, llamaTag: systemInfo().llamaTag,
    model: { path, label, ...(model && { parameters: model.metadata.parameters, sizeBytes: model.metadata.sizeBytes, vocabSize: model.metadata.vocabSize }) },
    settings: {
        npp: nppList, ntg, npl, modes, blockSize: B, gpuLayers, splitMode: splitMode ?? "default", timing: args.timing, seed, isolate: !!args.isolate,
        batchSize: BATCH, ubatchSize: UBATCH, flashAttention: "on", mixed: mixedChunk,
        contextSize: Object.fromEntries(nppList.map((npp) => [npp, contextSizeFor(npp)])),
    },
    json: outJson,
    results: [],
};
S = report.settings;
const save = () => {
    mkdirSync(dirname(outMd) || ".", { recursive: true });
    mkdirSync(dirname(outJson) || ".", { recursive: true });
    writeFileSync(outJson, JSON.stringify(report, null, 2));
    writeFileSync(outMd, markdown(report));
};
try {
    for (const npp of nppList) {
        for (const mode of modes) {
            log(`${mode}, npp ${npp}, ntg ${ntg}, npl ${npl}, context ${contextSizeFor(npp)}`);
            // saved first as unfinished: if the process dies in this mode (a native abort), the output says where
            const slot = report.results.push({
                mode, npp, ntg, npl, contextSizeRequested: contextSizeFor(npp),
                error: "did not finish: the process ended during this mode (run with --isolate to go on past it)",
            }) - 1;
            save();
            const r = model ? await measure(model, mode, npp) : await measureIsolated(path, mode, npp);
            if (r.modelInfo) {
                Object.assign(report.model, r.modelInfo);
                delete r.modelInfo;
            }
            report.results[slot] = r;
            if (r.error) log(`  error: ${r.error}`);
            else {
                log(`  prefill ${fmt(r.prefillTokPerS)} tok/s, decode ${fmt(r.decodeTokPerS)} tok/s` +
                    (r.blocks ? `, blocks held ${r.blocks.held} of ${r.blocks.unshared} unshared (pool ${r.blocks.pool})` : ""));
            }
            save(); // after each mode, so a run cut short keeps what it measured
        }
    }
} finally {
    model?.dispose();
}
console.log(tables(report.results));
log(`wrote ${outMd} and ${outJson}`);
