// The benchmark's load generator: closed loop at a fixed concurrency against any OpenAI-compatible
// /v1/completions (batchwise's server or llama-server), streaming, token-id prompts, ignore_eos, so
// both sides do exactly the same work. It times each request's first token and the gaps between the
// streamed chunks that follow, as a client sees them.

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

/** One streamed completion; resolves with its record (never rejects). */
export async function streamOne(baseUrl: string, model: string | undefined, req: BenchRequest, t0: number, signal?: AbortSignal): Promise<RequestRecord> {
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
                        if (last < 0) rec.ttftMs = t - start;
                        else rec.itlMs.push(t - last);
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
