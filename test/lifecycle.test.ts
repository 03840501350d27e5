// Resource lifecycle: repeated load/decode/dispose does not leak host memory (or, on a GPU, device memory),
// and heavy calls keep the event loop free.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { getDevices, LlamaModel } from "../lib/index.js";
import { contextOptions, gpu, gpuLayers, modelPath, prefill, randomPrompt, tinyLlama, tinyQwen } from "./helpers.js";

function rssMb(): number {
    return process.memoryUsage().rss / 2 ** 20;
}

function gpuFreeBytes(): number {
    return getDevices().filter((d) => d.type === "gpu").reduce((s, d) => s + d.freeBytes, 0);
}

describe("lifecycle", () => {
    it("200 load/decode/dispose cycles keep RSS flat", async () => {
        const path = await modelPath(tinyLlama);
        const prompt = randomPrompt(16, 1, 32000);
        const cycle = async () => {
            const m = await LlamaModel.load(path, { gpuLayers });
            const c = await m.createContext(contextOptions({ contextSize: 256, maxSequences: 2, batchSize: 32 }));
            await prefill(c, 0, prompt);
            c.dispose();
            m.dispose();
        };
        for (let i = 0; i < 20; i++) await cycle(); // warm up allocator pools and caches
        global.gc?.();
        const before = rssMb();
        for (let i = 0; i < 180; i++) await cycle();
        global.gc?.();
        const after = rssMb();
        // a leak of the model (~8 MB) or the context per cycle would add well over a gigabyte
        assert.ok(after - before < 40, `RSS grew from ${before.toFixed(1)} MB to ${after.toFixed(1)} MB over 180 cycles`);
    });

    it("dispose gives the device memory back", { skip: !gpu && "GPU only (BATCHWISE_TEST_GPU=1)" }, async () => {
        const free0 = gpuFreeBytes();
        const m = await LlamaModel.load(await modelPath(tinyQwen), { gpuLayers: -1 });
        const c = await m.createContext(contextOptions({ contextSize: 32768, maxSequences: 8 }));
        const used = free0 - gpuFreeBytes();
        assert.ok(used > 32 * 2 ** 20, `model and 32K-cell context should take device memory, took ${used} bytes`);
        c.dispose();
        m.dispose();
        const back = gpuFreeBytes();
        assert.ok(free0 - back < 16 * 2 ** 20, `device memory not returned: ${(free0 - back) / 2 ** 20} MB still in use`);
    });

    it("a long decode does not block the event loop", async () => {
        const m = await LlamaModel.load(await modelPath(tinyQwen), { gpuLayers });
        const c = await m.createContext(contextOptions({ contextSize: 4096, maxSequences: 1, batchSize: 2048 }));
        let ticks = 0;
        let worst = 0;
        let last = performance.now();
        const timer = setInterval(() => {
            const now = performance.now();
            worst = Math.max(worst, now - last);
            last = now;
            ticks++;
        }, 1);
        const t0 = performance.now();
        for (let i = 0; i < 2; i++) await prefill(c, 0, randomPrompt(2048, i + 1), i * 2048);
        const elapsed = performance.now() - t0;
        clearInterval(timer);
        c.dispose();
        m.dispose();
        // the timer kept firing while the native work ran on another thread
        assert.ok(ticks >= Math.min(10, elapsed / 4), `only ${ticks} timer ticks in ${elapsed.toFixed(0)} ms`);
        assert.ok(worst < Math.max(50, elapsed / 4), `the event loop stalled for ${worst.toFixed(1)} ms`);
    });
});
