// The soak: starts `batchwise serve` (the demo model unless --model), drives it with a mixed closed-loop
// load for --minutes (chat and completions, streamed and not, n 1-4, logprobs, JSON-object and JSON-schema
// grammars, stop strings, seeds, a share of clients that go away mid-stream or before the response, and a
// KV pool small enough to run full and preempt), samples the server's RSS and KV metrics, and fails on
// any 5xx, stream error event, unexpected 4xx, dropped connection, hang, invalid grammar output, KV block
// still used once the load has ended, or RSS growth above a bound after warm-up.
//
//   npm run soak -- --minutes 60 --concurrency 48
//   node dist/lib/bench/soak.js --minutes 2 --concurrency 8 --ctx-size 2048 --out soak.json
//
// Exit status 0 when every check passed, 1 when one failed, 2 for bad arguments. The report (JSON) goes
// to --out; a summary to stderr.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { percentile, seededRandom } from "./loadgen.js";
import { spawnSupervised, type Supervised } from "./supervise.js";

export interface SoakOptions {
    /** Minutes of load. */
    minutes: number;
    /** Clients, each with one request in flight at a time. Default 48. */
    concurrency: number;
    /** Port for the server; 0 (default) lets it pick one. */
    port: number;
    /** A GGUF to serve; default the demo model. */
    model?: string;
    /** KV cache tokens of the server: small, so that the pool runs full and requests get preempted. Default 4096. */
    ctxSize: number;
    /** CPU threads of the server (default: the server's own choice). */
    threads?: number;
    /** Extra `batchwise serve` arguments. */
    serverArgs: string[];
    /** Share of requests whose client goes away (mid-stream, or before the response). Default 0.2. */
    abortRate: number;
    /** The load ignores the first part of the run for the RSS slope: default 10 minutes for runs of 30 minutes or more, else a third. */
    warmupMinutes?: number;
    /** Bound on the RSS slope after warm-up, MB/min. Default 0.5. */
    maxRssSlope: number;
    /** The slope is judged only over a window at least this long (minutes); shorter runs report it without failing on it. Default 5. */
    minSlopeWindowMinutes: number;
    /** Fails on RSS growth over the window after warm-up beyond this (MB), whatever the window's length. Default 256. */
    maxRssGrowthMb: number;
    /** Nothing received for this long (no answer, or no next chunk of a stream) is a hang. Default 300. */
    hangSeconds: number;
    /** How often RSS and /metrics are sampled. Default 5. */
    sampleSeconds: number;
    /** Seed of the load's choices. Default: random. */
    seed: number;
    /** Where the JSON report goes. */
    out: string;
    log: (line: string) => void;
}

interface Sample {
    /** Seconds since the load started. */
    t: number;
    phase: "load" | "after";
    rssMb: number | null;
    kvBlocks: number | null;
    kvUsed: number | null;
    kvCached: number | null;
    kvUsage: number | null;
    running: number | null;
    waiting: number | null;
    preemptions: number | null;
    disconnects: number | null;
    heapMb: number | null;
    /** The server's malloc heap: allocated (in use) and taken from the system (held), from batchwise_heap_bytes. */
    mallocInUseMb: number | null;
    mallocHeldMb: number | null;
    /** Tokens generated per second over the server's last 10 s, and engine steps so far. */
    genTps: number | null;
    steps: number | null;
}

interface Outcome {
    kind: string;
    result: string;
    ms: number;
    /** A failure's detail (status and body, the error event, the broken JSON). */
    detail?: string;
}

export interface SoakReport {
    ok: boolean;
    failures: string[];
    notes: string[];
    options: Omit<SoakOptions, "log">;
    server: { command: string[]; pid: number | undefined; exit: string | null; summary: string; outputTail?: string };
    load: {
        seconds: number;
        requests: number;
        byResult: Record<string, number>;
        latencyMs: { p50: number; p99: number; max: number };
        /** Up to 5 examples of each failing result. */
        examples: Record<string, string[]>;
    };
    kv: { blocks: number | null; usedMax: number | null; usageMax: number | null; preemptions: number | null; usedAfterLoad: number | null };
    rss: {
        firstMb: number | null; maxMb: number | null; lastMb: number | null;
        warmupSeconds: number; windowSeconds: number; samples: number;
        slopeMbPerMin: number | null; growthMb: number | null;
        /** The same slope of the malloc heap in use (reported, not judged): growing with RSS is a leak; flat while RSS grows, memory malloc holds. */
        mallocInUseSlopeMbPerMin: number | null;
        maxSlope: number; maxGrowthMb: number;
        verdict: "pass" | "fail" | "not judged";
        why: string;
    };
    finalRequest: string;
    samples: Sample[];
}

// ---- the load ------------------------------------------------------------------------------------

const WORDS = ("a river runs past the old mill where seven ravens watch the slow boats carry grain and copper to the city " +
    "while children count clouds and the baker sings about bread tea and the weather of the coming week").split(" ");

const PERSON_SCHEMA = {
    type: "object",
    properties: {
        name: { type: "string", maxLength: 12 },
        age: { type: "integer", minimum: 0, maximum: 120 },
        tags: { type: "array", items: { enum: ["red", "green", "blue"] }, maxItems: 3 },
    },
    required: ["name", "age"],
};

interface SoakRequest {
    kind: "chat" | "completion" | "grammar" | "shared-prefix";
    path: string;
    body: Record<string, unknown>;
    /** How this request's client goes away, if it does. */
    abort: null | { mode: "mid-stream"; afterChunks: number } | { mode: "before-response"; afterMs: number };
}

function makeRequest(rnd: () => number, abortRate: number): SoakRequest {
    const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
    const text = (n: number) => Array.from({ length: n }, () => pick(WORDS)).join(" ");
    const stream = rnd() < 0.5;
    const streamOptions = stream ? { stream_options: { include_usage: rnd() < 0.7 } } : {};
    const k = rnd();
    let r: Omit<SoakRequest, "abort">;
    if (k < 0.35) {
        const logprobs = rnd() < 0.2;
        r = {
            kind: "chat", path: "/v1/chat/completions",
            body: {
                messages: [{ role: "system", content: "Answer in one line." }, { role: "user", content: text(int(3, 200)) }],
                max_tokens: int(4, 96), stream, ...streamOptions, n: pick([1, 1, 1, 2, 3, 4]), temperature: pick([0, 0.7, 1.2]),
                ...(rnd() < 0.3 && { seed: int(0, 1000) }), ...(logprobs && { logprobs: true, top_logprobs: int(0, 5) }),
                ...(rnd() < 0.2 && { top_k: pick([1, 20, 100]), top_p: pick([0.5, 0.9]) }),
            },
        };
    } else if (k < 0.65) {
        r = {
            kind: "completion", path: "/v1/completions",
            body: {
                prompt: rnd() < 0.3 ? [text(int(2, 50)), text(int(2, 50))] : text(int(2, 400)),
                max_tokens: int(4, 96), stream, ...streamOptions, n: pick([1, 1, 2, 4]), temperature: pick([0, 0.8]),
                ...(rnd() < 0.4 && { logprobs: pick([0, 2, 5]) }),
                ...(rnd() < 0.4 && { stop: pick([["\n"], [" the"], [".", " river"]]) }),
                ...(rnd() < 0.4 && { seed: pick([7, int(0, 1 << 30)]) }),
                ...(rnd() < 0.1 && { presence_penalty: 0.5, frequency_penalty: 0.3 }),
            },
        };
    } else if (k < 0.85) {
        r = {
            kind: "grammar", path: "/v1/chat/completions",
            body: {
                messages: [{ role: "user", content: "Reply with JSON about " + text(int(1, 30)) }],
                max_tokens: int(16, 80), stream, ...streamOptions, n: pick([1, 2]), temperature: pick([0.7, 1]),
                response_format: rnd() < 0.5 ? { type: "json_object" } : { type: "json_schema", json_schema: { name: "person", schema: PERSON_SCHEMA } },
            },
        };
    } else {
        r = {
            kind: "shared-prefix", path: "/v1/completions",
            body: { prompt: "You are a careful assistant who answers briefly. ".repeat(30) + text(int(1, 20)), max_tokens: int(4, 96), stream, ...streamOptions, n: 1 },
        };
    }
    const abort = rnd() >= abortRate ? null : stream ? { mode: "mid-stream" as const, afterChunks: int(1, 8) } : { mode: "before-response" as const, afterMs: int(20, 800) };
    return { ...r, abort };
}

/** Checks that what a grammar request produced is JSON (when it ended by itself, not by max_tokens). */
function grammarProblem(contents: Map<number, { text: string; finish: string | null }>): string | null {
    for (const [i, c] of contents) {
        if (c.finish !== "stop") continue;
        try {
            JSON.parse(c.text);
        } catch {
            return `choice ${i} ended with 'stop' but is not JSON: ${JSON.stringify(c.text.slice(0, 200))}`;
        }
    }
    return null;
}

/**
 * Runs one request to its end (or its client's abort); never rejects. It is a hang when nothing arrives for
 * `hangMs`: no answer to a request, or no next chunk of a stream.
 */
async function runRequest(base: string, r: SoakRequest, hangMs: number, steps: () => number | null = () => null): Promise<Outcome> {
    const t0 = performance.now();
    let stepsAtLastByte = steps();
    const ac = new AbortController();
    let intended = false;
    let hung = false;
    let status = 0;
    let chunks = 0;
    let lastByte = t0;
    let hang = setTimeout(() => {}, 0);
    const arm = () => {
        clearTimeout(hang);
        lastByte = performance.now();
        stepsAtLastByte = steps();
        hang = setTimeout(() => {
            hung = true;
            ac.abort();
        }, hangMs);
    };
    arm();
    const before = r.abort?.mode === "before-response"
        ? setTimeout(() => {
            intended = true;
            ac.abort();
        }, r.abort.afterMs)
        : null;
    const done = (result: string, detail?: string): Outcome => ({ kind: r.kind, result, ms: performance.now() - t0, ...(detail !== undefined && { detail }) });
    try {
        const res = await fetch(base + r.path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(r.body), signal: ac.signal });
        status = res.status;
        arm();
        if (res.status !== 200) {
            const body = await res.text();
            return done(`status-${res.status}`, body.slice(0, 600));
        }
        const contents = new Map<number, { text: string; finish: string | null }>();
        const add = (index: number, text: string | undefined | null, finish: string | null | undefined) => {
            const c = contents.get(index) ?? { text: "", finish: null };
            c.text += text ?? "";
            if (finish) c.finish = finish;
            contents.set(index, c);
        };
        if (r.body.stream) {
            const reader = res.body!.getReader();
            const decoder = new TextDecoder();
            let buf = "";
            let sawDone = false;
            for (;;) {
                const { value, done: end } = await reader.read();
                if (end) break;
                arm();
                buf += decoder.decode(value, { stream: true });
                chunks++;
                let i: number;
                while ((i = buf.indexOf("\n\n")) >= 0) {
                    const line = buf.slice(0, i).trim();
                    buf = buf.slice(i + 2);
                    if (!line.startsWith("data: ")) continue;
                    const data = line.slice(6);
                    if (data === "[DONE]") {
                        sawDone = true;
                        continue;
                    }
                    let ev: { error?: unknown; choices?: { index: number; text?: string; delta?: { content?: string }; finish_reason?: string | null }[] };
                    try {
                        ev = JSON.parse(data);
                    } catch {
                        return done("bad-stream-event", data.slice(0, 300));
                    }
                    if (ev.error) return done("stream-error-event", JSON.stringify(ev.error).slice(0, 600));
                    for (const c of ev.choices ?? []) add(c.index, c.text ?? c.delta?.content, c.finish_reason);
                }
                if (r.abort?.mode === "mid-stream" && chunks >= r.abort.afterChunks) {
                    intended = true;
                    ac.abort();
                    return done("aborted-mid-stream");
                }
            }
            if (!sawDone) return done("stream-without-done", buf.slice(-300));
        } else {
            const text = await res.text();
            let j: { choices?: { index: number; text?: string; message?: { content?: string }; finish_reason?: string }[] };
            try {
                j = JSON.parse(text);
            } catch {
                return done("bad-json-body", text.slice(0, 300));
            }
            if (!Array.isArray(j.choices) || j.choices.length === 0) return done("no-choices", text.slice(0, 300));
            for (const c of j.choices) add(c.index, c.text ?? c.message?.content, c.finish_reason);
        }
        if (r.kind === "grammar") {
            const p = grammarProblem(contents);
            if (p) return done("grammar-invalid-json", p);
        }
        return done(r.body.stream ? "ok-stream" : "ok");
    } catch (e) {
        if (intended) return done(r.abort?.mode === "mid-stream" ? "aborted-mid-stream" : "aborted-before-response");
        if (hung) {
            const where = status === 0 ? "no response headers" : r.body.stream ? `status ${status}, ${chunks} chunk(s), then nothing` : `status ${status}, no body`;
            const now = steps();
            const engine = now === null || stepsAtLastByte === null ? "" : now > stepsAtLastByte ? `, while the engine ran ${now - stepsAtLastByte} steps for others` : ", with the engine stuck (no step)";
            return done("hang", `nothing for ${hangMs / 1000} s (${where}${engine}; ${((performance.now() - t0) / 1000).toFixed(0)} s since sent, ` +
                `${((performance.now() - lastByte) / 1000).toFixed(0)} s since the last byte): ${JSON.stringify({ ...r.body, prompt: undefined, messages: undefined }).slice(0, 300)}`);
        }
        const err = e as Error & { cause?: { code?: string; message?: string } };
        return done(`connection-error:${err.cause?.code ?? err.name}`, `${err.message}: ${err.cause?.message ?? ""}`);
    } finally {
        clearTimeout(hang);
        if (before) clearTimeout(before);
    }
}

/** Results that are not failures. */
const FINE = new Set(["ok", "ok-stream", "aborted-mid-stream", "aborted-before-response", "status-429"]);

// ---- the server ----------------------------------------------------------------------------------

interface Server {
    sup: Supervised;
    /** The server's own pid. */
    pid: number;
    base: string;
    command: string[];
    output: () => string;
    summary: string;
    exit: () => string | null;
}

async function startServer(o: SoakOptions): Promise<Server> {
    const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "cli", "main.js");
    // info: a line per request, and the drain's own lines, for the report's output tail when something fails
    const command = [cli, "serve", "--port", String(o.port), "--ctx-size", String(o.ctxSize), "--log-level", "info",
        ...(o.model ? ["--model", o.model] : []), ...(o.threads !== undefined ? ["--threads", String(o.threads)] : []), ...o.serverArgs];
    const sup = spawnSupervised(command);
    const proc = sup.proc;
    let out = "";
    let exit: string | null = null;
    const keep = (d: Buffer) => {
        out += d.toString();
        if (out.length > 400_000) out = out.slice(-200_000);
    };
    proc.stdout!.on("data", keep);
    proc.stderr!.on("data", keep);
    proc.on("exit", (code, signal) => (exit = signal ? `signal ${signal}` : `code ${code}${code !== null && code > 128 ? ` (signal ${code - 128})` : ""}`));
    const pid = await sup.pid.catch(() => -1);
    const t0 = performance.now();
    for (;;) {
        const m = /ready on (http:\/\/\S+)/.exec(out);
        if (m) {
            const summary = out.slice(out.lastIndexOf("batchwise ", m.index), m.index + m[0].length);
            return { sup, pid, base: m[1], command: [process.execPath, ...command], output: () => out, summary, exit: () => exit };
        }
        if (exit) throw new Error(`the server exited (${exit}) before it was ready:\n${out.slice(-3000)}`);
        if (performance.now() - t0 > 600_000) {
            sup.kill();
            throw new Error(`the server was not ready after 10 minutes:\n${out.slice(-3000)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
    }
}

/** SIGTERM, then SIGKILL after `graceMs`; reports whether it went by itself. */
async function stopServer(s: Server, graceMs = 30_000): Promise<boolean> {
    if (s.exit()) return true;
    const gone = new Promise<void>((r) => s.sup.proc.once("exit", () => r()));
    s.sup.proc.kill("SIGTERM"); // the supervisor passes it on
    let killed = false;
    const t = setTimeout(() => {
        killed = true;
        s.sup.kill();
    }, graceMs);
    await gone;
    clearTimeout(t);
    return !killed;
}

function metricValue(text: string, name: string): number | null {
    const m = new RegExp(`^${name.replace(/[:]/g, "\\:")}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
    return m ? Number(m[1]) : null;
}

async function sample(s: Server, t: number, phase: Sample["phase"]): Promise<Sample> {
    let rssMb: number | null = null;
    try {
        rssMb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${s.pid}/status`, "utf8"))![1]) / 1024;
    } catch {
        // no /proc (not Linux): the server's own gauge below
    }
    let text = "";
    try {
        const r = await fetch(`${s.base}/metrics`, { signal: AbortSignal.timeout(10_000) });
        text = await r.text();
    } catch {
        // counted as nulls
    }
    const v = (n: string) => metricValue(text, n);
    const mb = (x: number | null) => (x === null ? null : x / 2 ** 20);
    return {
        t, phase, rssMb: rssMb ?? mb(v("process_resident_memory_bytes")),
        kvBlocks: v("batchwise_kv_blocks"), kvUsed: v("batchwise_kv_blocks_used"), kvCached: v("batchwise_kv_blocks_cached"), kvUsage: v("vllm:kv_cache_usage_perc"),
        running: v("vllm:num_requests_running"), waiting: v("vllm:num_requests_waiting"), preemptions: v("vllm:num_preemptions_total"),
        disconnects: v("batchwise_client_disconnects_total"), heapMb: mb(v("nodejs_heap_size_used_bytes")),
        mallocInUseMb: mb(v('batchwise_heap_bytes\\{state="in_use"\\}')), mallocHeldMb: mb(v('batchwise_heap_bytes\\{state="held"\\}')),
        genTps: v("batchwise_generation_tokens_per_second"), steps: v("batchwise_engine_steps_total"),
    };
}

/** Least-squares slope of y over t (per second), or null with fewer than 3 points. */
function slope(points: { t: number; y: number }[]): number | null {
    const n = points.length;
    if (n < 3) return null;
    const mt = points.reduce((a, p) => a + p.t, 0) / n;
    const my = points.reduce((a, p) => a + p.y, 0) / n;
    const num = points.reduce((a, p) => a + (p.t - mt) * (p.y - my), 0);
    const den = points.reduce((a, p) => a + (p.t - mt) ** 2, 0);
    return den > 0 ? num / den : null;
}

// ---- the run -------------------------------------------------------------------------------------

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
    const failures: string[] = [];
    const notes: string[] = [];
    const log = o.log;
    log(`starting batchwise serve (${o.model ? o.model : "the demo model"}, --ctx-size ${o.ctxSize})`);
    const server = await startServer(o);
    log(`${server.summary.trim().split("\n").join("\n[soak]   ")}`);
    log(`${o.minutes} min of mixed load at concurrency ${o.concurrency} (seed ${o.seed}), ${Math.round(o.abortRate * 100)}% of clients going away early`);

    const samples: Sample[] = [];
    const outcomes: Outcome[] = [];
    const examples: Record<string, string[]> = {};
    const byResult: Record<string, number> = {};
    const t0 = performance.now();
    const now = () => (performance.now() - t0) / 1000;
    const loadMs = o.minutes * 60_000;
    let stop = false;
    let lastLog = 0;

    const sampler = (async () => {
        while (!stop) {
            const s = await sample(server, now(), "load");
            samples.push(s);
            if (now() - lastLog >= 30 || samples.length === 1) {
                lastLog = now();
                const bad = Object.entries(byResult).filter(([k]) => !FINE.has(k)).map(([k, n]) => `${k} ${n}`).join(", ");
                log(`t=${s.t.toFixed(0)}s requests ${outcomes.length}, RSS ${s.rssMb?.toFixed(1)} MB, KV used ${s.kvUsed}/${s.kvBlocks} blocks, ` +
                    `running ${s.running}, waiting ${s.waiting}, preemptions ${s.preemptions}, ${s.genTps?.toFixed(0)} tokens/s${bad ? `; FAILURES: ${bad}` : ""}`);
            }
            const wait = performance.now() + o.sampleSeconds * 1000;
            while (!stop && performance.now() < wait) await new Promise((r) => setTimeout(r, Math.min(250, o.sampleSeconds * 1000)));
        }
    })();
    let deadline = performance.now() + loadMs;
    // Ctrl-C ends the load early and still checks the server and writes the report; a second one quits
    const interrupt = () => {
        log("interrupted: ending the load now (Ctrl-C again to quit at once)");
        deadline = performance.now();
        notes.push(`interrupted after ${now().toFixed(0)} s of the ${o.minutes * 60} s asked for`);
        process.once("SIGINT", () => process.exit(130));
    };
    process.once("SIGINT", interrupt);
    const rnd = seededRandom(o.seed);
    const record = (x: Outcome) => {
        outcomes.push(x);
        byResult[x.result] = (byResult[x.result] ?? 0) + 1;
        if (!FINE.has(x.result) && (examples[x.result] ??= []).length < 5) examples[x.result].push(`${x.kind} at t=${now().toFixed(0)}s: ${x.detail ?? ""}`);
    };
    await Promise.all(Array.from({ length: o.concurrency }, async () => {
        while (performance.now() < deadline && !server.exit()) {
            record(await runRequest(server.base, makeRequest(rnd, o.abortRate), o.hangSeconds * 1000, () => samples.at(-1)?.steps ?? null));
        }
    }));
    const loadSeconds = now();
    process.off("SIGINT", interrupt);
    stop = true;
    await sampler;

    // the load is over: the server must go back to idle with no KV block in use
    let idle: Sample | null = null;
    const idleBy = performance.now() + 30_000;
    while (!server.exit() && performance.now() < idleBy) {
        const s = await sample(server, now(), "after");
        samples.push(s);
        if (s.kvUsed === 0 && s.running === 0 && s.waiting === 0) {
            idle = s;
            break;
        }
        await new Promise((r) => setTimeout(r, 500));
    }
    // a few more samples of the idle server, then one ordinary request, then the KV once more
    for (let i = 0; i < 3 && !server.exit(); i++) {
        await new Promise((r) => setTimeout(r, 1000));
        samples.push(await sample(server, now(), "after"));
    }
    let finalRequest = "not sent (the server is gone)";
    if (!server.exit()) {
        const f = await runRequest(server.base, { kind: "completion", path: "/v1/completions", body: { prompt: "hello", max_tokens: 8 }, abort: null }, 60_000);
        finalRequest = f.result + (f.detail ? `: ${f.detail}` : "");
        if (f.result !== "ok") failures.push(`an ordinary request after the load failed: ${finalRequest}`);
        await new Promise((r) => setTimeout(r, 500));
        const s = await sample(server, now(), "after");
        samples.push(s);
        if (s.kvUsed !== 0) failures.push(`${s.kvUsed} KV blocks still used after the final request ended`);
    }
    const exitDuringRun = server.exit();
    if (exitDuringRun) failures.push(`the server exited during the run (${exitDuringRun}); its last output:\n${server.output().slice(-3000)}`);
    else if (!idle) {
        const last = samples.at(-1);
        failures.push(`the server did not go back to idle within 30 s of the load's end: KV used ${last?.kvUsed}, running ${last?.running}, waiting ${last?.waiting}`);
    }
    const exitedCleanly = await stopServer(server);
    if (!exitDuringRun && !exitedCleanly) failures.push("the server did not exit within 30 s of SIGTERM (killed)");

    // outcomes
    for (const [result, n] of Object.entries(byResult)) {
        if (FINE.has(result)) continue;
        failures.push(`${n} request(s) ended as ${result}; e.g. ${examples[result][0]}`);
    }
    if ((byResult["status-429"] ?? 0) > 0) notes.push(`${byResult["status-429"]} request(s) got 429 (queue full): not a failure`);
    if (outcomes.length === 0) failures.push("no request completed");

    // RSS after warm-up
    const warmupSeconds = 60 * (o.warmupMinutes ?? (o.minutes >= 30 ? 10 : o.minutes / 3));
    /** A sampled figure's points under load after warm-up. */
    const after = (read: (s: Sample) => number | null) =>
        samples.flatMap((s) => (s.phase === "load" && s.t >= warmupSeconds && read(s) !== null ? [{ t: s.t, y: read(s)! }] : []));
    const perMinute = (pts: { t: number; y: number }[]) => {
        const perSecond = slope(pts);
        return perSecond === null ? null : perSecond * 60;
    };
    const pts = after((s) => s.rssMb);
    const windowSeconds = pts.length > 1 ? pts.at(-1)!.t - pts[0].t : 0;
    const slopeMbPerMin = perMinute(pts);
    const growthMb = pts.length > 1 ? pts.at(-1)!.y - pts[0].y : null;
    const mallocInUseSlopeMbPerMin = perMinute(after((s) => s.mallocInUseMb));
    let verdict: SoakReport["rss"]["verdict"] = "not judged";
    let why: string;
    if (slopeMbPerMin === null) {
        why = `too few samples after the ${warmupSeconds.toFixed(0)} s warm-up to fit a slope`;
    } else if (windowSeconds < o.minSlopeWindowMinutes * 60) {
        why = `the ${(windowSeconds / 60).toFixed(1)} min after warm-up are shorter than the ${o.minSlopeWindowMinutes} min a slope bound of ${o.maxRssSlope} MB/min needs ` +
            `(noise of a few MB in RSS reads as several MB/min): the slope is reported, not judged; run with --minutes ${Math.ceil(o.minSlopeWindowMinutes * 1.5 + 1)} or more to judge it`;
    } else if (slopeMbPerMin > o.maxRssSlope) {
        verdict = "fail";
        why = `RSS grew ${slopeMbPerMin.toFixed(2)} MB/min after warm-up, more than the ${o.maxRssSlope} MB/min allowed`;
        failures.push(why);
    } else {
        verdict = "pass";
        why = `RSS slope ${slopeMbPerMin.toFixed(2)} MB/min after warm-up, within ${o.maxRssSlope} MB/min`;
    }
    if (growthMb !== null && growthMb > o.maxRssGrowthMb) {
        verdict = "fail";
        const g = `RSS grew ${growthMb.toFixed(0)} MB after warm-up, more than the ${o.maxRssGrowthMb} MB allowed`;
        why += `; ${g}`;
        failures.push(g);
    }
    const rss = samples.filter((s) => s.rssMb !== null).map((s) => s.rssMb!);
    const loadSamples = samples.filter((s) => s.phase === "load");
    const maxOf = (xs: (number | null)[]) => (xs.some((x) => x !== null) ? Math.max(...xs.filter((x): x is number => x !== null)) : null);
    const ms = outcomes.filter((x) => x.result === "ok" || x.result === "ok-stream").map((x) => x.ms);
    const report: SoakReport = {
        ok: failures.length === 0,
        failures, notes,
        options: (({ log: _log, ...rest }) => rest)(o),
        server: { command: server.command, pid: server.pid, exit: exitDuringRun, summary: server.summary, ...(failures.length > 0 && { outputTail: server.output().slice(-20_000) }) },
        load: {
            seconds: loadSeconds, requests: outcomes.length, byResult,
            latencyMs: { p50: percentile(ms, 50), p99: percentile(ms, 99), max: ms.length > 0 ? Math.max(...ms) : NaN },
            examples,
        },
        kv: {
            blocks: loadSamples.find((s) => s.kvBlocks !== null)?.kvBlocks ?? null,
            usedMax: maxOf(loadSamples.map((s) => s.kvUsed)), usageMax: maxOf(loadSamples.map((s) => s.kvUsage)),
            preemptions: samples.filter((s) => s.preemptions !== null).at(-1)?.preemptions ?? null,
            usedAfterLoad: idle ? 0 : samples.at(-1)?.kvUsed ?? null,
        },
        rss: {
            firstMb: rss[0] ?? null, maxMb: rss.length > 0 ? Math.max(...rss) : null, lastMb: rss.at(-1) ?? null,
            warmupSeconds, windowSeconds, samples: pts.length, slopeMbPerMin, growthMb, mallocInUseSlopeMbPerMin, maxSlope: o.maxRssSlope, maxGrowthMb: o.maxRssGrowthMb, verdict, why,
        },
        finalRequest,
        samples,
    };
    if (report.kv.preemptions === 0) notes.push("no preemption happened: the KV pool never ran full (a smaller --ctx-size or more --concurrency makes it)");
    return report;
}

function summaryText(r: SoakReport): string {
    const f = (x: number | null | undefined, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d));
    const lines = [
        `soak ${r.ok ? "PASSED" : "FAILED"}: ${r.load.requests} requests in ${f(r.load.seconds, 0)} s at concurrency ${r.options.concurrency}`,
        `  results: ${Object.entries(r.load.byResult).sort().map(([k, n]) => `${k} ${n}`).join(", ")}`,
        `  latency of completed requests: p50 ${f(r.load.latencyMs.p50, 0)} ms, p99 ${f(r.load.latencyMs.p99, 0)} ms`,
        `  KV: ${r.kv.blocks} blocks, at most ${r.kv.usedMax} used (usage ${f((r.kv.usageMax ?? NaN) * 100, 0)}%), ${r.kv.preemptions} preemptions, ${r.kv.usedAfterLoad} used after the load`,
        `  RSS: ${f(r.rss.firstMb)} MB first, ${f(r.rss.maxMb)} MB max, ${f(r.rss.lastMb)} MB last; after the ${f(r.rss.warmupSeconds, 0)} s warm-up: ` +
            `slope ${f(r.rss.slopeMbPerMin, 2)} MB/min over ${f(r.rss.windowSeconds / 60, 1)} min (${r.rss.samples} samples), growth ${f(r.rss.growthMb)} MB: ${r.rss.verdict}` +
            ` (malloc in use: ${f(r.rss.mallocInUseSlopeMbPerMin, 2)} MB/min)`,
        `    ${r.rss.why}`,
        `  a request after the load: ${r.finalRequest}`,
        ...r.notes.map((n) => `  note: ${n}`),
        ...r.failures.map((x) => `  FAIL: ${x}`),
        ...(r.server.outputTail ? [`  the server's last lines (warnings and errors):`, ...r.server.outputTail.split("\n").slice(1).filter((l) => /"level":(40|50|60)|^[^{]/.test(l) && l.trim()).slice(-12).map((l) => `    ${l.slice(0, 400)}`)] : []),
    ];
    return lines.join("\n") + "\n";
}

// ---- command line --------------------------------------------------------------------------------

const USAGE = `usage: npm run soak -- --minutes N [options]
  --minutes N              minutes of load (required)
  --concurrency C          clients with a request in flight each (default 48)
  --port P                 the server's port (default: a free one)
  --model PATH             a GGUF to serve (default: the demo model)
  --ctx-size T             the server's KV cache in tokens (default 4096: small, so that it runs full and preempts)
  --threads N              the server's CPU threads
  --server-arg=ARG         an extra 'batchwise serve' argument, e.g. --server-arg=--no-warmup (repeatable)
  --abort-rate R           share of clients that go away early (default 0.2)
  --warmup-minutes W       left out of the RSS slope (default 10 for runs of 30 min or more, else a third of the run)
  --max-rss-slope S        MB/min allowed after warm-up (default 0.5)
  --min-slope-window M     judge the slope only over at least M minutes after warm-up (default 5)
  --max-rss-growth MB      RSS growth allowed after warm-up, whatever the run's length (default 256)
  --hang-seconds S         nothing received for S seconds (an answer, a stream's next chunk) is a hang (default 300)
  --sample-seconds S       sampling period of RSS and /metrics (default 5)
  --seed N                 seed of the load's choices (default: random)
  --out FILE               the JSON report (default bench-results/soak-<time>.json)
`;

export function parseSoakArgs(argv: string[]): SoakOptions {
    const { values } = parseArgs({
        args: argv, strict: true, allowPositionals: false,
        options: {
            minutes: { type: "string" }, concurrency: { type: "string" }, port: { type: "string" }, model: { type: "string" },
            "ctx-size": { type: "string" }, threads: { type: "string" }, "server-arg": { type: "string", multiple: true },
            "abort-rate": { type: "string" }, "warmup-minutes": { type: "string" }, "max-rss-slope": { type: "string" },
            "min-slope-window": { type: "string" }, "max-rss-growth": { type: "string" }, "hang-seconds": { type: "string" },
            "sample-seconds": { type: "string" }, seed: { type: "string" }, out: { type: "string" }, help: { type: "boolean", short: "h" },
        },
    });
    if (values.help) {
        process.stdout.write(USAGE);
        process.exit(0);
    }
    const num = (name: keyof typeof values, def: number | undefined, ok: (v: number) => boolean, what: string): number | undefined => {
        const v = values[name];
        if (v === undefined) return def;
        const n = Number(v);
        if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(n) || !ok(n)) throw new Error(`--${name} must be ${what} (got '${String(v)}')`);
        return n;
    };
    const minutes = num("minutes", undefined, (v) => v > 0, "a number of minutes > 0");
    if (minutes === undefined) throw new Error("--minutes is required");
    const model = values.model;
    if (model !== undefined && !existsSync(model)) throw new Error(`--model: no such file ${model}`);
    const pos = (v: number) => v > 0;
    const int = (v: number) => Number.isInteger(v) && v >= 1;
    return {
        minutes,
        concurrency: num("concurrency", 48, int, "a whole number >= 1")!,
        port: num("port", 0, (v) => Number.isInteger(v) && v >= 0 && v < 65536, "a port number")!,
        model: model === undefined ? undefined : resolve(model),
        ctxSize: num("ctx-size", 4096, int, "a whole number >= 1")!,
        threads: num("threads", undefined, int, "a whole number >= 1"),
        serverArgs: values["server-arg"] ?? [],
        abortRate: num("abort-rate", 0.2, (v) => v >= 0 && v <= 1, "between 0 and 1")!,
        warmupMinutes: num("warmup-minutes", undefined, (v) => v >= 0, "a number of minutes >= 0"),
        maxRssSlope: num("max-rss-slope", 0.5, (v) => v >= 0, "a number >= 0")!,
        minSlopeWindowMinutes: num("min-slope-window", 5, (v) => v >= 0, "a number >= 0")!,
        maxRssGrowthMb: num("max-rss-growth", 256, pos, "a number > 0")!,
        hangSeconds: num("hang-seconds", 300, pos, "a number > 0")!,
        sampleSeconds: num("sample-seconds", 5, pos, "a number > 0")!,
        seed: num("seed", Math.floor(Math.random() * 2 ** 31), (v) => Number.isInteger(v) && v >= 0, "a whole number >= 0")!,
        out: resolve(values.out ?? join("bench-results", `soak-${new Date().toISOString().replace(/[:.]/g, "-")}.json`)),
        log: (line) => process.stderr.write(`[soak] ${line}\n`),
    };
}

async function main(): Promise<void> {
    let o: SoakOptions;
    try {
        o = parseSoakArgs(process.argv.slice(2));
    } catch (e) {
        process.stderr.write(`soak: ${(e as Error).message}\n${USAGE}`);
        process.exit(2);
    }
    const report = await runSoak(o);
    mkdirSync(dirname(o.out), { recursive: true });
    writeFileSync(o.out, JSON.stringify(report, null, 1) + "\n");
    process.stderr.write(summaryText(report));
    process.stderr.write(`[soak] report: ${o.out}\n`);
    process.exit(report.ok ? 0 : 1);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
    main().catch((e: unknown) => {
        process.stderr.write(`soak: ${(e as Error).stack ?? e}\n`);
        process.exit(1);
    });
}
