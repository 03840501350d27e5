// Run by verify-cuda.sh inside the project it installed batchwise into: loads batchwise as a user would, checks which
// binary and backends it picked, and decodes on the GPU (or the CPU with --cpu). Prints one JSON report on stdout.
//   node verify-probe.mjs [--cpu] [--fallback]
//     --fallback: no GPU is visible (CUDA_VISIBLE_DEVICES=""): expects the CPU, with the warning
import { createRequire } from "node:module";
import { join } from "node:path";

const args = process.argv.slice(2);
const expectCuda = !args.includes("--cpu") && !args.includes("--fallback");
const warnings = [];
process.on("warning", (w) => warnings.push(`${w.code ?? w.name}: ${w.message}`));

const b = await import("batchwise");
const require = createRequire(join(process.cwd(), "package.json"));
const { addonLocation } = await import(require.resolve("batchwise/package.json").replace(/package\.json$/, "dist/lib/binding/native.js"));
const report = { ok: false, warnings };
const fail = (msg) => {
    report.error = msg;
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    process.exit(1);
};

const sys = b.systemInfo();
const loc = addonLocation();
Object.assign(report, {
    addon: loc?.packageName ?? loc?.path, skipped: loc?.skipped, cuda: sys.cuda, backends: sys.backends,
    backendLibraries: sys.backendLibraries, backendErrors: sys.backendErrors,
    devices: b.getDevices().map((d) => `${d.backend} ${d.name} ${d.description} ${(d.totalBytes / 2 ** 30).toFixed(0)} GiB`),
});
if (expectCuda) {
    if (loc?.packageName !== "@batchwise/linux-x64-cuda") fail(`loaded ${report.addon}, not @batchwise/linux-x64-cuda`);
    if (!sys.cuda || !sys.backendLibraries.includes("libggml-cuda.so")) fail("the CUDA backend is not in use");
} else if (sys.cuda) {
    fail("CUDA is in use where the CPU was expected");
}
// process.emitWarning delivers on the next tick: let the loader's warnings arrive before they are read
await new Promise((r) => setImmediate(r));
if (args.includes("--fallback") && !warnings.some((w) => w.startsWith("BATCHWISE_CUDA_UNAVAILABLE"))) fail("no BATCHWISE_CUDA_UNAVAILABLE warning");

// a random-weight model from the vocab package, every layer on the GPU, greedy decoding
const { path } = await b.createRandomModel({ vocabFrom: "qwen2", out: join(process.cwd(), "verify.gguf"), layers: 4, embeddingSize: 256, heads: 4, kvHeads: 2, feedForwardSize: 512 });
const gpu = b.getDevices().find((d) => d.backend === "CUDA");
const free0 = gpu?.freeBytes;
const model = await b.LlamaModel.load(path, { gpuLayers: expectCuda ? -1 : 0 });
const ctx = await model.createContext({ contextSize: 2048, seqIds: 1 });
const prompt = await model.tokenize(model.applyChatTemplate([{ role: "user", content: "Hi!" }]), { parseSpecial: true });
const out = [];
let tokens = prompt;
let pos = 0;
const t0 = performance.now();
for (let i = 0; i < 32; i++) {
    const r = await ctx.decode({
        tokens, positions: Int32Array.from(tokens, (_, k) => pos + k), seqIds: new Int32Array(tokens.length),
        outputs: Uint8Array.from(tokens, (_, k) => +(k === tokens.length - 1)),
    });
    pos += tokens.length;
    out.push(r.tokens[0]);
    tokens = Int32Array.of(r.tokens[0]);
}
const ms = performance.now() - t0;
const used = gpu ? free0 - b.getDevices().find((d) => d.backend === "CUDA").freeBytes : 0;
ctx.dispose();
model.dispose();
Object.assign(report, {
    ok: true, decoded: out.length, tokens: out.slice(0, 8), decodeMs: Math.round(ms),
    gpuMemoryUsedMiB: gpu ? Math.round(used / 2 ** 20) : undefined,
});
if (expectCuda && used <= 0) fail("the model took no GPU memory");
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
