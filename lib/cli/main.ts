#!/usr/bin/env node
// The batchwise command: serve, devices, make-model. Parsing and help come from commander; the load
// progress bar from cli-progress. Logs (one JSON line a request) go to stdout, the human summary to stderr.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, InvalidArgumentError, Option } from "commander";
import cliProgress from "cli-progress";
import { pino } from "pino";
import { cachedRandomModel, createRandomModel, getDevices, resolveVocab, systemInfo, type EngineOptions, type KvCacheType, type RandomModelOptions, type SplitMode } from "../index.js";
import { createServer, parseOrigin, type BatchwiseServer, type ServedModel } from "../server/server.js";
import { runBench, SHAPES, WORKLOADS, type ServerKind, type WorkloadName } from "../bench/bench.js";
import { markdown } from "../bench/report.js";

const pkg = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "package.json"), "utf8")) as { version: string };

const int = (min: number) => (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
    return n;
};
const collect = (v: string, acc: string[]) => [...acc, v];
const numList = (v: string): number[] => {
    const l = v.split(",").map(Number);
    if (l.length === 0 || l.some((x) => !Number.isFinite(x) || x < 0)) throw new InvalidArgumentError("expected numbers separated by commas, e.g. 3,1");
    return l;
};
/** --cors-origin: repeatable, each a comma list of origins or "*". */
const collectOrigins = (v: string, acc: string[]) => {
    const list = v.split(",").map((s) => s.trim()).filter(Boolean);
    if (list.length === 0) throw new InvalidArgumentError("expected an origin such as http://localhost:3000, or '*'");
    try {
        return [...acc, ...list.map(parseOrigin)];
    } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
    }
};
const seconds = (v: string): number => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a number of seconds >= 0 (0: no limit)");
    return n;
};
const KV_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"];

/** The demo model: random weights, the real Qwen2 tokenizer and chat template; made once and cached. */
const DEMO_MODEL: Omit<RandomModelOptions, "out"> = {
    vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 128, layers: 4, heads: 4, kvHeads: 2,
    feedForwardSize: 256, contextLength: 8192, type: "f16", seed: 7,
};

function parseModelArg(arg: string): ServedModel {
    const eq = arg.indexOf("=");
    // NAME=PATH, unless what precedes '=' looks like a path
    if (eq > 0 && !/[\\/]/.test(arg.slice(0, eq))) return { name: arg.slice(0, eq), path: resolve(arg.slice(eq + 1)) };
    return { path: resolve(arg) };
}

interface ServeFlags {
    model: string[];
    host: string;
    port: number;
    apiKey: string[];
    gpuLayers?: number;
    splitMode?: SplitMode;
    tensorSplit?: number[];
    mainGpu?: number;
    ctxSize?: number;
    maxRunning?: number;
    parallel?: number;
    batchTokens?: number;
    ubatch?: number;
    prefillChunk?: number;
    blockSize?: number;
    prefixCache: boolean;
    pagedKv: boolean;
    preemption?: "recompute" | "swap";
    maxQueued?: number;
    maxPromptLength?: number;
    flashAttn?: "on" | "off" | "auto";
    cacheTypeK?: KvCacheType;
    cacheTypeV?: KvCacheType;
    threads?: number;
    chatTemplateFile?: string;
    warmup: boolean;
    drainTimeout: number;
    livenessTimeout?: number;
    bodyLimit?: number;
    headersTimeout?: number;
    bodyTimeout?: number;
    bodyMinRate?: number;
    corsOrigin: string[];
    logLevel: string;
}

async function serve(flags: ServeFlags): Promise<void> {
    const log = pino({ level: flags.logLevel });
    const options: Omit<EngineOptions, "model"> = {
        gpuLayers: flags.gpuLayers, splitMode: flags.splitMode, tensorSplit: flags.tensorSplit, mainGpu: flags.mainGpu,
        contextSize: flags.ctxSize, maxRunning: flags.maxRunning ?? flags.parallel, batchTokens: flags.batchTokens, ubatchSize: flags.ubatch, prefillChunk: flags.prefillChunk,
        blockSize: flags.blockSize, prefixCache: flags.prefixCache, ...(!flags.pagedKv && { pagedKv: false }), preemption: flags.preemption, maxQueued: flags.maxQueued,
        maxPromptLength: flags.maxPromptLength,
        flashAttention: flags.flashAttn, kvCacheTypeK: flags.cacheTypeK, kvCacheTypeV: flags.cacheTypeV, threads: flags.threads,
    };
    if (flags.chatTemplateFile !== undefined) {
        try {
            options.chatTemplate = readFileSync(flags.chatTemplateFile, "utf8");
        } catch (e) {
            process.stderr.write(`batchwise: cannot read --chat-template-file ${flags.chatTemplateFile}: ${(e as Error).message}\n`);
            process.exit(2);
        }
    }
    for (const k of Object.keys(options) as (keyof typeof options)[]) if (options[k] === undefined) delete options[k];
    let models: ServedModel[];
    if (flags.model.length === 0) {
        process.stderr.write("batchwise: no --model given, so this serves 'demo': a small model with RANDOM weights (its output is gibberish),\n" +
            "           the real Qwen2 tokenizer and chat template, for trying the API out. Pass --model PATH.gguf for a real model.\n");
        models = [{ name: "demo", path: (await cachedRandomModel("demo-qwen2", DEMO_MODEL)).path, options: { contextSize: 8192, ...options } }];
    } else {
        models = flags.model.map((m) => ({ ...parseModelArg(m), options }));
        for (const m of models) {
            if (!existsSync(m.path!)) {
                process.stderr.write(`batchwise: model file not found: ${m.path}\n`);
                process.exit(2);
            }
        }
    }
    const apiKeys = [...flags.apiKey, ...(process.env.BATCHWISE_API_KEY ? [process.env.BATCHWISE_API_KEY] : [])];

    const tty = process.stderr.isTTY;
    const bars = tty ? new cliProgress.MultiBar({ format: " loading {name} [{bar}] {percentage}%", hideCursor: true, clearOnComplete: true, stream: process.stderr }, cliProgress.Presets.shades_classic) : null;
    const barFor = new Map<string, cliProgress.SingleBar>();
    let server: BatchwiseServer;
    try {
        server = await createServer({
            models, host: flags.host, port: flags.port, apiKeys, logger: log, warmup: flags.warmup,
            drainTimeoutMs: flags.drainTimeout * 1000, livenessTimeoutMs: flags.livenessTimeout === undefined ? undefined : flags.livenessTimeout * 1000, bodyLimit: flags.bodyLimit, corsOrigins: flags.corsOrigin,
            headersTimeoutMs: flags.headersTimeout === undefined ? undefined : flags.headersTimeout * 1000,
            bodyTimeoutMs: flags.bodyTimeout === undefined ? undefined : flags.bodyTimeout * 1000, bodyMinRate: flags.bodyMinRate,
            onLoadProgress: (name, p) => {
                if (!bars) return;
                let b = barFor.get(name);
                if (!b) barFor.set(name, (b = bars.create(100, 0, { name })));
                b.update(Math.round(p * 100));
            },
        });
    } catch (e) {
        bars?.stop();
        process.stderr.write(`batchwise: cannot start the server: ${(e as Error).message}\n`);
        process.exit(1);
    }
    let signals = 0;
    const stop = (sig: string) => {
        if (++signals > 1) {
            process.stderr.write(`batchwise: ${sig} again: exiting now\n`);
            process.exit(1);
        }
        log.info({ signal: sig, inflight: "draining" }, "stopping: not ready any more, finishing requests in flight");
        // a wedged decode must not keep the pod from going: past the drain timeout and a grace, exit anyway
        setTimeout(() => {
            log.error("the drain did not finish in time: exiting");
            process.exit(1);
        }, flags.drainTimeout * 1000 + 15_000).unref();
        server.drain().then(() => {
            log.info("stopped");
            process.exit(0);
        }, (e: unknown) => {
            log.error({ err: e }, "drain failed");
            process.exit(1);
        });
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    try {
        await server.ready();
    } catch (e) {
        bars?.stop();
        if (signals > 0) return; // stopped while loading: the drain exits
        process.stderr.write(`batchwise: loading failed: ${(e as Error).message}\n`);
        await server.close().catch(() => {});
        process.exit(1);
    }
    bars?.stop();
    process.stderr.write(summary(server, apiKeys.length > 0));
}

function gib(n: number): string {
    return `${(n / 2 ** 30).toFixed(1)} GiB`;
}

function summary(server: BatchwiseServer, auth: boolean): string {
    const sys = systemInfo();
    const gpus = getDevices().filter((d) => d.type === "gpu" || d.type === "igpu");
    const lines = [`batchwise ${pkg.version} (llama.cpp ${sys.llamaTag}, ${sys.cuda ? "CUDA" : "CPU build"})`];
    lines.push(gpus.length > 0
        ? `  GPUs: ${gpus.map((g) => `${g.index}: ${g.description || g.name} (${gib(g.freeBytes)} free of ${gib(g.totalBytes)})`).join("; ")}`
        : "  GPUs: none (running on the CPU)");
    for (const { name, engine, warmupMs } of server.summary()) {
        const m = engine.metadata;
        const s = engine.stats();
        lines.push(`  model '${name}': ${m.architecture}, ${(m.parameters / 1e9).toFixed(m.parameters < 1e9 ? 3 : 1)}B parameters, ${gib(m.sizeBytes)}`);
        lines.push(`    context ${engine.maxContext} tokens per request; KV cache ${s.kv.blocks} blocks of ${s.kv.blockSize} tokens; ` +
            `${engine.settings.maxRunning} sequences at once; ${engine.settings.batchTokens} tokens a step; ` +
            `prefix cache ${engine.settings.prefixCache ? "on" : "off"}; chat template ${engine.chatTemplateKind}; ` +
            `fill-in-the-middle ${engine.supportsInfill ? "yes" : "no"}; warm-up ${Math.round(warmupMs)} ms`);
    }
    lines.push(`  ready on ${server.url}  (OpenAI API under /v1; /health, /ready, /metrics${auth ? "; API key required for /v1" : ""})`);
    return lines.join("\n") + "\n";
}

function devices(flags: { json?: boolean }): void {
    const sys = systemInfo();
    const list = getDevices();
    if (flags.json) {
        process.stdout.write(JSON.stringify({ system: sys, devices: list }, null, 2) + "\n");
        return;
    }
    process.stdout.write(`llama.cpp ${sys.llamaTag}, ${sys.cuda ? "CUDA build" : "CPU build"}, GPU offload ${sys.gpuOffload ? "yes" : "no"}\n`);
    for (const d of list) {
        process.stdout.write(`  ${d.index}  ${d.type.padEnd(5)} ${d.backend.padEnd(6)} ${(d.description || d.name).padEnd(40)} ${gib(d.freeBytes)} free of ${gib(d.totalBytes)}\n`);
    }
    if (!list.some((d) => d.type === "gpu")) process.stdout.write("  no GPU found: models run on the CPU (build with BATCHWISE_CUDA=1 for CUDA)\n");
}

async function makeModel(flags: { vocab: string; out: string; arch: "qwen2" | "llama"; embd: number; layers: number; heads: number; kvHeads: number; ff: number; ctx: number; type: RandomModelOptions["type"]; seed: number }): Promise<void> {
    const r = await createRandomModel({
        vocabFrom: resolveVocab(flags.vocab), out: resolve(flags.out), architecture: flags.arch, embeddingSize: flags.embd, layers: flags.layers,
        heads: flags.heads, kvHeads: flags.kvHeads, feedForwardSize: flags.ff, contextLength: flags.ctx, type: flags.type, seed: flags.seed,
    });
    process.stdout.write(`wrote ${r.path} (${(r.sizeBytes / 2 ** 20).toFixed(1)} MiB, vocabulary ${r.vocabSize} tokens, random weights)\n`);
}

interface BenchFlags {
    model: string;
    gpuLayers: number;
    ctxSize: number;
    parallel: number;
    flashAttn: "on" | "off" | "auto";
    llamaKv: "slots" | "unified";
    concurrency?: number[];
    waves?: number;
    ideRates?: number[];
    ideDuration?: number;
    splitMode?: "none" | "layer" | "row" | "tensor";
    mainGpu?: number;
    servers: string;
    workloads: string;
    llamaBin?: string;
    quick?: boolean;
    batchwiseArgs?: string;
    bound: boolean;
    out: string;
}

async function bench(flags: BenchFlags): Promise<void> {
    const servers = flags.servers.split(",").map((s) => s.trim()) as ServerKind[];
    const workloads = flags.workloads.split(",").map((s) => s.trim()) as WorkloadName[];
    for (const s of servers) if (!["batchwise", "llama-server", "llama-server -bs"].includes(s)) throw new InvalidArgumentError(`unknown server '${s}'`);
    for (const w of workloads) if (!WORKLOADS.includes(w)) throw new InvalidArgumentError(`unknown workload '${w}' (workloads: ${WORKLOADS.join(", ")})`);
    for (const c of flags.concurrency ?? []) if (!Number.isInteger(c) || c < 1) throw new InvalidArgumentError(`--concurrency: ${c} is not a whole number >= 1`);
    if (flags.waves !== undefined && !(Number.isInteger(flags.waves) && flags.waves >= 1)) throw new InvalidArgumentError("--waves: expected a whole number >= 1");
    for (const r of flags.ideRates ?? []) if (!(r > 0)) throw new InvalidArgumentError(`--ide-rates: ${r} is not a rate > 0`);
    if (flags.ideDuration !== undefined && !(flags.ideDuration > 0)) throw new InvalidArgumentError("--ide-duration: expected seconds > 0");
    if (!SHAPES[flags.model] && !existsSync(flags.model)) throw new InvalidArgumentError(`--model: no such file or shape '${flags.model}' (shapes: ${Object.keys(SHAPES).join(", ")})`);
    const t0 = performance.now();
    const report = await runBench({
        model: flags.model, gpuLayers: flags.gpuLayers, contextSize: flags.ctxSize, parallel: flags.parallel, flashAttention: flags.flashAttn,
        llamaKv: flags.llamaKv, concurrency: flags.concurrency, waves: flags.waves, ideRates: flags.ideRates, ideDurationS: flags.ideDuration, splitMode: flags.splitMode, mainGpu: flags.mainGpu, servers, workloads, llamaBin: flags.llamaBin, quick: flags.quick === true, out: resolve(flags.out),
        batchwiseArgs: flags.batchwiseArgs ? flags.batchwiseArgs.split(/\s+/).filter(Boolean) : [], skipBound: !flags.bound,
        log: (line) => process.stderr.write(`[bench] ${line}\n`),
    }, `npx batchwise bench ${process.argv.slice(3).map((a) => (/[\s,]/.test(a) ? JSON.stringify(a) : a)).join(" ")}`.trim());
    process.stderr.write(`[bench] done in ${((performance.now() - t0) / 1000).toFixed(0)} s: ${resolve(flags.out)}/report.{json,md} and chart.svg\n`);
    process.stdout.write(markdown(report));
}

function program(): Command {
    const p = new Command("batchwise")
        .description("Serve LLMs from Node: llama.cpp with CUDA, continuous batching, paged KV and prefix caching, an OpenAI-compatible API.")
        .version(pkg.version);
    p.command("serve")
        .description("serve models over an OpenAI-compatible HTTP API")
        .addOption(new Option("-m, --model <path>", "GGUF model to serve, as PATH or NAME=PATH; repeat for several (default: a random-weight demo model)").default([]).argParser(collect))
        .option("--host <address>", "address to listen on", "127.0.0.1")
        .option("--port <port>", "port to listen on", int(0), 8000)
        .addOption(new Option("--api-key <key>", "require 'Authorization: Bearer KEY' on /v1 (repeatable; also BATCHWISE_API_KEY)").default([]).argParser(collect))
        .option("--gpu-layers <n>", "layers to offload to the GPU (-1: all)", int(-1))
        .addOption(new Option("--split-mode <mode>", "how to spread a model over several GPUs").choices(["none", "layer", "row", "tensor"]))
        .option("--tensor-split <shares>", "share of the model per GPU, e.g. 3,1", numList)
        .option("--main-gpu <n>", "GPU for the whole model with --split-mode none", int(0))
        .option("-c, --ctx-size <tokens>", "KV cache size in tokens, shared by all sequences (default: the model's trained context)", int(1))
        .option("--max-running <n>", "sequences running (decoded) at once (default 64)", int(1))
        .addOption(new Option("--parallel <n>", "the same as --max-running (llama-server's name)").argParser(int(1)).hideHelp())
        .option("--batch-tokens <n>", "tokens per scheduling step (default 2048)", int(1))
        .option("--ubatch <n>", "tokens per graph run (default 512)", int(1))
        .option("--prefill-chunk <n>", "most prompt tokens one request computes in a step while others run or wait (default: --ubatch)", int(1))
        .option("--block-size <tokens>", "tokens per KV block (default 128 with the paged KV cache, else 16)", int(1))
        .option("--no-prefix-cache", "do not keep and reuse computed prompt prefixes")
        .option("--no-paged-kv", "llama.cpp's unified KV pool instead of the paged KV cache (the default where the GPU kernel supports the model)")
        .addOption(new Option("--preemption <mode>", "what a preempted request does").choices(["recompute", "swap"]))
        .option("--max-queued <n>", "sequences (prompts x n) waiting at most before 429; a request asking for more alone gets 400 (default 1024)", int(1))
        .option("--max-prompt-length <chars>", "longest prompt text taken for tokenizing, in characters (default 16 per context token)", int(1))
        .addOption(new Option("--flash-attn <mode>", "flash attention").choices(["on", "off", "auto"]))
        .addOption(new Option("--cache-type-k <type>", "KV cache type for K").choices(KV_TYPES))
        .addOption(new Option("--cache-type-v <type>", "KV cache type for V").choices(KV_TYPES))
        .option("--threads <n>", "CPU threads", int(1))
        .option("--chat-template-file <path>", "a Jinja chat template to use over the GGUF's own (for a template that is broken or has no tools)")
        .option("--no-warmup", "skip the warm-up before ready")
        .option("--drain-timeout <seconds>", "on SIGTERM, how long requests in flight may finish", int(0), 30)
        .option("--liveness-timeout <seconds>", "with work waiting, how long without a finished step before /health and /ready turn 503 and requests are refused (a stuck decode; default 120)", int(1))
        .option("--body-limit <bytes>", "largest request body (default 16 MiB)", int(1))
        .option("--headers-timeout <seconds>", "a request's headers must arrive within this, else 408 (default 15; 0: no limit)", seconds)
        .option("--body-timeout <seconds>", "a request body must arrive within this plus 1 s per --body-min-rate bytes sent, else 408; responses and streams are never cut (default 30; 0: no limit)", seconds)
        .option("--body-min-rate <bytes>", "bytes a second that extend a body's time past --body-timeout (default 4096)", int(1))
        .addOption(new Option("--cors-origin <origin>", "let browsers on ORIGIN call the API (CORS): repeatable or a comma list; '*' for any (default: no CORS headers)").default([]).argParser(collectOrigins))
        .addOption(new Option("--log-level <level>", "log level").choices(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"))
        .action((flags: ServeFlags) => serve(flags));
    p.command("devices")
        .description("list the GPUs (and CPU) llama.cpp sees, with free memory")
        .option("--json", "print JSON")
        .action((flags: { json?: boolean }) => devices(flags));
    p.command("make-model")
        .description("write a random-weight GGUF of a real architecture and tokenizer, for tests and benchmarks (no download)")
        .requiredOption("--out <path>", "where to write the GGUF")
        .option("--vocab <name|path>", "vocab-only GGUF, or a name from llama.cpp's models/ (qwen2, llama-spm, deepseek-coder, ...)", "qwen2")
        .addOption(new Option("--arch <arch>", "architecture").choices(["qwen2", "llama"]).default("qwen2"))
        .option("--embd <n>", "embedding size", int(1), 256)
        .option("--layers <n>", "layers", int(1), 4)
        .option("--heads <n>", "attention heads", int(1), 4)
        .option("--kv-heads <n>", "KV heads", int(1), 2)
        .option("--ff <n>", "feed-forward size", int(1), 512)
        .option("--ctx <n>", "trained context length", int(1), 8192)
        .addOption(new Option("--type <type>", "weight type").choices(["f32", "f16", "bf16", "q8_0", "q4_0"]).default("f16"))
        .option("--seed <n>", "random seed", int(0), 42)
        .action((flags: Parameters<typeof makeModel>[0]) => makeModel(flags));
    p.command("bench")
        .description("side-by-side serving benchmark: batchwise against llama.cpp's llama-server on this machine, with the llama-batched-bench bound")
        .option("--model <shape|path>", `a GGUF file, or a random-weight shape: ${Object.keys(SHAPES).join(", ")}`, "7b")
        .option("--gpu-layers <n>", "layers on the GPU, both servers", int(-1), -1)
        .option("--ctx-size <tokens>", "KV cache tokens, both servers (llama-server: ctx-size / parallel per slot)", int(1), 262144)
        .option("--parallel <n>", "sequences at once, both servers", int(1), 64)
        .addOption(new Option("--flash-attn <mode>", "flash attention, both servers").choices(["on", "off", "auto"]).default("on"))
        .addOption(new Option("--llama-kv <layout>", "llama-server's KV: per-slot as it comes, or one unified pool (-kvu); head-of-line and long always run with -kvu")
            .choices(["slots", "unified"]).default("slots"))
        .option("--concurrency <list>", "concurrencies of the throughput workload (default 1,16,64)", numList)
        .option("--waves <n>", "throughput requests per concurrency c: n x c (default 8 at 1, 3 at 16 and 64); more for a steady state", Number)
        .option("--ide-rates <list>", "arrival rates of the ide workload, requests/s (default 4,8,16,24,32; --quick 2,4)", numList)
        .option("--ide-duration <seconds>", "seconds of arrivals per ide rate, the first sixth not measured (default 30; --quick 4)", Number)
        .addOption(new Option("--split-mode <mode>", "multi-GPU split, both servers and the bound (default: each one's, layer)").choices(["none", "layer", "row", "tensor"]))
        .option("--main-gpu <n>", "with --split-mode none: the GPU", int(0))
        .option("--servers <list>", "which servers, in order", "batchwise,llama-server,llama-server -bs")
        .option("--workloads <list>", `which workloads: ${WORKLOADS.join(", ")}`, WORKLOADS.join(","))
        .option("--llama-bin <dir>", "folder with llama-server and llama-batched-bench (default: build them from the pinned source)")
        .option("--quick", "small counts and prompts (a smoke run, e.g. on the CPU)")
        .option("--no-bound", "leave out the llama-batched-bench bound")
        .option("--batchwise-args <args>", "extra 'batchwise serve' options, for an experiment (e.g. \"--no-prefix-cache\")")
        .option("--out <dir>", "where the report goes", "bench-results")
        .action((flags: BenchFlags) => bench(flags));
    return p;
}

program().parseAsync(process.argv).catch((e: unknown) => {
    process.stderr.write(`batchwise: ${(e as Error).message}\n`);
    process.exit(1);
});
