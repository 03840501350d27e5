// The benchmark's load generator and report, against the real server on a tiny model.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer as httpServer, type Server } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
    closedLoop, knee, openLoop, openLoopStats, percentile, poissonSchedule, randomTokens, type OpenLoopResult, type OpenLoopStats, type RunStats,
} from "../lib/bench/loadgen.js";
import { engineCounters, engineFigures, IDE_BUDGET_MS, LONG_SHARE, runBench } from "../lib/bench/bench.js";
import { ideKnees, markdown, svg, type CaseResult, type Report } from "../lib/bench/report.js";
import { createServer } from "../lib/server/server.js";
import { gpuLayers, modelPath, tinyQwen } from "./helpers.js";

describe("bench", () => {
    it("computes nearest-rank percentiles", () => {
        const xs = Array.from({ length: 100 }, (_, i) => 100 - i);
        assert.equal(percentile(xs, 50), 50);
        assert.equal(percentile(xs, 99), 99);
        assert.equal(percentile(xs, 100), 100);
        assert.equal(percentile([7], 99), 7);
        assert.ok(Number.isNaN(percentile([], 50)));
    });

    it("drives a server in a closed loop and counts exactly the work it asked for", async () => {
        const server = await createServer({
            models: [{ path: await modelPath(tinyQwen), options: { gpuLayers, contextSize: 2048, maxRunning: 8 } }],
            port: 0, logger: false, warmup: false,
        });
        try {
            await server.ready();
            const reqs = Array.from({ length: 10 }, (_, i) => ({ prompt: randomTokens(40, i), maxTokens: 6 }));
            const engine = server.engine(server.modelNames[0])!;
            const before = await engineCounters(server.url);
            let peak = 0;
            const timer = setInterval(() => (peak = Math.max(peak, engine.stats().running)), 1);
            const { records, stats } = await closedLoop(server.url, undefined, reqs, 4);
            clearInterval(timer);
            assert.equal(stats.requests, 10);
            assert.equal(stats.errors, 0, stats.firstError);
            assert.equal(stats.outputTokens, 60, "ignore_eos: every request generates max_tokens");
            assert.ok(peak <= 4, `closed loop at 4: at most 4 running (saw ${peak})`);
            assert.ok(records.every((r) => r.ttftMs > 0 && r.e2eMs >= r.ttftMs));
            assert.ok(stats.outputTokensPerS > 0 && stats.ttftMs.p99 >= stats.ttftMs.p50);
            // batchwise's own figures for the case, from its /metrics
            const after = await engineCounters(server.url);
            assert.ok(before && after, "the engine counters are on /metrics");
            assert.equal(after.generated - before.generated, 60);
            assert.equal(after.computed - before.computed, 400, "ten 40-token prompts, none cached");
            const fig = engineFigures(before, after, stats.wallS);
            assert.ok(fig["engine steps"] >= 6 * 10 / 4, `at most 4 sequences per step: ${fig["engine steps"]} steps`);
            assert.ok(fig["engine busy %"] > 0 && fig["engine busy %"] <= 100, `busy ${fig["engine busy %"]}%`);
            assert.ok(fig["native decode % of steps"] > 0 && fig["native decode % of steps"] <= 100);
            assert.equal(fig["tokens per step"], 460 / fig["engine steps"]);
            const bad = await closedLoop(server.url, "no-such-model", reqs.slice(0, 2), 2);
            assert.equal(bad.stats.errors, 2);
            assert.match(bad.stats.firstError ?? "", /HTTP 404/);

            const report: Report = {
                date: "2026-11-21", command: "npx batchwise bench --quick", device: "test", llamaTag: "v0.5.0",
                model: { path: "m.gguf", shape: "tiny", parameters: 1e6, sizeBytes: 1e6 }, settings: {},
                servers: [{ server: "llama-server", workloads: ["throughput"], args: ["-m", "m.gguf", "-np", "64"] }],
                results: [
                    { workload: "throughput", label: "w", server: "batchwise", stats: { ...stats, outputTokensPerS: 300 } },
                    { workload: "throughput", label: "w", server: "llama-server", stats: { ...stats, outputTokensPerS: 100 } },
                ],
                bounds: [{ label: "w", outputTokensPerS: 400, raw: {} }],
            };
            const md = markdown(report);
            assert.match(md, /\| w \| batchwise \| 300 \| 3\.00x \| 75% \|/);
            assert.match(md, /- llama-server \(throughput\): `-m m\.gguf -np 64`/);
            assert.match(md, /\| w \| llama-batched-bench \(raw engine bound\) \| 400 \| 4\.00x \|/);
            const chart = svg(report);
            assert.match(chart, /^<svg/);
            assert.equal((chart.match(/<rect /g) ?? []).length, 3 + 3, "three bars and three legend keys");
        } finally {
            await server.close();
        }
    });

    it("draws a seeded Poisson schedule: the asked rate, exponential gaps, users at random, the same for a seed", () => {
        const rate = 20, durationS = 1000, users = 16;
        const a = poissonSchedule(rate, durationS, users, 7);
        // the count of a Poisson process over 1000 s at 20/s: 20000, standard deviation 141 (0.7%)
        assert.ok(Math.abs(a.length / durationS - rate) / rate < 0.03, `mean rate ${a.length / durationS}`);
        const gaps = a.map((x, i) => x.atMs - (i === 0 ? 0 : a[i - 1].atMs));
        assert.ok(gaps.every((g) => g > 0) && a.at(-1)!.atMs < durationS * 1000, "ascending, inside the duration");
        const mean = gaps.reduce((x, y) => x + y, 0) / gaps.length;
        const sd = Math.sqrt(gaps.reduce((x, g) => x + (g - mean) ** 2, 0) / gaps.length);
        assert.ok(Math.abs(sd / mean - 1) < 0.05, `exponential gaps have a coefficient of variation of 1 (got ${sd / mean})`);
        const share = Array.from({ length: users }, (_, u) => a.filter((x) => x.user === u).length / a.length);
        assert.ok(share.every((x) => Math.abs(x - 1 / users) < 0.1 / users), `users drawn uniformly: ${share.map((x) => x.toFixed(3)).join(" ")}`);
        assert.deepEqual(poissonSchedule(rate, 10, users, 7), a.filter((x) => x.atMs < 10_000), "the same seed replays the same schedule");
        assert.notDeepEqual(poissonSchedule(rate, 10, users, 8), poissonSchedule(rate, 10, users, 7));
        const slow = poissonSchedule(0.5, 2000, 1, 3);
        assert.ok(Math.abs(slow.length / 2000 - 0.5) / 0.5 < 0.1, `a slow rate too: ${slow.length / 2000}`);
        assert.throws(() => poissonSchedule(0, 10, 1, 1), RangeError);
        assert.throws(() => poissonSchedule(1, 10, 0, 1), RangeError);
    });

    it("puts the knee at the highest rate that meets the budget with every lower rate meeting it", () => {
        const r = (targetRps: number, meetsBudget: boolean) => ({ targetRps, meetsBudget });
        assert.equal(knee([r(4, true), r(8, true), r(16, false), r(24, false), r(32, false)]), 8);
        assert.equal(knee([r(16, false), r(4, true), r(8, true)]), 8, "rates in any order");
        assert.equal(knee([r(4, true), r(8, false), r(16, true)]), 4, "a rate met again after a miss does not move the knee");
        assert.equal(knee([r(4, true), r(32, true)]), 32);
        assert.equal(knee([r(4, false), r(8, true)]), null, "the lowest rate missed");
        assert.equal(knee([]), null);
    });

    it("measures an open-loop rate in its window: lower bounds for aborted requests, failures, the budget", () => {
        const rec = (scheduledMs: number, ttftMs: number, e2eMs: number, x: { ok?: boolean; aborted?: boolean; out?: number } = {}) => ({
            ok: x.ok ?? true, aborted: x.aborted ?? false, scheduledMs, startMs: scheduledMs + 1, ttftMs, itlMs: [], outputTokens: x.out ?? 4, e2eMs,
            ...(x.ok === false && !x.aborted && { error: "HTTP 500: boom" }),
        });
        const r: OpenLoopResult = {
            records: [
                rec(500, 100, 700), // in the warm-up: not measured, but its completion (1201 ms) is in the window
                rec(1000, 100, 300), rec(2000, 200, 400), rec(3000, 600, 900), rec(4000, 300, 500),
                rec(5000, NaN, NaN, { ok: false }), // failed: no TTFT, counted
                rec(9000, 50, NaN, { ok: false, aborted: true }), // aborted after its first token: a real TTFT
                rec(9500, NaN, NaN, { ok: false, aborted: true }), // aborted before: a lower bound, wallMs - startMs
            ],
            sendEndMs: 10_000, peakInFlight: 3, wallMs: 12_000,
        };
        const s = openLoopStats(r, { targetRps: 0.7, durationS: 10, warmupS: 1, budgetMs: 500, maxInFlight: 64, scheduled: 8 });
        assert.equal(s.windowS, 9);
        assert.equal(s.measured, 7);
        assert.equal(s.failed, 1);
        assert.equal(s.unfinished, 2);
        assert.equal(s.ttftLowerBounds, 1);
        // samples: 100, 200, 600, 300, 50, and 12000 - 9501 = 2499
        assert.equal(s.ttftMs.p50, 200);
        assert.equal(s.ttftMs.p95, 2499);
        assert.equal(s.ttftMs.p99, 2499);
        assert.equal(s.withinBudget, 4 / 7, "100, 200, 300 and 50 of the 7 measured");
        assert.equal(s.achievedRps, 5 / 9, "the five completions inside [1 s, 10 s]");
        assert.equal(s.outputTokensPerS, 20 / 9);
        assert.equal(s.offeredRps, 7 / 9);
        assert.equal(s.meetsBudget, false);
        assert.match(s.firstError ?? "", /HTTP 500/);
        assert.equal(s.capHit, false);
        assert.equal(s.stoppedEarlyS, undefined);
        const good = openLoopStats({ ...r, records: r.records.slice(0, 5) }, { targetRps: 0.5, durationS: 10, warmupS: 1, budgetMs: 1000, maxInFlight: 64, scheduled: 5 });
        assert.equal(good.meetsBudget, true, `p95 ${good.ttftMs.p95} under 1000 ms, nothing failed or unfinished`);
        const stopped = openLoopStats({ ...r, records: r.records.slice(0, 5), sendEndMs: 4500, stopReason: "cap" }, { targetRps: 0.5, durationS: 10, warmupS: 1, budgetMs: 1000, maxInFlight: 4, scheduled: 10 });
        assert.equal(stopped.meetsBudget, false, "a rate that stopped early does not meet the budget");
        assert.equal(stopped.capHit, true);
        assert.equal(stopped.stoppedEarlyS, 4.5);
        assert.equal(stopped.windowS, 3.5);
    });

    it("sends open loop on schedule (requests in flight accumulate), stops at the cap or when the queue diverges, aborts after the drain", async () => {
        // a fake OpenAI server: the first token after firstMs (never, when Infinity), then 3 more 5 ms apart
        let firstMs = 300;
        const server: Server = httpServer((req, res) => {
            req.resume();
            req.on("end", () => {
                res.writeHead(200, { "content-type": "text/event-stream" });
                const chunk = (text: string) => res.write(`data: ${JSON.stringify({ choices: [{ text }] })}\n\n`);
                if (!Number.isFinite(firstMs)) return; // holds the request until the client goes
                let n = 0;
                const timer = setTimeout(function next() {
                    chunk("x");
                    if (++n < 4) return void setTimeout(next, 5);
                    res.end(`data: ${JSON.stringify({ choices: [], usage: { completion_tokens: 4 } })}\n\ndata: [DONE]\n\n`);
                }, firstMs);
                res.on("close", () => clearTimeout(timer));
            });
        });
        await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
        const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
        const every = (ms: number, n: number) => Array.from({ length: n }, (_, i) => ({ atMs: i * ms, request: { prompt: [1, 2, 3], maxTokens: 4 } }));
        try {
            const open = await openLoop(url, undefined, { arrivals: every(30, 10), durationMs: 300, maxInFlight: 100, divergeMs: 5000, drainMs: 5000 });
            assert.equal(open.records.length, 10);
            assert.ok(open.records.every((r) => r.ok && r.outputTokens === 4 && r.ttftMs >= 250 && r.startMs >= r.scheduledMs - 1), JSON.stringify(open.records[0]));
            assert.ok(open.peakInFlight >= 6, `arrivals do not wait for completions: ${open.peakInFlight} in flight at once`);
            assert.equal(open.stopReason, undefined);
            assert.equal(open.sendEndMs, 300);

            firstMs = 1000; // none ends before the fourth would be sent, even on a slow machine
            const capped = await openLoop(url, undefined, { arrivals: every(10, 40), durationMs: 400, maxInFlight: 3, divergeMs: 5000, drainMs: 5000 });
            assert.equal(capped.stopReason, "cap");
            assert.equal(capped.records.length, 3, "nothing sent past the cap");
            assert.equal(capped.peakInFlight, 3);
            assert.ok(capped.records.every((r) => r.ok), "the ones in flight finish in the drain");

            firstMs = 600;
            const diverged = await openLoop(url, undefined, { arrivals: every(50, 40), durationMs: 2000, maxInFlight: 100, divergeMs: 150, drainMs: 5000 });
            assert.equal(diverged.stopReason, "diverged");
            assert.ok(diverged.sendEndMs >= 150 && diverged.sendEndMs < 1000, `stopped at ${diverged.sendEndMs} ms`);
            assert.ok(diverged.records.length >= 3 && diverged.records.length < 20, `${diverged.records.length} sent`);

            firstMs = Infinity;
            const hung = await openLoop(url, undefined, { arrivals: every(10, 2), durationMs: 20, maxInFlight: 100, divergeMs: 60_000, drainMs: 200 });
            assert.equal(hung.records.length, 2);
            assert.ok(hung.records.every((r) => !r.ok && r.aborted && Number.isNaN(r.ttftMs)));
            assert.ok(hung.wallMs >= 200);
            const s = openLoopStats(hung, { targetRps: 100, durationS: 0.02, warmupS: 0, budgetMs: 500, maxInFlight: 100, scheduled: 2 });
            assert.equal(s.unfinished, 2);
            assert.equal(s.failed, 0);
            assert.equal(s.ttftLowerBounds, 2);
            assert.ok(s.ttftMs.p50 >= 180, `the wait until the abort: ${s.ttftMs.p50} ms`);
            assert.equal(s.meetsBudget, false);
        } finally {
            server.closeAllConnections();
            await new Promise((r) => server.close(r));
        }
    });

    it("reports the ide and long workloads with ratios against llama-server and each server's knee", () => {
        const stats: RunStats = { requests: 1, errors: 0, wallS: 1, outputTokens: 1, outputTokensPerS: 1, ttftMs: { p50: 1, p99: 1, mean: 1 }, itlMs: { p50: 1, p99: 1 } };
        const ide = (server: string, targetRps: number, p95: number): CaseResult => ({
            workload: "ide", label: `ide ${targetRps} req/s`, server, stats,
            ide: {
                targetRps, durationS: 30, warmupS: 5, windowS: 25, scheduled: 25 * targetRps, sent: 25 * targetRps, measured: 20 * targetRps,
                offeredRps: targetRps, achievedRps: targetRps, outputTokensPerS: 48 * targetRps, ttftMs: { p50: p95 / 2, p95, p99: p95 * 2, mean: p95 / 2 },
                ttftLowerBounds: 0, budgetMs: 500, withinBudget: 0.99, failed: 0, unfinished: 0, peakInFlight: 9, maxInFlight: 1024, capHit: false,
                sendLagMs: { p50: 0, p99: 1 }, meetsBudget: p95 < 500,
            },
        });
        const long = (server: string, ttft: number): CaseResult => ({
            workload: "long", label: "long", server, stats,
            long: { contextTokens: 1000, promptTokens: 900, outputTokens: 32, warmupTtftMs: ttft * 2, ttftMs: [ttft, ttft], ttftMsMean: ttft, prefillTokensPerS: 900 / (ttft / 1000), failed: 0 },
        });
        const report: Report = {
            date: "2026-11-30", command: "npx batchwise bench", device: "test", llamaTag: "v0.5.0",
            model: { path: "m.gguf", shape: "tiny", parameters: 1e6, sizeBytes: 1e6 }, settings: {}, servers: [], bounds: [],
            results: [
                ide("batchwise", 4, 100), ide("batchwise", 8, 200), ide("batchwise", 16, 900),
                ide("llama-server", 4, 400), ide("llama-server", 8, 800), ide("llama-server", 16, 4000),
                long("batchwise", 900), long("llama-server", 1000),
            ],
        };
        report.ideKnees = ideKnees(report.results);
        assert.deepEqual(report.ideKnees, [{ server: "batchwise", kneeRps: 8, rates: [4, 8, 16] }, { server: "llama-server", kneeRps: 4, rates: [4, 8, 16] }]);
        const md = markdown(report);
        assert.doesNotMatch(md, /\| of bound \|/, "no throughput table without its workloads");
        assert.match(md, /\| ide 8 req\/s \| batchwise \| 8\.0 \| 384 \| 100 \| 200 \| 0\.25x \| 400 \| 99% \| 0 \|/);
        assert.match(md, /\| ide 16 req\/s \| llama-server \| 16\.0 \| 768 \| 2000 \| \*\*4000\*\* \| 1\.00x \|/, "a p95 over the budget in bold");
        assert.match(md, /\| batchwise \| 8 \| 2\.00x \|/);
        assert.match(md, /\| llama-server \| 4 \| 1\.00x \|/);
        assert.match(md, /\| long \| batchwise \| 1000 \| 900 \| 900 \| 0\.90x \| 1000 \| 1\.11x \| 1800 \| 2 \| 0 \|/);
        assert.equal((svg(report).match(/<rect /g) ?? []).length, 1, "no bars for the ide and long workloads (the legend's bound key alone)");
        report.results = report.results.filter((c) => c.server !== "batchwise" || c.ide?.targetRps !== 4);
        report.ideKnees = ideKnees(report.results);
        assert.equal(report.ideKnees[0].kneeRps, 8);
        report.results.find((c) => c.server === "llama-server" && c.ide?.targetRps === 4)!.ide!.meetsBudget = false;
        const md2 = markdown({ ...report, ideKnees: ideKnees(report.results) });
        assert.match(md2, /\| llama-server \| below 4 \| +\|/);
        assert.match(md2, /\| batchwise \| 8 \| > 2\.00x \|/, "against a reference that missed its lowest rate: more than knee / that rate");
    });

    it("runs the throughput (--waves), ide and long workloads end to end against batchwise serve (--quick)", async () => {
        const out = await mkdtemp(join(tmpdir(), "bench-quick-"));
        const log: string[] = [];
        try {
            const contextSize = 1024;
            const report = await runBench({
                model: await modelPath(tinyQwen), gpuLayers, contextSize, parallel: 8, llamaKv: "slots", flashAttention: "auto",
                servers: ["batchwise"], workloads: ["throughput", "ide", "long"], concurrency: [2], waves: 3, quick: true, skipBound: true, out, log: (l) => log.push(l),
                // one CPU thread: on a shared machine two threads' spin barrier makes each step wait on a descheduled core
                batchwiseArgs: ["--threads", "1"],
            }, "test");
            assert.deepEqual(report.failures, undefined, log.join("\n"));
            assert.deepEqual(JSON.parse(readFileSync(join(out, "report.json"), "utf8")).ideKnees, report.ideKnees, "the JSON holds what was returned");
            const tp = report.results.filter((c) => c.workload === "throughput");
            assert.deepEqual(tp.map((c) => [c.label, c.stats.requests, c.stats.errors]), [["128 in / 16 out, concurrency 2", 6, 0]], "--waves 3 at concurrency 2: 6 requests");
            assert.equal(tp[0].stats.outputTokens, 6 * 16, "each of them ran to its 16 tokens");
            const rates = report.results.filter((c) => c.workload === "ide");
            assert.deepEqual(rates.map((c) => c.ide!.targetRps), [2, 4], "--quick's rates, in order");
            for (const c of rates) {
                const x = c.ide!;
                assert.equal(c.server, "batchwise");
                assert.equal(x.failed, 0, x.firstError);
                assert.equal(x.budgetMs, IDE_BUDGET_MS);
                assert.ok(x.scheduled >= x.sent && x.sent >= x.measured && x.measured > 0, `scheduled ${x.scheduled}, sent ${x.sent}, measured ${x.measured}`);
                assert.ok(x.windowS > 0 && x.windowS <= x.durationS && x.offeredRps > 0, JSON.stringify(x));
                assert.ok(x.achievedRps >= 0 && x.outputTokensPerS >= 0);
                assert.ok(x.ttftMs.p50 > 0 && x.ttftMs.p50 <= x.ttftMs.p95 && x.ttftMs.p95 <= x.ttftMs.p99, JSON.stringify(x.ttftMs));
                assert.ok(x.withinBudget >= 0 && x.withinBudget <= 1);
                assert.ok(x.peakInFlight >= 1 && x.peakInFlight <= x.maxInFlight);
                assert.equal(x.meetsBudget, x.ttftMs.p95 < IDE_BUDGET_MS && x.unfinished === 0 && !x.stopReason);
                assert.equal(c.stats.requests, x.measured);
            }
            const expected = knee(rates.map((c) => c.ide!) as OpenLoopStats[]);
            assert.deepEqual(report.ideKnees, [{ server: "batchwise", kneeRps: expected, rates: [2, 4] }]);
            if (expected !== null) assert.ok(rates.every((c) => c.ide!.targetRps > expected || c.ide!.ttftMs.p95 < IDE_BUDGET_MS), "every rate up to the knee has p95 under the budget");
            const l = report.results.find((c) => c.workload === "long")?.long;
            assert.ok(l, "the long workload reported");
            assert.equal(l.contextTokens, contextSize, "the context it ran with: ctx-size, under the model's 4096 trained");
            assert.equal(l.promptTokens, Math.floor(LONG_SHARE * contextSize));
            assert.equal(l.failed, 0, l.firstError);
            assert.equal(l.ttftMs.length, 2, "three runs, the first a warm-up");
            assert.ok(l.warmupTtftMs > 0 && l.ttftMs.every((t) => t > 0));
            assert.ok(Math.abs(l.prefillTokensPerS - l.promptTokens / (l.ttftMsMean / 1000)) < 1e-6);
            const md = readFileSync(join(out, "report.md"), "utf8");
            assert.match(md, /\| ide: 4 users x 128 prefix \+ 32 fresh in \/ 8 out, 2 req\/s \| batchwise \|/);
            assert.match(md, /\| long: 921-token prompt \(90% of 1024\) \/ 8 out \| batchwise \| 1024 \| 921 \|/);
            assert.match(md, /\| batchwise \| (below 2|2|4 \(every rate run\)) \|/);
        } finally {
            await rm(out, { recursive: true, force: true });
        }
    });
});

describe("bench-kv --from-json", () => {
    // a report as scripts/bench-kv.mjs writes it: paged f16 and two quantized modes, 4 sequences of 5 tokens
    const settings = { npp: [64], ntg: 5, npl: 4, modes: ["paged", "paged@q8_0", "streams@q8_0"], blockSize: 128, gpuLayers: 0,
        splitMode: "default", timing: "native", seed: 1, isolate: false, batchSize: 2048, ubatchSize: 512, flashAttention: "on", contextSize: { 64: 512 } };
    const f16 = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]];
    const run = (mode: string, kvType: string, tokens: number[][], extra: object = {}) =>
        ({ mode, npp: 64, ntg: 5, npl: 4, kvType, prefillTokPerS: 100, decodeTokPerS: 10, generated: { tokens }, ...extra });
    const report = {
        date: "2026-11-30", command: "node scripts/bench-kv.mjs", device: "test", llamaTag: "v0.5.0", model: { label: "fixture" }, settings, json: "r.json",
        results: [
            run("paged", "f16", f16),
            // differs from f16 at steps 3 and 1 in two sequences, identical in the others
            run("paged@q8_0", "q8_0", [[1, 2, 3, 0, 0], [6, 0, 8, 9, 10], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]]),
            // differs at step 0 in every sequence; its reference gaps make step 0 a near tie only for sequence 0
            run("streams@q8_0", "q8_0", f16.map((t) => [t[0] + 100, ...t.slice(1)]), {
                tieReference: { tokens: f16.map((t) => [t[0] + 100, ...t.slice(1)]), gaps: f16.map((_, s) => [s === 0 ? 0.001 : 0.5, 1, 1, 1, 1]) },
            }),
        ],
    };

    it("writes the report again, with each quantized mode held against the f16 run and the near-tie rule", async () => {
        const dir = await mkdtemp(join(tmpdir(), "bench-kv-"));
        try {
            const json = join(dir, "r.json"), md = join(dir, "r.md");
            writeFileSync(json, JSON.stringify(report));
            const r = spawnSync(process.execPath, [join(import.meta.dirname, "..", "..", "scripts", "bench-kv.mjs"), "--from-json", json, "--out", md], { encoding: "utf8" });
            assert.equal(r.status, 0, r.stderr);
            const text = readFileSync(md, "utf8");
            // paged@q8_0: 2 of 4 identical, first differences at steps 1 and 3 (median: the upper middle, 3; mean 2.0)
            assert.match(text, /\| 64 \| paged@q8_0 \| paged \| 2 of 4 \| 3 \| 2\.0 \|/);
            // streams@q8_0 has no f16 streams run, so it is held against paged: all 4 differ at step 0
            assert.match(text, /\| 64 \| streams@q8_0 \| paged \| 0 of 4 \| 0 \| 0\.0 \|/);
            // the near-tie rule against streams@q8_0's reference: sequences 0 and 1 differ from it at step 0, where only
            // sequence 0's gap is a near tie
            assert.match(text, /paged@q8_0: 0 of 4 sequences identical, 1 diverge at a near-tie, 3 elsewhere \(first at step 0, gap 0\.5\): \*\*outside the rule\*\*/);
            // the tables follow the report's modes, not this invocation's defaults (which include paged-shared)
            assert.doesNotMatch(text, /paged-shared/);
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
});

describe("bench-kv --mixed", () => {
    it("times decodes beside a prompt chunk in one call, in two calls and with a new shape each step (tiny model, CPU)", async () => {
        const dir = await mkdtemp(join(tmpdir(), "bench-kv-mixed-"));
        try {
            const md = join(dir, "r.md");
            const r = spawnSync(process.execPath, [join(import.meta.dirname, "..", "..", "scripts", "bench-kv.mjs"), "--shape", "tiny", "--npp", "64", "--ntg", "4",
                "--npl", "4", "--gpu-layers", "0", "--modes", "paged,streams", "--mixed", "16", "--out", md], { encoding: "utf8", timeout: 120_000 });
            assert.equal(r.status, 0, r.stderr);
            const report = JSON.parse(readFileSync(join(dir, "r.json"), "utf8"));
            const [paged, streams] = report.results;
            // the three extra sequences are paged mode's only: the streams baseline keeps npl streams, and no mixed phase
            assert.equal(paged.context.maxSequences, 4 + 3);
            assert.equal(streams.error, undefined, streams.error);
            assert.equal(streams.context.maxSequences, 4);
            assert.equal(streams.mixed, undefined);
            const m = paged.mixed;
            assert.ok(m, JSON.stringify(paged).slice(0, 500));
            assert.equal(m.chunk, 16);
            for (const k of ["togetherMs", "apartMs", "varyingMs"]) assert.ok(Number.isFinite(m[k]) && m[k] > 0, `${k}: ${m[k]}`);
            // one call a step together and varying, two apart
            assert.equal(m.perCallMs.together.length, m.steps);
            assert.equal(m.perCallMs.apart.length, 2 * m.steps);
            // the varying run's chunks shrink by one a step: a mean below N
            assert.ok(m.varyingChunkMean < 16 && m.varyingChunkMean >= 1);
            assert.match(readFileSync(md, "utf8"), /\| 64 \| paged \| 16 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|/);
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
});
