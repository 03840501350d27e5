// The short soak, as `npm test` runs it: the soak command (lib/bench/soak.ts) starts `batchwise serve` on the
// demo model with a small KV cache and drives its mixed load (chat and completions, streamed and not, n 1-4,
// logprobs, JSON grammars, stop strings, seeds, clients that go away) for a minute at low concurrency. The
// soak fails on any 5xx, stream error event, unexpected 4xx, dropped connection, hang, invalid grammar
// output or KV block left in use, and on gross RSS growth (a run this short reports its RSS slope without
// judging it: see docs/hardening.md). BATCHWISE_SOAK_MINUTES and BATCHWISE_SOAK_CONCURRENCY change its size.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

const root = join(import.meta.dirname, "..", "..");
const soak = join(root, "dist", "lib", "bench", "soak.js");
const minutes = Number(process.env.BATCHWISE_SOAK_MINUTES ?? 1);
const concurrency = Number(process.env.BATCHWISE_SOAK_CONCURRENCY ?? 6);

describe("soak", () => {
    it(`${minutes} min of mixed load at concurrency ${concurrency}: no 5xx, error event, hang or KV left used`, { timeout: (minutes * 60 + 420) * 1000 }, async () => {
        const dir = mkdtempSync(join(tmpdir(), "batchwise-soak-"));
        const out = join(dir, "soak.json");
        try {
            const args = [soak, "--minutes", String(minutes), "--concurrency", String(concurrency), "--ctx-size", "2048",
                "--sample-seconds", "2", "--hang-seconds", "120", "--server-arg=--no-warmup", "--out", out];
            const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
            let log = "";
            child.stderr.on("data", (d: Buffer) => {
                log += d.toString();
                process.stderr.write(d);
            });
            const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
            assert.equal(code, 0, `the soak failed (exit ${code}):\n${log.slice(-6000)}`);
            const report = JSON.parse(readFileSync(out, "utf8")) as {
                ok: boolean; load: { requests: number; byResult: Record<string, number> }; kv: { usedAfterLoad: number | null };
                samples: { mallocInUseMb: number | null; mallocHeldMb: number | null }[];
            };
            assert.equal(report.ok, true);
            assert.ok(report.load.requests > 0, "the load completed no request");
            assert.equal(report.kv.usedAfterLoad, 0);
            // the server's malloc books are sampled (what tells a leak from held memory), on glibc
            const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime !== undefined;
            if (glibc) assert.ok(report.samples.some((x) => x.mallocInUseMb !== null && x.mallocHeldMb !== null && x.mallocHeldMb >= x.mallocInUseMb));
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});
