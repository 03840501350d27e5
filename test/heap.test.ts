// The process heap under glibc's malloc: heapStats() reads it, trimHeap() gives its free pages back to the
// system, and the engine trims on its own (trimHeapMs) so that a long-running server's resident size follows
// the memory in use rather than everything its threads ever freed.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Engine, heapStats, trimHeap } from "../lib/index.js";
import { gpuLayers, modelPath, randomPrompt, tinyQwen } from "./helpers.js";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime !== undefined;

/** Resident memory now, from /proc (process.memoryUsage().rss reads the same). */
function rssBytes(): number {
    const pages = Number(readFileSync("/proc/self/statm", "utf8").split(" ")[1]);
    return pages * 4096;
}

describe("heap", { skip: glibc ? false : "glibc only (malloc_trim, mallinfo2)" }, () => {
    it("heapStats() reads malloc's books: what is in use within what it holds", () => {
        const h = heapStats();
        assert.ok(h !== null);
        assert.ok(h.inUseBytes > 0 && h.heldBytes >= h.inUseBytes && h.mmapBytes <= h.inUseBytes, JSON.stringify(h));
        // 64 MB allocated (and touched) shows up as in use
        const blocks = Array.from({ length: 640 }, () => Buffer.alloc(100_000, 1));
        const grown = heapStats()!;
        assert.ok(grown.inUseBytes - h.inUseBytes > 60e6, `in use grew by ${grown.inUseBytes - h.inUseBytes} bytes`);
        assert.equal(blocks.length, 640);
    });

    it("trimHeap() gives back free pages that a live block above them kept malloc from returning", () => {
        // 100 KB blocks come from an arena (below malloc's mmap threshold); the last one stays alive, so the
        // free space below it is not the arena's top and free() alone gives none of it back
        let blocks: Buffer[] | null = Array.from({ length: 1500 }, () => Buffer.alloc(100_000, 1));
        const keep = blocks[blocks.length - 1];
        blocks = null;
        gc();
        gc();
        const before = rssBytes();
        const released = trimHeap();
        const after = rssBytes();
        assert.equal(keep.length, 100_000);
        assert.equal(released, true);
        assert.ok(before - after > 100e6, `RSS went from ${(before / 1e6).toFixed(0)} to ${(after / 1e6).toFixed(0)} MB`);
    });

    it("the engine trims while it works and when it goes idle, and never with trimHeapMs 0", async () => {
        const path = await modelPath(tinyQwen);
        const run = async (trimHeapMs: number) => {
            const e = await Engine.load({ model: path, gpuLayers, contextSize: 2048, maxRunning: 4, batchTokens: 256, trimHeapMs });
            try {
                await Promise.all([0, 1, 2].map((i) => e.generate({ prompt: randomPrompt(40, i), maxTokens: 24, ignoreEos: true }).result()));
                await new Promise((r) => setTimeout(r, 50)); // the loop goes idle
                return e.stats().heap;
            } finally {
                await e.close();
            }
        };
        const often = await run(1);
        assert.ok(often.trims >= 10, `trims with trimHeapMs 1: ${often.trims}`);
        assert.ok(often.trimMs >= 0);
        const never = await run(0);
        assert.equal(never.trims, 0);
    });
});
