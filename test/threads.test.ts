// The addon from several threads: worker_threads loading it at once, the main thread before and after a
// worker, a worker terminated while its work is on the libuv pool, and per-thread loggers. Each scenario
// runs in a child node process (test/threads-child.ts), so that a crash is that child's exit code (134 for
// an abort, 139 for a segfault) and not the end of this test run.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { LlamaModel } from "../lib/index.js";
import type { ChildConfig } from "./threads-child.js";
import { generate, modelPath, randomPrompt, tinyQwen } from "./helpers.js";

const child = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "threads-child.js");

function runChild(scenario: string, config: ChildConfig): any {
    const r = spawnSync(process.execPath, [child, scenario, JSON.stringify(config)], {
        encoding: "utf8",
        timeout: 180_000,
    });
    const tail = `${r.stdout ?? ""}\n${r.stderr ?? ""}`.trim().split("\n").slice(-25).join("\n");
    assert.equal(r.error, undefined, `the child did not run: ${r.error}`);
    assert.equal(r.signal, null, `the child was killed by ${r.signal}:\n${tail}`);
    assert.equal(r.status, 0, `the child exited with ${r.status}:\n${tail}`);
    const line = r.stdout.split("\n").find((l) => l.startsWith("RESULT "));
    assert.ok(line, `the child printed no result:\n${tail}`);
    return JSON.parse(line.slice("RESULT ".length));
}

describe("threads", () => {
    let config: ChildConfig;
    let expected: number[];

    before(async () => {
        // the model is generated here, once: workers writing the same file at once would race
        config = { path: await modelPath(tinyQwen), prompt: randomPrompt(8, 1), n: 8 };
        const model = await LlamaModel.load(config.path, { gpuLayers: 0 });
        const ctx = await model.createContext({ contextSize: 512, maxSequences: 1, batchSize: 256, threads: 1 });
        expected = await generate(ctx, 0, config.prompt, config.n);
        ctx.dispose();
        model.dispose();
    });

    it("two workers load the addon and decode at the same time", () => {
        const r = runChild("two-workers", config);
        assert.deepEqual(r.workers, [expected, expected]);
    });

    it("main thread, then a worker, then the main thread again", () => {
        const r = runChild("main-worker-main", config);
        assert.deepEqual(r.first, expected, "main thread before the worker");
        assert.deepEqual(r.worker, expected, "the worker");
        assert.deepEqual(r.again, expected, "main thread after the worker, on the context it made before");
        assert.deepEqual(r.fresh, expected, "main thread after the worker, on a fresh load");
    });

    it("a worker terminated (or exiting) with decodes and a tokenization in flight leaves the process working", () => {
        const r = runChild("terminate", config);
        // the work was still running when terminate() was called (else the scenario tests nothing)
        assert.equal(r.settledBeforeTerminate, 0, "the worker's work finished before it was terminated");
        assert.equal(r.terminated, 1, "worker.terminate() resolves with exit code 1");
        assert.equal(r.exitedWith, 3, "the worker that called process.exit(3) exits with 3");
        assert.deepEqual(r.main, expected, "main-thread decoding while the worker was torn down");
        assert.deepEqual(r.after, expected, "main thread after the worker was terminated");
        assert.deepEqual(r.fresh, expected, "a fresh load on the main thread");
        assert.deepEqual(r.worker, expected, "a new worker");
    });

    it("each thread's logger gets its own thread's lines", () => {
        const r = runChild("loggers", config);
        for (const w of r.workers) {
            assert.deepEqual(w.tokens, expected);
            assert.ok(w.lines > 0, "a worker's logger got no lines from its own load");
        }
        assert.equal(r.mainLinesDuringWorkers, 0, "the main thread's logger got the workers' lines");
        assert.ok(r.mainLines > 0, "the main thread's logger got no lines from its own load");
        assert.deepEqual(r.own, expected);
    });
});
