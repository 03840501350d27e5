// The benchmark's load generator and report, against the real server on a tiny model.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { closedLoop, percentile, randomTokens } from "../lib/bench/loadgen.js";
import { engineCounters, engineFigures } from "../lib/bench/bench.js";
import { markdown, svg, type Report } from "../lib/bench/report.js";
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
});
