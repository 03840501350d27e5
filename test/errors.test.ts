// Bad input and faults: each gives a BatchwiseError with a stable code and a clear message, never an abort.
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BatchwiseError, createRandomModel, LlamaContext, LlamaModel } from "../lib/index.js";
import { contextOptions, gpuLayers, loadModel, modelPath, prefill, randomPrompt, tinyLlama } from "./helpers.js";

/** A GGUF v3 file with string key/values and no tensors. */
function ggufWithKeys(kv: Record<string, string>): Buffer {
    const parts: Buffer[] = [Buffer.from("GGUF")];
    const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
    const u64 = (n: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
    const str = (s: string) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]);
    parts.push(u32(3), u64(0), u64(Object.keys(kv).length));
    for (const [k, v] of Object.entries(kv)) parts.push(str(k), u32(8), str(v));
    return Buffer.concat(parts);
}

function expectCode(code: string, message?: RegExp) {
    return (e: unknown) => {
        assert.ok(e instanceof BatchwiseError, `expected a BatchwiseError, got ${e}`);
        assert.equal(e.code, code, e.message);
        if (message) assert.match(e.message, message);
        return true;
    };
}

describe("errors", () => {
    let dir: string;
    let model: LlamaModel;
    let ctx: LlamaContext;

    before(async () => {
        dir = mkdtempSync(join(tmpdir(), "batchwise-errors-"));
        model = await loadModel(tinyLlama);
        ctx = await model.createContext(contextOptions({ contextSize: 256, seqIds: 2, batchSize: 64 }));
    });
    after(() => {
        ctx.dispose();
        model.dispose();
        rmSync(dir, { recursive: true, force: true });
    });

    it("rejects a missing model file", async () => {
        await assert.rejects(LlamaModel.load(join(dir, "nope.gguf")), expectCode("ERR_MODEL_NOT_FOUND", /nope\.gguf/));
        await assert.rejects(LlamaModel.load(dir), expectCode("ERR_MODEL_NOT_FOUND", /not a regular file/));
    });

    it("rejects a file that is not GGUF", async () => {
        const p = join(dir, "text.gguf");
        writeFileSync(p, "this is not a model\n");
        await assert.rejects(LlamaModel.load(p), expectCode("ERR_MODEL_NOT_GGUF", /bad magic/));
        writeFileSync(p, "");
        await assert.rejects(LlamaModel.load(p), expectCode("ERR_MODEL_NOT_GGUF"));
    });

    it("rejects a truncated GGUF, in its header or in its tensor data", async () => {
        const src = await modelPath(tinyLlama);
        const size = statSync(src).size;
        const data = join(dir, "cut-data.gguf");
        copyFileSync(src, data);
        truncateSync(data, size - 4096);
        await assert.rejects(LlamaModel.load(data), expectCode("ERR_MODEL_TRUNCATED", /tensor data needs/));
        const header = join(dir, "cut-header.gguf");
        writeFileSync(header, readFileSync(src).subarray(0, 200));
        await assert.rejects(LlamaModel.load(header), expectCode("ERR_MODEL_TRUNCATED", /header/));
    });

    it("rejects an unsupported architecture", async () => {
        const p = join(dir, "bogus.gguf");
        writeFileSync(p, ggufWithKeys({ "general.architecture": "no-such-arch" }));
        await assert.rejects(LlamaModel.load(p), expectCode("ERR_MODEL_UNSUPPORTED", /no-such-arch/));
        writeFileSync(p, ggufWithKeys({ "general.name": "no architecture at all" }));
        await assert.rejects(LlamaModel.load(p), expectCode("ERR_MODEL_UNSUPPORTED", /general\.architecture/));
    });

    it("classifies a failed load by the file, not by words in llama.cpp's log", async () => {
        // an architecture llama.cpp knows with a tokenizer it does not: llama.cpp fails with "unknown tokenizer: '<name>'",
        // and a name that holds the word "unsupported" made that ERR_MODEL_UNSUPPORTED, any other name ERR_MODEL_LOAD_FAILED
        for (const tokenizer of ["unsupported-tokenizer", "no-such-tokenizer"]) {
            const p = join(dir, `${tokenizer}.gguf`);
            writeFileSync(p, ggufWithKeys({ "general.architecture": "llama", "tokenizer.ggml.model": tokenizer }));
            await assert.rejects(LlamaModel.load(p, { vocabOnly: true }), expectCode("ERR_MODEL_LOAD_FAILED", new RegExp(`unknown tokenizer: '${tokenizer}'`)));
        }
    });

    it("rejects wrong argument types with the field named", async () => {
        await assert.rejects(LlamaModel.load(42 as unknown as string), expectCode("ERR_INVALID_ARGUMENT", /model path/));
        await assert.rejects(LlamaModel.load(await modelPath(tinyLlama), { gpuLayers: "all" as unknown as number }), expectCode("ERR_INVALID_ARGUMENT", /gpuLayers/));
        await assert.rejects(LlamaModel.load(await modelPath(tinyLlama), { splitMode: "diagonal" as never }), expectCode("ERR_INVALID_ARGUMENT", /splitMode/));
        await assert.rejects(model.createContext({ seqIds: 0 }), expectCode("ERR_INVALID_ARGUMENT", /seqIds/));
        await assert.rejects(model.createContext({ maxSequences: 0 }), expectCode("ERR_INVALID_ARGUMENT", /maxSequences/));
        await assert.rejects(model.createContext({ batchSize: 64, ubatchSize: 128 }), expectCode("ERR_INVALID_ARGUMENT", /ubatchSize/));
        await assert.rejects(model.createContext({ kvCacheTypeK: "f8" as never }), expectCode("ERR_INVALID_ARGUMENT", /kvCacheTypeK/));
        await assert.rejects(model.tokenize(7 as unknown as string), expectCode("ERR_INVALID_ARGUMENT", /text/));
        assert.throws(() => model.tokenToPiece("a" as unknown as number), expectCode("ERR_INVALID_ARGUMENT"));
        await assert.rejects(ctx.decode({} as never), expectCode("ERR_INVALID_ARGUMENT", /batch\.tokens/));
        await assert.rejects(ctx.decode({ tokens: [1, 2] as never, positions: new Int32Array(2), seqIds: new Int32Array(2), outputs: new Uint8Array(2) }),
            expectCode("ERR_INVALID_ARGUMENT", /Int32Array/));
        await assert.rejects(ctx.decode({ tokens: new Int32Array(2), positions: new Int32Array(3), seqIds: new Int32Array(2), outputs: new Uint8Array(2) }),
            expectCode("ERR_INVALID_ARGUMENT", /same length/));
        assert.throws(() => ctx.setSampler(0, { temperature: -1 }), expectCode("ERR_SAMPLER_INVALID", /temperature/));
        assert.throws(() => ctx.setSampler(0, { topP: 0 }), expectCode("ERR_SAMPLER_INVALID", /topP/));
        assert.throws(() => ctx.setSampler(0, { temperature: "hot" as unknown as number }), expectCode("ERR_INVALID_ARGUMENT", /temperature/));
        await assert.rejects(createRandomModel({ vocabFrom: "llama-spm", out: join(dir, "x.gguf"), architecture: "gpt5" as never }), expectCode("ERR_INVALID_ARGUMENT", /architecture/));
        await assert.rejects(async () => createRandomModel({ vocabFrom: "no-such-vocab", out: join(dir, "x.gguf") }), expectCode("ERR_MODEL_NOT_FOUND", /no-such-vocab/));
    });

    it("names the argument at fault as field and reason, besides the code and the message", async () => {
        const at = (code: string, field: string, reason: RegExp | string, message?: RegExp) => (e: unknown) => {
            expectCode(code, message)(e);
            const b = e as BatchwiseError;
            assert.equal(b.field, field, b.message);
            if (typeof reason === "string") assert.equal(b.reason, reason);
            else assert.match(b.reason ?? "", reason);
            return true;
        };
        // sampler options: a bad value, a wrong type, a token, a grammar
        assert.throws(() => ctx.setSampler(0, { topK: -1 }), at("ERR_SAMPLER_INVALID", "topK", "must be >= 0", /^topK must be >= 0$/));
        assert.throws(() => ctx.setSampler(0, { topP: 0 }), at("ERR_SAMPLER_INVALID", "topP", "must be in (0, 1]"));
        assert.throws(() => ctx.setSampler(0, { temperature: "hot" as unknown as number }),
            at("ERR_INVALID_ARGUMENT", "temperature", "must be a number", /^option 'temperature' must be a number$/));
        assert.throws(() => ctx.setSampler(0, { seed: 2 ** 40 }), at("ERR_SAMPLER_INVALID", "seed", "must be an unsigned 32-bit integer"));
        assert.throws(() => ctx.setSampler(0, { logitBias: [[99999, 1]] }), at("ERR_TOKEN_RANGE", "logitBias", "99999 is outside the vocabulary [0, 32000)"));
        assert.throws(() => ctx.setSampler(0, { logitBias: [[5, "x" as unknown as number]] }), at("ERR_INVALID_ARGUMENT", "logitBias", "values must be numbers"));
        assert.throws(() => ctx.setSampler(0, { grammar: "root ::= (" }), at("ERR_SAMPLER_INVALID", "grammar", /^does not parse/, /^the grammar does not parse/));
        assert.throws(() => ctx.setSampler(0, { history: [1, 2] as unknown as Int32Array }), at("ERR_INVALID_ARGUMENT", "history", "must be an Int32Array"));
        const xyz = await model.tokenize("xyz", { addSpecial: false });
        assert.throws(() => ctx.setSampler(0, { grammar: 'root ::= "a"', history: xyz }), at("ERR_SAMPLER_INVALID", "history", /^does not fit the grammar/));
        assert.throws(() => ctx.setSampler(7, null), at("ERR_SEQ_ID_RANGE", "seqId", "7 is out of range [0, 2)"));
        // context options
        await assert.rejects(model.createContext({ kvCacheTypeK: "f8" as never }), at("ERR_INVALID_ARGUMENT", "kvCacheTypeK", /^must be one of f32, /));
        await assert.rejects(model.createContext({ batchSize: 64, ubatchSize: 128 }), at("ERR_INVALID_ARGUMENT", "ubatchSize", "must not exceed 'batchSize' (64)"));
        await assert.rejects(model.createContext({ contextSize: -1 }), at("ERR_INVALID_ARGUMENT", "contextSize", /^must be between 0/));
        await assert.rejects(model.createContext({ flashAttention: "maybe" as never }), at("ERR_INVALID_ARGUMENT", "flashAttention", /^must be true, false/));
        await assert.rejects(model.createContext({ kvBlockSize: 24 }), at("ERR_INVALID_ARGUMENT", "kvBlockSize", /power of two/));
        // a batch, and a method's argument
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(5), positions: Int32Array.of(0), seqIds: Int32Array.of(2), outputs: Uint8Array.of(1) }),
            at("ERR_SEQ_ID_RANGE", "batch.seqIds[0]", "2 is out of range [0, 2)", /^batch\.seqIds\[0\] 2 is out of range/));
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(1, 32000), positions: Int32Array.of(0, 1), seqIds: new Int32Array(2), outputs: Uint8Array.of(0, 1) }),
            at("ERR_TOKEN_RANGE", "batch.tokens[1]", "32000 is outside the vocabulary [0, 32000)"));
        assert.throws(() => ctx.seqCopy(0, 9), at("ERR_SEQ_ID_RANGE", "dstSeqId", "9 is out of range [0, 2)"));
        await assert.rejects(LlamaModel.load(await modelPath(tinyLlama), { gpuLayers: "all" as unknown as number }), at("ERR_INVALID_ARGUMENT", "gpuLayers", "must be a number"));
        // an error that is not about an argument has neither
        await assert.rejects(ctx.restoreSequence(0, Buffer.from("garbage state bytes")), (e: BatchwiseError) => e.code === "ERR_STATE_FAILED" && e.field === undefined && e.reason === undefined);
    });

    it("rejects an out-of-range sequence id", async () => {
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(5), positions: Int32Array.of(0), seqIds: Int32Array.of(2), outputs: Uint8Array.of(1) }),
            expectCode("ERR_SEQ_ID_RANGE", /2 is out of range \[0, 2\)/));
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(5), positions: Int32Array.of(0), seqIds: Int32Array.of(-1), outputs: Uint8Array.of(1) }),
            expectCode("ERR_SEQ_ID_RANGE"));
        assert.throws(() => ctx.seqCopy(0, 9), expectCode("ERR_SEQ_ID_RANGE", /dstSeqId 9/));
        assert.throws(() => ctx.seqPosMax(5), expectCode("ERR_SEQ_ID_RANGE"));
        assert.throws(() => ctx.setSampler(2, { temperature: 0 }), expectCode("ERR_SEQ_ID_RANGE"));
        await assert.rejects(ctx.saveSequence(3), expectCode("ERR_SEQ_ID_RANGE"));
    });

    it("rejects a token id outside the vocabulary", async () => {
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(1, 32000), positions: Int32Array.of(0, 1), seqIds: new Int32Array(2), outputs: Uint8Array.of(0, 1) }),
            expectCode("ERR_TOKEN_RANGE", /32000 is outside the vocabulary \[0, 32000\)/));
        await assert.rejects(model.detokenize([1, -5]), expectCode("ERR_TOKEN_RANGE", /-5/));
        assert.throws(() => model.tokenToPiece(1 << 20), expectCode("ERR_TOKEN_RANGE"));
        assert.throws(() => ctx.setSampler(0, { logitBias: [[99999, 1]] }), expectCode("ERR_TOKEN_RANGE", /logitBias/));
        assert.equal(ctx.seqPosMax(0), -1, "a rejected batch leaves the KV memory untouched");
    });

    it("rejects a batch larger than batchSize", async () => {
        const n = 65;
        await assert.rejects(ctx.decode({ tokens: new Int32Array(n).fill(5), positions: Int32Array.from({ length: n }, (_, i) => i), seqIds: new Int32Array(n), outputs: new Uint8Array(n) }),
            expectCode("ERR_BATCH_TOO_LARGE", /65 tokens, more than the context's batchSize 64/));
        await assert.rejects(ctx.decode({ tokens: new Int32Array(0), positions: new Int32Array(0), seqIds: new Int32Array(0), outputs: new Uint8Array(0) }),
            expectCode("ERR_INVALID_ARGUMENT", /empty/));
    });

    it("rejects a batch whose positions do not follow the sequence", async () => {
        await prefill(ctx, 0, randomPrompt(4, 1, 32000));
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(5), positions: Int32Array.of(40), seqIds: Int32Array.of(0), outputs: Uint8Array.of(1) }),
            expectCode("ERR_BATCH_INVALID"));
        ctx.clear();
    });

    it("reports a full KV cache and keeps the memory as it was", async () => {
        // 256 cells: fill them with 4 batches of 64, then one more token has no room
        for (let i = 0; i < 4; i++) await prefill(ctx, i % 2, randomPrompt(64, i, 32000), Math.floor(i / 2) * 64);
        await assert.rejects(ctx.decode({ tokens: Int32Array.of(5), positions: Int32Array.of(128), seqIds: Int32Array.of(0), outputs: Uint8Array.of(1) }),
            expectCode("ERR_KV_FULL", /no KV cache space/));
        assert.equal(ctx.seqPosMax(0), 127);
        assert.equal(ctx.seqPosMax(1), 127);
        // freeing a sequence makes room again
        ctx.seqRemove(1);
        await prefill(ctx, 0, [5], 128);
        ctx.clear();
    });

    it("refuses KV calls while a decode is in flight", async () => {
        const p = prefill(ctx, 0, randomPrompt(32, 3, 32000));
        assert.throws(() => ctx.seqRemove(0), expectCode("ERR_CONTEXT_BUSY"));
        assert.throws(() => ctx.setSampler(0, null), expectCode("ERR_CONTEXT_BUSY"));
        await p;
        ctx.clear();
    });

    it("rejects use after dispose, and disposing a model that still has contexts", async () => {
        const m = await loadModel(tinyLlama);
        const c = await m.createContext(contextOptions({ contextSize: 128, seqIds: 1, batchSize: 32 }));
        assert.throws(() => m.dispose(), expectCode("ERR_MODEL_IN_USE", /1 live context/));
        c.dispose();
        c.dispose(); // idempotent
        assert.equal(c.disposed, true);
        await assert.rejects(c.decode({ tokens: Int32Array.of(1), positions: Int32Array.of(0), seqIds: Int32Array.of(0), outputs: Uint8Array.of(1) }),
            expectCode("ERR_DISPOSED", /context has been disposed/));
        assert.throws(() => c.seqRemove(0), expectCode("ERR_DISPOSED"));
        m.dispose();
        m.dispose();
        await assert.rejects(m.tokenize("x"), expectCode("ERR_DISPOSED", /model has been disposed/));
        await assert.rejects(m.createContext(), expectCode("ERR_DISPOSED"));
        assert.throws(() => m.tokenToPiece(1), expectCode("ERR_DISPOSED"));
    });

    it("disposing a context during a decode waits for it, then frees", async () => {
        const m = await loadModel(tinyLlama);
        const c = await m.createContext(contextOptions({ contextSize: 128, seqIds: 1, batchSize: 64 }));
        const p = prefill(c, 0, randomPrompt(64, 4, 32000));
        c.dispose();
        assert.equal(typeof (await p), "number", "the decode in flight completes");
        m.dispose();
    });

    it("rejects restoring a state that is not one", async () => {
        await assert.rejects(ctx.restoreSequence(0, Buffer.from("garbage state bytes")), expectCode("ERR_STATE_FAILED"));
        await assert.rejects(ctx.restoreSequence(0, "x" as unknown as Uint8Array), expectCode("ERR_INVALID_ARGUMENT"));
        assert.equal(ctx.seqPosMax(0), -1);
    });

    it("gpuLayers is honoured without error on this build", async () => {
        const m = await LlamaModel.load(await modelPath(tinyLlama), { gpuLayers });
        m.dispose();
    });
});
