// Model loading, metadata, tokenizer and chat template on generated random-weight models.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cachedRandomModel, getDevices, LogLevel, resolveVocab, setLogger, systemInfo, LlamaModel } from "../lib/index.js";
import { gpu, loadModel, modelPath, tinyLlama, tinyQwen } from "./helpers.js";

describe("model", () => {
    it("reads a model or vocab packed in Electron's app.asar from its app.asar.unpacked copy", async () => {
        const dir = mkdtempSync(join(tmpdir(), "bw-asar-"));
        try {
            mkdirSync(join(dir, "app.asar.unpacked", "models"), { recursive: true });
            copyFileSync(await modelPath(tinyQwen), join(dir, "app.asar.unpacked", "models", "m.gguf"));
            const packed = join(dir, "app.asar", "models", "m.gguf");
            assert.equal(resolveVocab(packed), join(dir, "app.asar.unpacked", "models", "m.gguf"));
            assert.equal(resolveVocab(join(dir, "app.asar", "other.gguf")), join(dir, "app.asar", "other.gguf"), "not unpacked: left as it is");
            const m = await LlamaModel.load(packed, { gpuLayers: 0 });
            assert.equal(m.metadata.layers, 2);
            m.dispose();
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });

    let qwen: LlamaModel;
    let llama: LlamaModel;

    before(async () => {
        qwen = await loadModel(tinyQwen);
        llama = await loadModel(tinyLlama);
    });
    after(() => {
        qwen.dispose();
        llama.dispose();
    });

    it("reports the build and the devices", () => {
        const info = systemInfo();
        assert.equal(info.llamaTag, "v0.5.0");
        assert.equal(info.cuda, gpu, "BATCHWISE_TEST_GPU=1 needs the CUDA build (and a CPU run the CPU build)");
        assert.ok(Number.isInteger(info.maxSeqIds) && info.maxSeqIds >= 1, `maxSeqIds ${info.maxSeqIds}`);
        assert.equal(info.maxSequences, info.maxSeqIds, "the old name reads the same");
        const devices = getDevices();
        assert.ok(devices.length >= 1);
        for (const d of devices) {
            assert.ok(d.totalBytes > 0 && d.freeBytes <= d.totalBytes, `${d.name} memory`);
        }
        if (gpu) assert.ok(devices.some((d) => d.type === "gpu"), "no GPU visible to llama.cpp");
    });

    it("exposes the metadata of the shape it was generated with", () => {
        const m = qwen.metadata;
        assert.equal(m.architecture, "qwen2");
        assert.equal(m.embeddingSize, 64);
        assert.equal(m.layers, 2);
        assert.equal(m.heads, 4);
        assert.equal(m.kvHeads, 2);
        assert.equal(m.trainedContext, 4096);
        assert.equal(m.vocabSize, 151936);
        assert.equal(m.tokens.eos, 151643);
        assert.equal(m.tokens.eot, 151645); // <|im_end|>
        assert.ok(m.parameters > 151936 * 64, "parameters count the embeddings at least");
        assert.match(m.chatTemplate ?? "", /im_start/);
        assert.equal(m.gguf["general.architecture"], "qwen2");
        assert.equal(llama.metadata.architecture, "llama");
        assert.equal(llama.metadata.vocabSize, 32000);
        assert.equal(llama.metadata.tokens.bos, 1);
        assert.equal(llama.metadata.addBos, true);
    });

    it("round-trips text through the tokenizer", async () => {
        const texts = [
            "Hello, world!",
            "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
            "Unicode: héllo wörld, 你好世界, emoji 🚀🔥, عربى",
            "   leading and trailing spaces   ",
            "",
        ];
        for (const model of [qwen, llama]) {
            for (const text of texts) {
                const toks = await model.tokenize(text, { addSpecial: false });
                assert.ok(toks instanceof Int32Array);
                assert.equal(await model.detokenize(toks), text, `${model.metadata.architecture}: ${JSON.stringify(text)}`);
            }
        }
        // BOS is added for the SentencePiece llama vocabulary and not for Qwen2
        const withBos = await llama.tokenize("hi");
        assert.equal(withBos[0], 1);
        assert.notEqual((await qwen.tokenize("hi"))[0], qwen.metadata.tokens.bos);
    });

    it("parses special tokens only when asked", async () => {
        const text = "<|im_start|>user";
        const parsed = await qwen.tokenize(text, { parseSpecial: true });
        assert.equal(parsed[0], 151644);
        const plain = await qwen.tokenize(text);
        assert.ok(!plain.includes(151644));
        assert.equal(await qwen.detokenize(parsed, { special: true }), text);
        assert.equal(await qwen.detokenize(parsed, { special: false }), "user");
    });

    // the timeout guards against the quadratic splitter (100000 specials took minutes), with a wide margin over the
    // linear one (well under a second here)
    it("splits text at special tokens exactly as tokenizing the pieces between them (patch 0004)", { timeout: 20_000 }, async () => {
        // the splitter now carries the fragment before the one it splits instead of walking the list from its head
        const specials: [string, number][] = [["<|im_start|>", 151644], ["<|im_end|>", 151645], ["<|endoftext|>", 151643]];
        const words = ["hello", " world", "\n", "def f(x):", "  ", "é", "日本", " <", "|", ">"];
        let x = 7;
        const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0), x % n);
        for (let trial = 0; trial < 40; trial++) {
            const parts: (string | number)[] = [];
            for (let i = 0, n = 1 + rnd(12); i < n; i++) parts.push(rnd(3) === 0 ? specials[rnd(3)][1] : words[rnd(words.length)] + words[rnd(words.length)]);
            const text = parts.map((p) => (typeof p === "number" ? specials.find((s) => s[1] === p)![0] : p)).join("");
            const want: number[] = [];
            let run = "";
            const flush = async () => {
                if (run) want.push(...(await qwen.tokenize(run, { addSpecial: false, parseSpecial: false })));
                run = "";
            };
            for (const p of parts) {
                if (typeof p === "number") {
                    await flush();
                    want.push(p);
                } else run += p;
            }
            await flush();
            assert.deepEqual(Array.from(await qwen.tokenize(text, { addSpecial: false, parseSpecial: true })), want, JSON.stringify(text));
        }
        // many special tokens: one per repeat
        const many = await qwen.tokenize("<|im_start|>".repeat(100_000) + "x", { addSpecial: false, parseSpecial: true });
        assert.equal(many.length, 100_001);
        assert.ok(many.subarray(0, 100_000).every((t) => t === 151644));
    });

    it("gives token pieces as bytes that concatenate to the text, even inside a UTF-8 character", async () => {
        const text = "naïve 🚀 déjà vu 你好";
        const toks = await qwen.tokenize(text);
        const bytes = Buffer.concat([...toks].map((t) => Buffer.from(qwen.tokenToPiece(t))));
        assert.equal(bytes.toString("utf8"), text);
        // the rocket emoji is split over several byte-level tokens: some piece is not valid UTF-8 alone
        assert.ok([...toks].some((t) => !Buffer.from(qwen.tokenToPiece(t)).toString("utf8").length ||
            Buffer.from(qwen.tokenToPiece(t)).toString("utf8").includes("\uFFFD")));
        assert.equal(qwen.isEog(qwen.metadata.tokens.eot), true);
        assert.equal(qwen.isEog(toks[0]), false);
    });

    it("applies the model's chat template", () => {
        const prompt = qwen.applyChatTemplate([
            { role: "system", content: "You write code." },
            { role: "user", content: "Sort a list." },
        ]);
        assert.equal(prompt, "<|im_start|>system\nYou write code.<|im_end|>\n<|im_start|>user\nSort a list.<|im_end|>\n<|im_start|>assistant\n");
        const noGen = qwen.applyChatTemplate([{ role: "user", content: "x" }], { addAssistant: false });
        assert.ok(!noGen.endsWith("assistant\n"));
        // a model without a template needs one passed in
        assert.throws(() => llama.applyChatTemplate([{ role: "user", content: "x" }]), { code: "ERR_CHAT_TEMPLATE" });
        assert.match(llama.applyChatTemplate([{ role: "user", content: "x" }], { template: "chatml" }), /<\|im_start\|>user\nx<\|im_end\|>/);
    });

    it("reports load progress up to 1", async () => {
        const seen: number[] = [];
        const m = await LlamaModel.load(await modelPath(tinyLlama), { gpuLayers: gpu ? -1 : 0, onProgress: (p) => seen.push(p) });
        // progress callbacks are delivered through the event loop: let them arrive
        await new Promise((r) => setImmediate(r));
        m.dispose();
        assert.ok(seen.length > 0);
        assert.equal(Math.max(...seen), 1);
        assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
    });

    it("routes llama.cpp logs to a callback by level, and stops when unset", async () => {
        const lines: [number, string][] = [];
        setLogger((level, text) => lines.push([level, text]), LogLevel.Info);
        try {
            const m = await LlamaModel.load(await modelPath(tinyLlama), { gpuLayers: gpu ? -1 : 0 });
            m.dispose();
            await new Promise((r) => setTimeout(r, 20)); // log lines arrive through the event loop
            assert.ok(lines.length > 0, "loading logs at info level");
            assert.ok(lines.every(([level]) => level >= LogLevel.Info && level <= LogLevel.Error));
            assert.ok(lines.some(([, text]) => /llama_model_loader|print_info|load_tensors/.test(text)), "llama.cpp's loader speaks");
        } finally {
            setLogger(null);
        }
        const n = lines.length;
        (await LlamaModel.load(await modelPath(tinyLlama), { gpuLayers: gpu ? -1 : 0 })).dispose();
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(lines.length, n);
        assert.throws(() => setLogger("console" as never), { code: "ERR_INVALID_ARGUMENT" });
        assert.throws(() => setLogger(null, 9 as never), { code: "ERR_INVALID_ARGUMENT" });
    });

    it("makes a random model once per shape in the cache folder", async () => {
        const dir = mkdtempSync(join(tmpdir(), "bw-cache-"));
        const saved = process.env.XDG_CACHE_HOME;
        process.env.XDG_CACHE_HOME = dir;
        try {
            const shape = { vocabFrom: "llama-spm", architecture: "llama" as const, embeddingSize: 32, layers: 1, heads: 2, kvHeads: 2, feedForwardSize: 64, contextLength: 256 };
            const a = await cachedRandomModel("t", shape);
            const b = await cachedRandomModel("t", shape);
            const c = await cachedRandomModel("t", { ...shape, layers: 2 });
            assert.ok(a.made && !b.made && c.made);
            assert.equal(a.path, b.path);
            assert.notEqual(a.path, c.path, "another shape, another file");
            assert.ok(a.path.startsWith(join(dir, "batchwise", "models")));
        } finally {
            if (saved === undefined) delete process.env.XDG_CACHE_HOME;
            else process.env.XDG_CACHE_HOME = saved;
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it("loads a vocabulary-only model for tokenizing", async () => {
        const m = await LlamaModel.load(await modelPath(tinyQwen), { vocabOnly: true });
        assert.deepEqual([...(await m.tokenize("hello world"))], [...(await qwen.tokenize("hello world"))]);
        assert.equal(m.metadata.vocabOnly, true);
        assert.equal(m.metadata.vocabSize, 151936);
        // read from the file's keys (llama.cpp loads no hyperparameters without weights): a benchmark sizes prompts by it
        assert.equal(m.metadata.trainedContext, tinyQwen.contextLength);
        assert.equal(m.metadata.embeddingSize, tinyQwen.embeddingSize);
        await assert.rejects(m.createContext(), { code: "ERR_INVALID_ARGUMENT", message: /vocabOnly/ });
        m.dispose();
    });
});
