// Shared test helpers: tiny random-weight models (generated once per machine, cached in the OS temp
// folder), the CPU/GPU switch, and greedy decoding loops written against the binding.
import { createHash } from "node:crypto";
import { mkdirSync, existsSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRandomModel, LlamaContext, LlamaModel, vocabDir, type ContextOptions, type RandomModelOptions } from "../lib/index.js";

/** BATCHWISE_TEST_GPU=1 runs the suite with every layer offloaded (CUDA build). */
export const gpu = process.env.BATCHWISE_TEST_GPU === "1";
export const gpuLayers = gpu ? -1 : 0;

// The cache folder is named by the generator's source and our llama.cpp patches, so a change to either
// makes fresh models instead of reusing ones an older build wrote on this machine.
const root = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..", "..");
const generator = createHash("sha256");
generator.update(readFileSync(join(root, "native", "random_model.cpp")));
for (const p of readdirSync(join(root, "native", "patches")).sort()) generator.update(readFileSync(join(root, "native", "patches", p)));
const cacheDir = join(tmpdir(), `batchwise-test-models-${generator.digest("hex").slice(0, 12)}`);

export type Shape = Omit<RandomModelOptions, "out">;

/** qwen2 architecture with the real Qwen2 tokenizer and chat template; GQA (4 heads, 2 KV heads). */
export const tinyQwen: Shape = {
    vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 64, layers: 2, heads: 4, kvHeads: 2,
    feedForwardSize: 128, contextLength: 4096, type: "f16", seed: 1,
};

/** llama architecture with the 32K SentencePiece vocabulary: the smallest file (about 8 MB). */
export const tinyLlama: Shape = {
    vocabFrom: "llama-spm", architecture: "llama", embeddingSize: 64, layers: 2, heads: 4, kvHeads: 4,
    feedForwardSize: 128, contextLength: 2048, type: "f16", seed: 2,
};

/** llama architecture with DeepSeek-Coder's tokenizer, which has fill-in-the-middle tokens (and no chat template). */
export const tinyCoder: Shape = {
    vocabFrom: "deepseek-coder", architecture: "llama", embeddingSize: 64, layers: 2, heads: 4, kvHeads: 4,
    feedForwardSize: 128, contextLength: 2048, type: "f16", seed: 3,
};

const pending = new Map<string, Promise<string>>();

/** Path of a generated model of this shape (made on first use). */
export function modelPath(shape: Shape): Promise<string> {
    const key = Object.entries(shape).map(([k, v]) => `${k}=${v}`).join(",");
    let p = pending.get(key);
    if (!p) {
        const name = key.replace(/[^a-z0-9=,.-]/gi, "_").replace(/[=,]/g, "-");
        const out = join(cacheDir, `${name}.gguf`);
        p = existsSync(out)
            ? Promise.resolve(out)
            : (mkdirSync(cacheDir, { recursive: true }), createRandomModel({ ...shape, out }).then((r) => r.path));
        pending.set(key, p);
    }
    return p;
}

export async function loadModel(shape: Shape = tinyQwen): Promise<LlamaModel> {
    return LlamaModel.load(await modelPath(shape), { gpuLayers });
}

export function contextOptions(o: ContextOptions = {}): ContextOptions {
    // seqIds, or its deprecated name maxSequences (still taken), default 4
    const { maxSequences, seqIds = maxSequences ?? 4, ...rest } = o;
    return { contextSize: 1024, seqIds, batchSize: 256, flashAttention: gpu ? "on" : "auto", ...rest };
}

function range(a: number, n: number): Int32Array {
    return Int32Array.from({ length: n }, (_, i) => a + i);
}

/** Prefills `prompt` into `seq` starting at `pos0` and returns the first sampled token. */
export async function prefill(ctx: LlamaContext, seq: number, prompt: ArrayLike<number>, pos0 = 0): Promise<number> {
    const n = prompt.length;
    const r = await ctx.decode({
        tokens: Int32Array.from(prompt),
        positions: range(pos0, n),
        seqIds: new Int32Array(n).fill(seq),
        outputs: Uint8Array.from({ length: n }, (_, i) => (i === n - 1 ? 1 : 0)),
    });
    return r.tokens[0];
}

/** Greedy generation of `n` tokens for one sequence, one token per decode. */
export async function generate(ctx: LlamaContext, seq: number, prompt: ArrayLike<number>, n: number, pos0 = 0): Promise<number[]> {
    const out = [await prefill(ctx, seq, prompt, pos0)];
    let pos = pos0 + prompt.length;
    while (out.length < n) {
        const r = await ctx.decode({
            tokens: Int32Array.of(out[out.length - 1]),
            positions: Int32Array.of(pos++),
            seqIds: Int32Array.of(seq),
            outputs: Uint8Array.of(1),
        });
        out.push(r.tokens[0]);
    }
    return out;
}

/** Greedy generation for several sequences at once: every prompt in one batch, then one token each per decode. */
export async function generateBatched(ctx: LlamaContext, prompts: ArrayLike<number>[], n: number): Promise<number[][]> {
    const tokens: number[] = [], positions: number[] = [], seqIds: number[] = [], outputs: number[] = [];
    prompts.forEach((p, s) => {
        for (let i = 0; i < p.length; i++) {
            tokens.push(p[i]); positions.push(i); seqIds.push(s); outputs.push(i === p.length - 1 ? 1 : 0);
        }
    });
    const first = await ctx.decode({
        tokens: Int32Array.from(tokens), positions: Int32Array.from(positions),
        seqIds: Int32Array.from(seqIds), outputs: Uint8Array.from(outputs),
    });
    const outs = prompts.map((_, s) => [first.tokens[s]]);
    for (let step = 1; step < n; step++) {
        const r = await ctx.decode({
            tokens: Int32Array.from(outs.map((o) => o[o.length - 1])),
            positions: Int32Array.from(prompts.map((p) => p.length + step - 1)),
            seqIds: Int32Array.from(prompts.map((_, s) => s)),
            outputs: new Uint8Array(prompts.length).fill(1),
        });
        outs.forEach((o, s) => o.push(r.tokens[s]));
    }
    return outs;
}

/** A deterministic pseudo-random prompt of `n` ordinary tokens. */
export function randomPrompt(n: number, seed: number, vocab = 30000): number[] {
    let x = seed * 2654435761 + 1;
    return Array.from({ length: n }, () => {
        x = (x * 1103515245 + 12345) >>> 0;
        return 100 + (x % (vocab - 200));
    });
}

/** A real chat template from llama.cpp's models/templates (Qwen3-Coder.jinja, ...). */
export function template(file: string): string {
    return readFileSync(join(vocabDir(), "templates", file), "utf8");
}
