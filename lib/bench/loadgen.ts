// The benchmark's load generator: closed loop at a fixed concurrency, or open loop on a seeded Poisson
// schedule, against any OpenAI-compatible /v1/completions (batchwise's server or llama-server),
// streaming, token-id prompts, ignore_eos, so both sides do exactly the same work. It times each
// request's first token from the moment it is sent and the gaps between the streamed chunks that
// follow, as a client sees them.

export interface BenchRequest {
    prompt: number[];
    maxTokens: number;
}

export interface RequestRecord {
    ok: boolean;
    error?: string;
    /** ms from the start of the run. */
    startMs: number;
    ttftMs: number;
    /** Gaps between successive streamed chunks with text, in ms. */
    itlMs: number[];
    outputTokens: number;
    e2eMs: number;
}

export interface RunStats {
    requests: number;
    errors: number;
    wallS: number;
    outputTokens: number;
    outputTokensPerS: number;
    ttftMs: { p50: number; p99: number; mean: number };
    itlMs: { p50: number; p99: number };
    firstError?: string;
}

export function percentile(xs: readonly number[], p: number): number {
    if (xs.length === 0) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

export function summarize(records: readonly RequestRecord[], wallMs: number): RunStats {
    const ok = records.filter((r) => r.ok);
    const out = ok.reduce((a, r) => a + r.outputTokens, 0);
    const ttft = ok.map((r) => r.ttftMs);
    const itl = ok.flatMap((r) => r.itlMs);
    const stats: RunStats = {
        requests: records.length,
        errors: records.length - ok.length,
        wallS: wallMs / 1000,
        outputTokens: out,
        outputTokensPerS: out / (wallMs / 1000),
        ttftMs: { p50: percentile(ttft, 50), p99: percentile(ttft, 99), mean: ttft.reduce((a, b) => a + b, 0) / Math.max(1, ttft.length) },
        itlMs: { p50: percentile(itl, 50), p99: percentile(itl, 99) },
    };
    const bad = records.find((r) => !r.ok);
    if (bad?.error) stats.firstError = bad.error;
    return stats;
}

/** One streamed completion; resolves with its record (never rejects). `onFirstToken` is called when the first text arrives. */
export async function streamOne(baseUrl: string, model: string | undefined, req: BenchRequest, t0: number, signal?: AbortSignal, onFirstToken?: () => void): Promise<RequestRecord> {
    const start = performance.now();
    const rec: RequestRecord = { ok: false, startMs: start - t0, ttftMs: NaN, itlMs: [], outputTokens: 0, e2eMs: NaN };
    try {
        const res = await fetch(`${baseUrl}/v1/completions`, {
            method: "POST", signal,
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
                ...(model && { model }), prompt: req.prompt, max_tokens: req.maxTokens, ignore_eos: true, temperature: 0,
                stream: true, stream_options: { include_usage: true },
            }),
        });
        if (res.status !== 200 || !res.body) {
            rec.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`;
            return rec;
        }
        const decoder = new TextDecoder();
        let buf = "";
        let last = -1;
        let chunks = 0;
        let usageTokens = -1;
        const reader = res.body.getReader();
        for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += decoder.decode(value, { stream: true });
            let i: number;
            while ((i = buf.indexOf("\n\n")) >= 0) {
                const event = buf.slice(0, i);
                buf = buf.slice(i + 2);
                for (const line of event.split("\n")) {
                    if (!line.startsWith("data: ")) continue;
                    const data = line.slice(6).trim();
                    if (data === "[DONE]") continue;
                    const j = JSON.parse(data) as { choices?: { text?: string }[]; usage?: { completion_tokens?: number } | null; error?: { message?: string } };
                    if (j.error) throw new Error(j.error.message ?? "error event");
                    if (j.usage && typeof j.usage.completion_tokens === "number") usageTokens = j.usage.completion_tokens;
                    if (j.choices && j.choices.length > 0 && typeof j.choices[0].text === "string" && j.choices[0].text.length > 0) {
                        const t = performance.now();
                        if (last < 0) {
                            rec.ttftMs = t - start;
                            onFirstToken?.();
                        } else rec.itlMs.push(t - last);
                        last = t;
                        chunks++;
                    }
                }
            }
        }
        rec.e2eMs = performance.now() - start;
        rec.outputTokens = usageTokens >= 0 ? usageTokens : chunks;
        rec.ok = last >= 0;
        if (!rec.ok) rec.error = "no tokens streamed";
    } catch (e) {
        rec.error = (e as Error).message;
    }
    return rec;
}

/**
 * Runs `requests` with `concurrency` in flight at all times (a new one starts as soon as one ends).
 */
export async function closedLoop(baseUrl: string, model: string | undefined, requests: readonly BenchRequest[], concurrency: number): Promise<{ records: RequestRecord[]; stats: RunStats }> {
    const t0 = performance.now();
    const records: RequestRecord[] = new Array(requests.length);
    let next = 0;
    const worker = async () => {
        for (;;) {
            const i = next++;
            if (i >= requests.length) return;
            records[i] = await streamOne(baseUrl, model, requests[i], t0);
        }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, requests.length) }, worker));
    const wall = performance.now() - t0;
    return { records, stats: summarize(records, wall) };
}

/** mulberry32: a small seeded PRNG in [0, 1), so that a run's random choices can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

/** Deterministic pseudo-random token ids in [lo, hi). */
export function randomTokens(n: number, seed: number, lo = 1000, hi = 30000): number[] {
    let x = (seed * 2654435761 + 12345) >>> 0;
    return Array.from({ length: n }, () => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return lo + (x % (hi - lo));
    });
}

/** One arrival of an open-loop schedule: when (ms from the start) and which user sends it. */
export interface Arrival {
    atMs: number;
    user: number;
}

/**
 * A Poisson process of `ratePerS` arrivals a second over `durationS` seconds (exponential gaps, drawn
 * from seededRandom(seed)), each arrival sent by a user drawn uniformly from `users`: the same seed
 * gives the same schedule.
 */
export function poissonSchedule(ratePerS: number, durationS: number, users: number, seed: number): Arrival[] {
    if (!(ratePerS > 0) || !(durationS >= 0) || !Number.isInteger(users) || users < 1) throw new RangeError("poissonSchedule: rate > 0, duration >= 0, users >= 1");
    const rand = seededRandom(seed);
    const out: Arrival[] = [];
    for (let t = 0; ;) {
        t += (-Math.log(1 - rand()) / ratePerS) * 1000; // 1 - rand() is in (0, 1]: the gap is finite
        if (t >= durationS * 1000) return out;
        out.push({ atMs: t, user: Math.floor(rand() * users) });
    }
}

export interface OpenLoopOptions {
    /** Ascending send times (ms from the start) and their requests. */
    arrivals: readonly { atMs: number; request: BenchRequest }[];
    /** The schedule's length (its last arrival is before it). */
    durationMs: number;
    /** Safety cap: when this many requests are in flight, no more are sent (stopReason "cap"). */
    maxInFlight: number;
    /** The queue diverges: when a request has waited this long for its first token, no more are sent (stopReason "diverged"). */
    divergeMs: number;
    /** After the last send, how long the requests in flight may take to finish before they are aborted. */
    drainMs: number;
}

export interface OpenLoopRecord extends RequestRecord {
    /** When the schedule said to send it (startMs is when it was sent). */
    scheduledMs: number;
    /** Aborted at the end of the drain, unfinished (not a server failure). */
    aborted: boolean;
}

export interface OpenLoopResult {
    /** The requests sent, in schedule order (those after an early stop are not sent and not here). */
    records: OpenLoopRecord[];
    /** When sending ended: the schedule's end (durationMs), or the early stop. */
    sendEndMs: number;
    stopReason?: "cap" | "diverged";
    peakInFlight: number;
    /** From the start to the last request's end (or its abort). */
    wallMs: number;
}

/**
 * Open loop: each request is sent at its scheduled time whether or not earlier ones have finished (the
 * requests in flight accumulate when the server falls behind), each timed from its own send. Sending
 * stops early at `maxInFlight` requests in flight or when one has waited `divergeMs` for its first
 * token; then the requests in flight get `drainMs` to finish and the rest are aborted.
 */
export async function openLoop(baseUrl: string, model: string | undefined, o: OpenLoopOptions): Promise<OpenLoopResult> {
    const t0 = performance.now();
    const abort = new AbortController();
    /** Requests in flight: their send time and whether their first token came. */
    const inFlight = new Map<number, { sentMs: number; first: boolean }>();
    const pending: Promise<void>[] = [];
    const records: OpenLoopRecord[] = [];
    let peakInFlight = 0;
    let stopReason: OpenLoopResult["stopReason"];
    const now = () => performance.now() - t0;
    const stalled = () => {
        const limit = now() - o.divergeMs;
        for (const r of inFlight.values()) if (!r.first && r.sentMs <= limit) return true;
        return false;
    };
    let sendEndMs = 0;
    outer: for (let i = 0; i < o.arrivals.length; i++) {
        const { atMs, request } = o.arrivals[i];
        for (;;) {
            if (inFlight.size >= o.maxInFlight) stopReason = "cap";
            else if (stalled()) stopReason = "diverged";
            if (stopReason) {
                sendEndMs = now();
                break outer;
            }
            const wait = atMs - now();
            if (wait <= 0) break;
            await new Promise((r) => setTimeout(r, Math.min(wait, 50))); // wakes at least every 50 ms to check the queue
        }
        const entry = { sentMs: now(), first: false };
        inFlight.set(i, entry);
        peakInFlight = Math.max(peakInFlight, inFlight.size);
        pending.push(streamOne(baseUrl, model, request, t0, abort.signal, () => (entry.first = true)).then((rec) => {
            inFlight.delete(i);
            records[i] = { ...rec, scheduledMs: atMs, aborted: !rec.ok && abort.signal.aborted };
        }));
    }
    if (!stopReason) sendEndMs = o.durationMs;
    const all = Promise.all(pending);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((r) => (timer = setTimeout(r, o.drainMs)))]);
    clearTimeout(timer);
    abort.abort();
    await all;
    return { records: records.filter((r) => r !== undefined), sendEndMs, ...(stopReason && { stopReason }), peakInFlight, wallMs: now() };
}

/** One rate of an open-loop run, measured in its steady state. */
export interface OpenLoopStats {
    /** The schedule's rate, requests a second. */
    targetRps: number;
    durationS: number;
    /** Arrivals scheduled before this are sent but not measured (the ramp-up). */
    warmupS: number;
    /** The measured window: from warmupS to the end of sending (durationS, or the early stop). */
    windowS: number;
    scheduled: number;
    sent: number;
    /** Requests sent in the window: the ones the TTFT figures are about. */
    measured: number;
    /** measured / windowS: the rate the Poisson draw offered. */
    offeredRps: number;
    /** Requests (any) that finished well within the window, per second: what the server kept up with. */
    achievedRps: number;
    /** Output tokens of those requests, per second of the window. */
    outputTokensPerS: number;
    /**
     * TTFT of the measured requests that got a first token, and of the ones aborted unfinished without one
     * (their wait until the abort: a lower bound, counted in ttftLowerBounds); failed requests are left out.
     */
    ttftMs: { p50: number; p95: number; p99: number; mean: number };
    ttftLowerBounds: number;
    budgetMs: number;
    /** Share (0-1) of the measured requests whose first token came within budgetMs. */
    withinBudget: number;
    /** Measured requests that failed (an HTTP error, a broken stream; not the aborted ones). */
    failed: number;
    /** Measured requests still unfinished at the end of the drain, aborted. */
    unfinished: number;
    peakInFlight: number;
    maxInFlight: number;
    /** The in-flight cap was reached (sending stopped there). */
    capHit: boolean;
    /** Sending stopped before the schedule's end: when (s from the start) and why. */
    stoppedEarlyS?: number;
    stopReason?: "cap" | "diverged";
    /** How late the client sent requests against the schedule (its own lag, not the server's). */
    sendLagMs: { p50: number; p99: number };
    /** p95 TTFT under budgetMs, with every measured request finished, none failed, and no early stop. */
    meetsBudget: boolean;
    firstError?: string;
}

/**
 * The measured window of an open-loop run, [fromMs, sendEndMs), and the requests scheduled in it. A run
 * stopped before its warm-up ended is measured from its start (else nothing would be).
 */
export function measuredWindow(r: OpenLoopResult, warmupS: number): { fromMs: number; records: OpenLoopRecord[] } {
    const fromMs = r.sendEndMs > warmupS * 1000 ? warmupS * 1000 : 0;
    return { fromMs, records: r.records.filter((x) => x.scheduledMs >= fromMs && x.scheduledMs < r.sendEndMs) };
}

/** The steady-state figures of one open-loop rate (see OpenLoopStats for each one's definition). */
export function openLoopStats(r: OpenLoopResult, o: { targetRps: number; durationS: number; warmupS: number; budgetMs: number; maxInFlight: number; scheduled: number }): OpenLoopStats {
    const { fromMs, records: measured } = measuredWindow(r, o.warmupS);
    const windowMs = r.sendEndMs - fromMs;
    const failed = measured.filter((x) => !x.ok && !x.aborted);
    const unfinished = measured.filter((x) => x.aborted);
    const lowerBounds = unfinished.filter((x) => !Number.isFinite(x.ttftMs));
    const ttft = [
        ...measured.filter((x) => (x.ok || x.aborted) && Number.isFinite(x.ttftMs)).map((x) => x.ttftMs),
        ...lowerBounds.map((x) => r.wallMs - x.startMs),
    ];
    const done = r.records.filter((x) => x.ok && x.startMs + x.e2eMs >= fromMs && x.startMs + x.e2eMs <= r.sendEndMs);
    const lag = r.records.map((x) => x.startMs - x.scheduledMs);
    const p95 = percentile(ttft, 95);
    const s: OpenLoopStats = {
        targetRps: o.targetRps, durationS: o.durationS, warmupS: fromMs / 1000, windowS: windowMs / 1000,
        scheduled: o.scheduled, sent: r.records.length, measured: measured.length,
        offeredRps: measured.length / (windowMs / 1000),
        achievedRps: done.length / (windowMs / 1000),
        outputTokensPerS: done.reduce((a, x) => a + x.outputTokens, 0) / (windowMs / 1000),
        ttftMs: { p50: percentile(ttft, 50), p95, p99: percentile(ttft, 99), mean: ttft.reduce((a, b) => a + b, 0) / Math.max(1, ttft.length) },
        ttftLowerBounds: lowerBounds.length,
        budgetMs: o.budgetMs,
        withinBudget: measured.length === 0 ? NaN : measured.filter((x) => (x.ok || x.aborted) && x.ttftMs <= o.budgetMs).length / measured.length,
        failed: failed.length, unfinished: unfinished.length,
        peakInFlight: r.peakInFlight, maxInFlight: o.maxInFlight, capHit: r.stopReason === "cap",
        ...(r.stopReason && { stoppedEarlyS: r.sendEndMs / 1000, stopReason: r.stopReason }),
        sendLagMs: { p50: percentile(lag, 50), p99: percentile(lag, 99) },
        meetsBudget: measured.length > 0 && p95 < o.budgetMs && failed.length === 0 && unfinished.length === 0 && !r.stopReason,
    };
    const bad = failed[0] ?? r.records.find((x) => !x.ok && !x.aborted);
    if (bad?.error) s.firstError = bad.error;
    return s;
}

/**
 * The knee of an open-loop sweep: the highest rate that meets the budget with every lower rate meeting it
 * too (rates in any order); null when the lowest rate already misses it.
 */
export function knee(rates: readonly { targetRps: number; meetsBudget: boolean }[]): number | null {
    let best: number | null = null;
    for (const r of [...rates].sort((a, b) => a.targetRps - b.targetRps)) {
        if (!r.meetsBudget) break;
        best = r.targetRps;
    }
    return best;
}
