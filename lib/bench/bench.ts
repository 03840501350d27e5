// The side-by-side serving benchmark: batchwise's server and llama.cpp's llama-server (as it comes, and
// with backend sampling, -bs), one after the other on the same GPU, model file, llama.cpp source and
// matched settings, driven by the same load generator; llama-batched-bench gives the raw-engine bound.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer as netServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { cacheDir, cachedRandomModel, systemInfo, LlamaModel, type RandomModelOptions } from "../index.js";
import {
    closedLoop, knee, measuredWindow, openLoop, openLoopStats, percentile, poissonSchedule, randomTokens, streamOne, summarize,
    type BenchRequest, type OpenLoopStats, type RequestRecord, type RunStats,
} from "./loadgen.js";
import { ideKnees, markdown, svg, type BoundResult, type CaseResult, type LongStats, type Report } from "./report.js";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Random-weight models of real shapes (Qwen2.5 sizes), with the real Qwen2 tokenizer. */
export const SHAPES: Record<string, Omit<RandomModelOptions, "out">> = {
    tiny: { vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 128, layers: 4, heads: 4, kvHeads: 2, feedForwardSize: 256, contextLength: 32768, type: "f16", seed: 21 },
    "1.5b": { vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 1536, layers: 28, heads: 12, kvHeads: 2, feedForwardSize: 8960, contextLength: 131072, type: "f16", seed: 22 },
    "7b": { vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 3584, layers: 28, heads: 28, kvHeads: 4, feedForwardSize: 18944, contextLength: 131072, type: "f16", seed: 23 },
    "32b": { vocabFrom: "qwen2", architecture: "qwen2", embeddingSize: 5120, layers: 64, heads: 40, kvHeads: 8, feedForwardSize: 27648, contextLength: 131072, type: "f16", seed: 24 },
};

export type ServerKind = "batchwise" | "llama-server" | "llama-server -bs";
export type WorkloadName = "throughput" | "prefix" | "hol" | "cold" | "ide" | "long";
export const WORKLOADS: readonly WorkloadName[] = ["cold", "throughput", "prefix", "hol", "ide", "long"];

/** The ide workload's latency budget: a rate meets it when TTFT p95 is under this. */
export const IDE_BUDGET_MS = 500;
/** The long workload's prompt, as a share of the context (the longest sequence a request may have). */
export const LONG_SHARE = 0.9;

export interface BenchOptions {
    /** A GGUF file, or a shape name from SHAPES (made once, cached). Default "7b". */
    model: string;
    gpuLayers: number;
    /** KV cache tokens on both servers (llama-server with per-slot KV: contextSize / parallel per slot). */
    contextSize: number;
    parallel: number;
    /**
     * llama-server's KV layout: "slots" (as it comes with -np: contextSize / parallel tokens per slot,
     * each attended alone) or "unified" (-kvu, one pool). The head-of-line workload's 32K prompts and the long
     * workload's prompt do not fit a slot, so with "slots" llama-server is restarted with -kvu for those two.
     */
    llamaKv: "slots" | "unified";
    /** Concurrencies of the throughput workload (default 1, 16, 64). */
    concurrency?: number[];
    /**
     * Requests of the throughput workload per concurrency c: waves x c (default 8 at 1, 3 at 16 and 64, 3 at any
     * other). More waves make the ramp-up and the last wave a smaller share of the run: a steady state.
     */
    waves?: number;
    /** Arrival rates of the ide workload, requests a second (default 4, 8, 16, 24, 32; quick 2, 4). */
    ideRates?: number[];
    /** Seconds of arrivals per ide rate (default 30; quick 4); the first sixth is not measured. */
    ideDurationS?: number;
    /** Multi-GPU: how both servers (and the bound) spread the model; unset: each one's default (layer). */
    splitMode?: "none" | "layer" | "row" | "tensor";
    /** With splitMode "none": the GPU. */
    mainGpu?: number;
    flashAttention: "on" | "off" | "auto";
    servers: ServerKind[];
    workloads: WorkloadName[];
    /** Folder of llama-server and llama-batched-bench; default: build them (scripts/build-llama-tools.mjs). */
    llamaBin?: string;
    /** Smaller counts and prompts, for a CPU smoke run. */
    quick: boolean;
    /** Leave out the llama-batched-bench bound (a re-run of servers only). */
    skipBound?: boolean;
    /** Extra arguments for `batchwise serve` (an experiment, e.g. --no-prefix-cache); reported with the run. */
    batchwiseArgs?: string[];
    out: string;
    log: (line: string) => void;
}

/** A GGUF path, or one of SHAPES as a random-weight model (made once, then cached); shared with scripts/bench-kv.mjs. */
export async function resolveModel(model: string, log: (line: string) => void): Promise<{ path: string; shape: string }> {
    const shape = SHAPES[model];
    if (!shape) return { path: model, shape: model.split("/").pop() ?? model };
    const t0 = performance.now();
    log(`the ${model} random-weight model: made once, then kept in ${cacheDir()}/models`);
    const { path, made } = await cachedRandomModel(`bench-qwen2-${model}`, shape);
    if (made) log(`  made ${path} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    return { path, shape: `Qwen2.5-${model.toUpperCase()} shape (qwen2, embedding ${shape.embeddingSize}, ${shape.layers} layers, ${shape.heads}/${shape.kvHeads} heads, f16)` };
}

function freePort(): Promise<number> {
    return new Promise((resolve, reject) => {
        const s = netServer();
        s.listen(0, "127.0.0.1", () => {
            const port = (s.address() as { port: number }).port;
            s.close(() => resolve(port));
        });
        s.on("error", reject);
    });
}

interface Running {
    proc: ChildProcess;
    url: string;
    readyMs: number;
    output: () => string;
}

/** The multi-GPU options, under each program's names for them (unset: each program's default). */
function splitArgs(o: BenchOptions, splitFlag: string, mainGpuFlag: string): string[] {
    return [...(o.splitMode ? [splitFlag, o.splitMode] : []), ...(o.mainGpu !== undefined ? [mainGpuFlag, String(o.mainGpu)] : [])];
}

/** A server's command line (the port left out), as the report records it. */
function serverArgs(kind: ServerKind, o: BenchOptions, model: string, unified: boolean): string[] {
    return kind === "batchwise"
        ? ["serve", "--model", `bench=${model}`, "--gpu-layers", String(o.gpuLayers), ...splitArgs(o, "--split-mode", "--main-gpu"),
            "--ctx-size", String(o.contextSize), "--max-running", String(o.parallel), "--flash-attn", o.flashAttention, "--batch-tokens", "2048", "--ubatch", "512",
            "--max-queued", "100000", "--log-level", "warn", ...(o.batchwiseArgs ?? [])]
        : ["-m", model, "-ngl", String(o.gpuLayers), ...splitArgs(o, "-sm", "-mg"), "-c", String(o.contextSize), "-np", String(o.parallel),
            "-fa", o.flashAttention, ...(unified ? ["-kvu"] : []), "-b", "2048", "-ub", "512", "--no-webui", ...(kind === "llama-server -bs" ? ["-bs"] : [])];
}

async function startServer(kind: ServerKind, args: string[], bin: string): Promise<Running> {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const t0 = performance.now();
    args = kind === "batchwise"
        ? [join(packageRoot, "dist", "lib", "cli", "main.js"), ...args, "--port", String(port)]
        : [...args, "--host", "127.0.0.1", "--port", String(port)];
    const proc = spawn(kind === "batchwise" ? process.execPath : join(bin, "llama-server"), args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const keep = (d: Buffer) => {
        out += d.toString();
        if (out.length > 200_000) out = out.slice(-100_000);
    };
    proc.stdout!.on("data", keep);
    proc.stderr!.on("data", keep);
    let failed: Error | null = null; // e.g. no such binary (a wrong --llama-bin): unhandled, it would crash the run
    proc.on("error", (e) => (failed = e));
    const probe = kind === "batchwise" ? "/ready" : "/health";
    for (;;) {
        if (failed) throw new Error(`${kind} could not be started: ${(failed as Error).message}`);
        if (proc.exitCode !== null) throw new Error(`${kind} exited with ${proc.exitCode} before it was ready:\n${out.slice(-3000)}`);
        try {
            const r = await fetch(url + probe);
            await r.text();
            if (r.status === 200) break;
        } catch {
            // not listening yet
        }
        if (performance.now() - t0 > 900_000) {
            proc.kill("SIGKILL");
            throw new Error(`${kind} was not ready after 15 minutes:\n${out.slice(-3000)}`);
        }
        await new Promise((r) => setTimeout(r, 25));
    }
    return { proc, url, readyMs: performance.now() - t0, output: () => out };
}

async function stopServer(s: Running): Promise<void> {
    if (s.proc.exitCode !== null) return;
    const exited = new Promise<void>((r) => s.proc.once("exit", () => r()));
    s.proc.kill("SIGTERM");
    const t = setTimeout(() => s.proc.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(t);
}

interface Sizes {
    in: number; out: number; c1: number; c16: number; c64: number;
    prefix: number; unique: number; prefixN: number;
    shortIn: number; shortOut: number; longIn: number; longs: number; idleShorts: number;
    steady: number;
    /** ide: users, each with a file prefix of its own (the same in all its requests), fresh tokens and output tokens a request. */
    ideUsers: number; idePrefix: number; ideFresh: number; ideOut: number;
    /** ide: rates (req/s), seconds of arrivals a rate, of which the first ideWarmupS are not measured. */
    ideRates: number[]; ideDurationS: number; ideWarmupS: number;
    /** ide: the safety cap on requests in flight; a first token awaited this long stops a rate (diverged); the drain after it. */
    ideMaxInFlight: number; ideDivergeS: number; ideDrainS: number;
    /** ide: the pause between rates (five times this after a rate that left requests unfinished, so the server can end them). */
    idePauseS: number;
    /** long: runs (the first a warm-up), output tokens; longContext is set from the model and ctx-size. */
    longRuns: number; longOut: number; longContext: number;
}

function sizes(quick: boolean, o: Pick<BenchOptions, "ideRates" | "ideDurationS"> = {}): Sizes {
    const z = quick
        ? {
            in: 128, out: 16, c1: 3, c16: 16, c64: 32, prefix: 256, unique: 32, prefixN: 16, shortIn: 64, shortOut: 8, longIn: 1024, longs: 2, idleShorts: 16, steady: 4,
            ideUsers: 4, idePrefix: 128, ideFresh: 32, ideOut: 8, ideRates: [2, 4], ideDurationS: 4, ideMaxInFlight: 64, ideDivergeS: 10, ideDrainS: 10, idePauseS: 0.2,
            longRuns: 3, longOut: 8,
        }
        : {
            in: 512, out: 128, c1: 8, c16: 48, c64: 192, prefix: 2000, unique: 100, prefixN: 48, shortIn: 128, shortOut: 16, longIn: 32768, longs: 4, idleShorts: 128, steady: 10,
            ideUsers: 16, idePrefix: 1536, ideFresh: 512, ideOut: 48, ideRates: [4, 8, 16, 24, 32], ideDurationS: 30, ideMaxInFlight: 1024, ideDivergeS: 10, ideDrainS: 30, idePauseS: 1,
            longRuns: 3, longOut: 32,
        };
    const ideRates = [...(o.ideRates ?? z.ideRates)].sort((a, b) => a - b);
    const ideDurationS = o.ideDurationS ?? z.ideDurationS;
    return { ...z, ideRates, ideDurationS, ideWarmupS: ideDurationS / 6, longContext: 0 };
}

const req = (n: number, seed: number, out: number): BenchRequest => ({ prompt: randomTokens(n, seed), maxTokens: out });

/**
 * The IDE workload: open loop at each rate, Poisson arrivals, each request from a user drawn at random:
 * that user's file prefix (the same in all its requests, at every rate) + fresh tokens.
 */
async function ideRate(url: string, z: Sizes, rate: number, rateIndex: number) {
    const prefixes = Array.from({ length: z.ideUsers }, (_, u) => randomTokens(z.idePrefix, 40_000 + u));
    const schedule = poissonSchedule(rate, z.ideDurationS, z.ideUsers, 19_000 + rateIndex);
    const arrivals = schedule.map((a, i) => ({
        atMs: a.atMs, request: { prompt: [...prefixes[a.user], ...randomTokens(z.ideFresh, 1_000_000 + 100_000 * rateIndex + i)], maxTokens: z.ideOut },
    }));
    const r = await openLoop(url, undefined, { arrivals, durationMs: z.ideDurationS * 1000, maxInFlight: z.ideMaxInFlight, divergeMs: z.ideDivergeS * 1000, drainMs: z.ideDrainS * 1000 });
    const stats = openLoopStats(r, { targetRps: rate, durationS: z.ideDurationS, warmupS: z.ideWarmupS, budgetMs: IDE_BUDGET_MS, maxInFlight: z.ideMaxInFlight, scheduled: schedule.length });
    // the case's RunStats: the measured requests' TTFT (as in stats) and ITL, and the window's completions
    const run = summarize(measuredWindow(r, z.ideWarmupS).records, stats.windowS * 1000);
    run.errors = stats.failed;
    run.ttftMs = { p50: stats.ttftMs.p50, p99: stats.ttftMs.p99, mean: stats.ttftMs.mean };
    run.outputTokensPerS = stats.outputTokensPerS;
    run.outputTokens = Math.round(stats.outputTokensPerS * stats.windowS);
    if (stats.firstError) run.firstError = stats.firstError;
    else delete run.firstError;
    return { stats, run, wallS: r.wallMs / 1000 };
}

/** The long workload: one prompt at LONG_SHARE of the context, longRuns times (a fresh prompt each; the first a warm-up). */
async function longPrompt(url: string, z: Sizes): Promise<{ stats: LongStats; run: RunStats }> {
    const promptTokens = Math.floor(LONG_SHARE * z.longContext);
    const t0 = performance.now();
    const records: RequestRecord[] = [];
    for (let i = 0; i < z.longRuns; i++) records.push(await streamOne(url, undefined, req(promptTokens, 60_000 + i, z.longOut), t0));
    const measured = records.slice(1);
    const ttft = measured.filter((r) => r.ok).map((r) => r.ttftMs);
    const mean = ttft.length === measured.length && ttft.length > 0 ? ttft.reduce((a, b) => a + b, 0) / ttft.length : NaN;
    const stats: LongStats = {
        contextTokens: z.longContext, promptTokens, outputTokens: z.longOut,
        warmupTtftMs: records[0].ok ? records[0].ttftMs : NaN, ttftMs: ttft, ttftMsMean: mean, prefillTokensPerS: promptTokens / (mean / 1000),
        failed: records.filter((r) => !r.ok).length,
    };
    const bad = records.find((r) => !r.ok);
    if (bad?.error) stats.firstError = bad.error;
    return { stats, run: summarize(measured, performance.now() - t0) };
}

/** Short requests at concurrency 8 while long prompts arrive one a second: TTFT of the short ones. */
async function headOfLine(url: string, z: Sizes, seed: number, mark: () => Promise<void>): Promise<{ stats: RunStats; extra: Record<string, number> }> {
    const idle = await closedLoop(url, undefined, Array.from({ length: z.idleShorts }, (_, i) => req(z.shortIn, seed + i, z.shortOut)), 8);
    await mark();
    const t0 = performance.now();
    let longsLeft = z.longs;
    const longs = Array.from({ length: z.longs }, (_, i) =>
        new Promise<RequestRecord>((resolve) => setTimeout(() => resolve(streamOne(url, undefined, req(z.longIn, seed + 1000 + i, 16), t0)), i * 1000)).finally(() => longsLeft--));
    const shorts: RequestRecord[] = [];
    let k = 0;
    const worker = async () => {
        while (longsLeft > 0) shorts.push(await streamOne(url, undefined, req(z.shortIn, seed + 2000 + k++, z.shortOut), t0));
    };
    const [longRecords] = await Promise.all([Promise.all(longs), Promise.all(Array.from({ length: 8 }, worker))]);
    const wall = performance.now() - t0;
    const stats = summarize(shorts, wall);
    stats.errors += longRecords.filter((r) => !r.ok).length;
    return {
        stats,
        extra: {
            "idle short TTFT p50 ms": idle.stats.ttftMs.p50, "idle short TTFT p99 ms": idle.stats.ttftMs.p99,
            "short TTFT p99 / idle p99": stats.ttftMs.p99 / idle.stats.ttftMs.p99,
            "long TTFT p50 ms": percentile(longRecords.filter((r) => r.ok).map((r) => r.ttftMs), 50),
            "short requests during the long prompts": shorts.length,
        },
    };
}

const ENGINE_COUNTERS = {
    steps: "batchwise_engine_steps_total", stepS: "batchwise_engine_step_seconds_total", decodeS: "batchwise_engine_decode_seconds_total",
    generated: "vllm:generation_tokens_total", computed: "batchwise_prompt_tokens_computed_total",
    plans: "batchwise_engine_allocation_plans_total",
} as const;
type EngineCounters = Record<keyof typeof ENGINE_COUNTERS, number>;

/** batchwise's engine counters, read from /metrics (null when a scrape fails: the figures are left out, not guessed). */
export async function engineCounters(url: string): Promise<EngineCounters | null> {
    try {
        const lines = (await (await fetch(url + "/metrics")).text()).split("\n");
        const read = (name: string) => {
            const line = lines.find((l) => l.startsWith(name + "{") || l.startsWith(name + " "));
            return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : NaN;
        };
        const c = Object.fromEntries(Object.entries(ENGINE_COUNTERS).map(([k, name]) => [k, read(name)])) as EngineCounters;
        return Object.values(c).every(Number.isFinite) ? c : null;
    } catch {
        return null;
    }
}

/** Where batchwise's time went during one case: how busy the engine loop was, the model's share, tokens per step. */
export function engineFigures(a: EngineCounters | null, b: EngineCounters | null, wallS: number): Record<string, number> {
    if (!a || !b || b.steps <= a.steps) return {};
    const steps = b.steps - a.steps, stepS = b.stepS - a.stepS, decodeS = b.decodeS - a.decodeS;
    return {
        "engine steps": steps,
        "engine busy %": (100 * stepS) / wallS,
        "native decode % of steps": (100 * decodeS) / stepS,
        "ms per step": (1000 * stepS) / steps,
        "tokens per step": (b.generated - a.generated + b.computed - a.computed) / steps,
        "allocation plans per step": (b.plans - a.plans) / steps,
    };
}

interface Phase {
    /** llama-server with -kvu */
    unified: boolean;
    workloads: WorkloadName[];
}

/** Workloads whose prompts do not fit one of llama-server's per-slot KV slots (contextSize / parallel). */
const NEED_UNIFIED: readonly WorkloadName[] = ["hol", "long"];

/**
 * One server process per phase: llama-server with per-slot KV cannot hold the head-of-line workload's 32K
 * prompts or the long workload's prompt, so with "slots" it is restarted with -kvu for those two.
 */
function phases(kind: ServerKind, o: BenchOptions): Phase[] {
    if (kind === "batchwise" || o.llamaKv === "unified") return [{ unified: kind !== "batchwise", workloads: o.workloads }];
    return [
        { unified: false, workloads: o.workloads.filter((w) => !NEED_UNIFIED.includes(w)) },
        { unified: true, workloads: o.workloads.filter((w) => NEED_UNIFIED.includes(w)) },
    ].filter((p) => p.workloads.length > 0);
}

async function runServer(kind: ServerKind, o: BenchOptions, model: string, bin: string, z: Sizes, report: Report, save: () => void): Promise<void> {
    for (const phase of phases(kind, o)) {
        const args = serverArgs(kind, o, model, phase.unified);
        report.servers.push({ server: kind, workloads: phase.workloads, args });
        o.log(`${kind}: starting (${phase.workloads.join(", ")}): ${args.join(" ")}`);
        const s = await startServer(kind, args, bin);
        o.log(`${kind}: ready after ${(s.readyMs / 1000).toFixed(1)} s`);
        try {
            await runWorkloads(kind, o, z, s, phase.workloads, report.results, save);
        } finally {
            await stopServer(s);
        }
    }
}

async function runWorkloads(kind: ServerKind, o: BenchOptions, z: Sizes, s: Running, workloads: WorkloadName[], results: CaseResult[], save: () => void): Promise<void> {
    let before: EngineCounters | null = null;
    const mark = async () => {
        if (kind === "batchwise") before = await engineCounters(s.url);
    };
    /** Records one case; `own` holds the ide or long figures and the line logged for them, `wallS` the time the engine figures cover. */
    const add = async (workload: WorkloadName, label: string, stats: RunStats, extra?: Record<string, number>,
        own?: { ide?: CaseResult["ide"]; long?: CaseResult["long"]; line: string; wallS: number }) => {
        const figures = kind === "batchwise" ? engineFigures(before, await engineCounters(s.url), own?.wallS ?? stats.wallS) : {};
        const all = { ...extra, ...figures };
        results.push({
            workload, label, server: kind, stats, ...(Object.keys(all).length > 0 && { extra: all }),
            ...(own?.ide && { ide: own.ide }), ...(own?.long && { long: own.long }),
        });
        save(); // after each case: a run cut short keeps what it measured
        o.log(`  ${label}: ` + (own?.line ?? `${stats.outputTokensPerS.toFixed(0)} out tok/s, TTFT p50 ${stats.ttftMs.p50.toFixed(0)} ms p99 ${stats.ttftMs.p99.toFixed(0)} ms, ` +
            `ITL p50 ${stats.itlMs.p50.toFixed(1)} ms, errors ${stats.errors}${stats.firstError ? ` (${stats.firstError})` : ""}`) +
            (Object.keys(figures).length > 0 ? `; ${Object.entries(figures).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")}` : ""));
    };
    if (workloads.includes("cold")) {
        // the client's connection is opened first: only the server's cold start is timed
        await (await fetch(`${s.url}/health`)).text();
        const first = await closedLoop(s.url, undefined, [req(z.in, 1, 16)], 1);
        const steady = await closedLoop(s.url, undefined, Array.from({ length: z.steady }, (_, i) => req(z.in, 10 + i, 16)), 1);
        await add("cold", `cold start (${z.in} in / 16 out)`, first.stats, {
            "start to ready s": s.readyMs / 1000, "first TTFT ms": first.stats.ttftMs.p50, "steady TTFT p50 ms": steady.stats.ttftMs.p50,
            "first / steady": first.stats.ttftMs.p50 / steady.stats.ttftMs.p50,
        });
    }
    if (workloads.includes("throughput")) {
        const counts: Record<number, number> = { 1: z.c1, 16: z.c16, 64: z.c64 };
        for (const c of o.concurrency ?? [1, 16, 64]) {
            const n = o.waves !== undefined ? o.waves * c : counts[c] ?? 3 * c;
            await mark();
            const r = await closedLoop(s.url, undefined, Array.from({ length: n }, (_, i) => req(z.in, 100 * c + i, z.out)), c);
            await add("throughput", `${z.in} in / ${z.out} out, concurrency ${c}`, r.stats); // the bound's label (the command in the report says --waves)
        }
    }
    if (workloads.includes("prefix")) {
        const common = randomTokens(z.prefix, 777);
        const reqs = Array.from({ length: z.prefixN }, (_, i) => ({ prompt: [...common, ...randomTokens(z.unique, 5000 + i)], maxTokens: z.out }));
        await mark();
        const r = await closedLoop(s.url, undefined, reqs, 16);
        await add("prefix", `shared prefix ${z.prefix} + ${z.unique} in / ${z.out} out, concurrency 16`, r.stats);
    }
    if (workloads.includes("hol")) {
        const r = await headOfLine(s.url, z, 9000, mark);
        await add("hol", `head-of-line: ${z.shortIn}-token requests at concurrency 8, ${z.longs} prompts of ${z.longIn} arriving`, r.stats, r.extra);
    }
    if (workloads.includes("ide")) {
        const rates: OpenLoopStats[] = [];
        for (const [i, rate] of z.ideRates.entries()) {
            await mark();
            const r = await ideRate(s.url, z, rate, i);
            rates.push(r.stats);
            const x = r.stats;
            await add("ide", `ide: ${z.ideUsers} users x ${z.idePrefix} prefix + ${z.ideFresh} fresh in / ${z.ideOut} out, ${rate} req/s`, r.run, undefined, {
                ide: x, wallS: r.wallS,
                line: `achieved ${x.achievedRps.toFixed(1)} req/s (offered ${x.offeredRps.toFixed(1)}), ${x.outputTokensPerS.toFixed(0)} out tok/s, ` +
                    `TTFT p50 ${x.ttftMs.p50.toFixed(0)} p95 ${x.ttftMs.p95.toFixed(0)} p99 ${x.ttftMs.p99.toFixed(0)} ms, ` +
                    `${(100 * x.withinBudget).toFixed(0)}% within ${x.budgetMs} ms, ${x.measured} measured, failed ${x.failed}, unfinished ${x.unfinished}, ` +
                    `peak ${x.peakInFlight} in flight${x.stopReason ? `, stopped at ${x.stoppedEarlyS!.toFixed(1)} s (${x.stopReason})` : ""}` +
                    `${x.firstError ? ` (${x.firstError})` : ""}`,
            });
            // requests aborted at the end of a drain may still be winding down on the server
            await new Promise((r) => setTimeout(r, 1000 * z.idePauseS * (x.unfinished > 0 ? 5 : 1)));
        }
        const k = knee(rates);
        o.log(`  ide knee (highest rate with TTFT p95 under ${IDE_BUDGET_MS} ms): ${k === null ? `below ${z.ideRates[0]}` : k} req/s`);
    }
    if (workloads.includes("long")) {
        await mark();
        const r = await longPrompt(s.url, z);
        const x = r.stats;
        await add("long", `long: ${x.promptTokens}-token prompt (${100 * LONG_SHARE}% of ${x.contextTokens}) / ${z.longOut} out`, r.run, undefined, {
            long: x, wallS: r.run.wallS,
            line: `TTFT ${x.ttftMsMean.toFixed(0)} ms (runs ${x.ttftMs.map((t) => t.toFixed(0)).join(", ")}; warm-up ${x.warmupTtftMs.toFixed(0)}), ` +
                `prefill ${x.prefillTokensPerS.toFixed(0)} tok/s, failed ${x.failed}${x.firstError ? ` (${x.firstError})` : ""}`,
        });
    }
}

function batchedBenchBounds(o: BenchOptions, model: string, bin: string, z: Sizes): BoundResult[] {
    const run = (extra: string[]) => {
        const out = execFileSync(join(bin, "llama-batched-bench"), [
            "-m", model, "-ngl", String(o.gpuLayers), ...splitArgs(o, "-sm", "-mg"),
            "-fa", o.flashAttention, "-c", String(o.contextSize), "-b", "2048", "-ub", "512",
            "--output-format", "jsonl", ...extra,
        ], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 * 2 ** 20 });
        return out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, number>);
    };
    const bounds: BoundResult[] = [];
    if (o.workloads.includes("throughput")) {
        for (const row of run(["-npp", String(z.in), "-ntg", String(z.out), "-npl", (o.concurrency ?? [1, 16, 64]).join(",")])) {
            bounds.push({ label: `${z.in} in / ${z.out} out, concurrency ${row.pl}`, outputTokensPerS: (row.pl * row.tg) / row.t, raw: row });
        }
    }
    if (o.workloads.includes("prefix")) {
        // the shared part computed once, as a prefix cache would: -pps with the whole prompt shared (a bound)
        for (const row of run(["-pps", "-npp", String(z.prefix + z.unique), "-ntg", String(z.out), "-npl", "16"])) {
            bounds.push({ label: `shared prefix ${z.prefix} + ${z.unique} in / ${z.out} out, concurrency 16`, outputTokensPerS: (row.pl * row.tg) / row.t, raw: row });
        }
    }
    return bounds;
}

/** The first GPU's name and driver, and how many GPUs there are (one nvidia-smi line each). */
function gpuInfo(): { device: string; driver?: string; gpus: number } {
    try {
        const lines = execFileSync("nvidia-smi", ["--query-gpu=name,driver_version", "--format=csv,noheader"], { encoding: "utf8" }).trim().split("\n").filter(Boolean);
        const [name, driver] = lines[0].split(",").map((x) => x.trim());
        return { device: name, driver, gpus: lines.length };
    } catch {
        return { device: "CPU (no nvidia-smi)", gpus: 0 };
    }
}

export async function runBench(o: BenchOptions, command: string): Promise<Report> {
    const z = sizes(o.quick, o);
    const { path, shape } = await resolveModel(o.model, o.log);
    let bin = o.llamaBin;
    const needLlama = o.servers.some((s) => s !== "batchwise") || (!o.skipBound && o.workloads.some((w) => w === "throughput" || w === "prefix"));
    if (!bin && needLlama) {
        o.log("building llama-server and llama-batched-bench from the pinned llama.cpp source");
        bin = execFileSync(process.execPath, [join(packageRoot, "scripts", "build-llama-tools.mjs")], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim().split("\n").at(-1)!;
    }
    const meta = await LlamaModel.load(path, { vocabOnly: true }).then((m) => {
        const md = m.metadata;
        m.dispose();
        return md;
    });
    // the longest sequence one request may have, the same on both servers: the KV pool or the trained context, the smaller
    z.longContext = Math.min(o.contextSize, meta.trainedContext > 0 ? meta.trainedContext : o.contextSize);
    const { gpus, ...gpu } = gpuInfo();
    const report: Report = {
        date: new Date().toISOString().slice(0, 10), command, ...gpu, llamaTag: systemInfo().llamaTag,
        model: { path, shape, parameters: meta.parameters, sizeBytes: meta.sizeBytes },
        settings: {
            gpuLayers: o.gpuLayers, contextSize: o.contextSize, parallel: o.parallel, flashAttention: o.flashAttention, llamaKv: o.llamaKv,
            splitMode: o.splitMode ?? "default", mainGpu: o.mainGpu, gpus, quick: o.quick, batchwiseArgs: o.batchwiseArgs ?? [], sizes: z,
            ideBudgetMs: IDE_BUDGET_MS, longShare: LONG_SHARE,
        },
        servers: [], results: [], bounds: [],
    };
    mkdirSync(o.out, { recursive: true });
    // written after each case, so a run cut short keeps what it measured
    const save = () => {
        if (report.results.some((c) => c.ide)) report.ideKnees = ideKnees(report.results);
        writeFileSync(join(o.out, "report.json"), JSON.stringify(report, null, 2));
        writeFileSync(join(o.out, "report.md"), markdown(report));
        writeFileSync(join(o.out, "chart.svg"), svg(report));
    };
    if (bin && !o.skipBound && (o.workloads.includes("throughput") || o.workloads.includes("prefix"))) {
        o.log("llama-batched-bench: the raw-engine bound");
        report.bounds = batchedBenchBounds(o, path, bin, z);
        for (const b of report.bounds) o.log(`  ${b.label}: ${b.outputTokensPerS.toFixed(0)} out tok/s`);
        save();
    }
    for (const kind of o.servers) {
        try {
            await runServer(kind, o, path, bin ?? "", z, report, save);
        } catch (e) {
            // a server that does not start or dies is a finding: recorded, and the other servers still run
            const error = (e as Error).message;
            (report.failures ??= []).push({ server: kind, error });
            o.log(`${kind}: failed: ${error.split("\n").slice(0, 1).join("")}`);
        }
        save();
    }
    return report;
}
