// The engine's counters: totals since load, where the loop's time went, and a 10-second window of
// tokens per step for the rates. stats() reads them with the scheduler's view into EngineStats.
import type { FinishReason, SchedulerStats } from "../scheduler/scheduler.js";
import type { OutputTotals } from "./output.js";
import type { EngineStats } from "./types.js";

const WINDOW_MS = 10_000;

export class EngineCounters {
    readonly totals: OutputTotals & { requests: number; promptTokens: number; computedPromptTokens: number } = {
        requests: 0, finished: { stop: 0, length: 0, abort: 0, error: 0 } as Record<FinishReason, number>,
        promptTokens: 0, cachedTokens: 0, computedPromptTokens: 0, generatedTokens: 0,
    };
    readonly time = { stepMs: 0, planMs: 0, decodeMs: 0 };
    readonly heap = { trims: 0, trimMs: 0 };
    readonly graphs = { reuses: 0, allocationPlans: 0 };
    private readonly window: { t: number; gen: number; prompt: number }[] = [];

    /** A request taken, with its prompt tokens. */
    request(promptTokens: number): void {
        this.totals.requests++;
        this.totals.promptTokens += promptTokens;
    }

    /** A step done: its timings (ms) and tokens. */
    step(t: { planMs: number; stepMs: number; decodeMs: number }, promptTokens: number, decodeTokens: number, at: number): void {
        this.time.planMs += t.planMs;
        this.time.stepMs += t.stepMs;
        this.time.decodeMs += t.decodeMs;
        this.totals.computedPromptTokens += promptTokens;
        this.window.push({ t: at, gen: decodeTokens, prompt: promptTokens });
        if (this.window.length > 4096) this.window.splice(0, 2048);
    }

    snapshot(s: SchedulerStats, at: number, extra: { intakeSequences: number; healthy: boolean; closing: boolean; stalledMs: number }): EngineStats {
        while (this.window.length > 0 && this.window[0].t < at - WINDOW_MS) this.window.shift();
        let gen = 0, prompt = 0;
        for (const w of this.window) {
            gen += w.gen;
            prompt += w.prompt;
        }
        const span = this.window.length > 0 ? Math.max(1, Math.min(WINDOW_MS, at - this.window[0].t)) / 1000 : 1;
        return {
            running: s.running, waiting: s.waiting + extra.intakeSequences, swapped: s.swapped,
            kv: {
                blocks: s.kv.numBlocks, blockSize: s.kv.blockSize, used: s.kv.used, free: s.kv.free, cachedFree: s.kv.cachedFree,
                usage: s.kv.used / s.kv.numBlocks, seqIds: s.kv.seqIds, parkedSeqIds: s.kv.parkedSeqIds,
            },
            prefixCache: { queries: s.kv.queries, hits: s.kv.hits, hitRate: s.kv.queries > 0 ? s.kv.hits / s.kv.queries : 0, evictions: s.kv.evictions },
            preemptions: s.preemptions, steps: s.steps, time: { ...this.time }, heap: { ...this.heap }, graphs: { ...this.graphs },
            tokensPerSecond: gen / span, promptTokensPerSecond: prompt / span,
            totals: { ...this.totals, finished: { ...this.totals.finished } },
            healthy: extra.healthy, closing: extra.closing, stalledMs: extra.stalledMs,
        };
    }
}
