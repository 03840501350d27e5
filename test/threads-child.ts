// Child process (and worker script) for threads.test.ts. Each scenario runs in its own node process, so
// that a crash of the addon shows as that process's exit code instead of taking the test runner down:
//
//   node dist/test/threads-child.js <scenario> '<json config>'
//
// The main thread prints one line `RESULT <json>` and exits 0. Without arguments (as `node --test dist/test/`
// runs every file in the folder) it does nothing.
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { LlamaModel, setLogger, type LlamaContext } from "../lib/index.js";
import { generate } from "./helpers.js";

export interface ChildConfig {
    /** A tiny model made by test/helpers.ts (the parent generates it: workers must not race to write it). */
    path: string;
    prompt: number[];
    /** Tokens to generate greedily. */
    n: number;
}

interface WorkerTask {
    task: "generate" | "busy";
    config: ChildConfig;
    /** Install a logger in the worker and report how many lines it got. */
    logger?: boolean;
    /** "busy": the worker ends itself with process.exit(3) instead of waiting to be terminated. */
    exitSelf?: boolean;
}

const contextOptions = { contextSize: 512, maxSequences: 1, batchSize: 256, threads: 1 };

async function generateOnce(config: ChildConfig): Promise<number[]> {
    const model = await LlamaModel.load(config.path, { gpuLayers: 0 });
    const ctx = await model.createContext(contextOptions);
    const out = await generate(ctx, 0, config.prompt, config.n);
    ctx.dispose();
    model.dispose();
    return out;
}

// ---- worker side -----------------------------------------------------------------------------

function bigBatch(n: number, seq = 0): Parameters<LlamaContext["decode"]>[0] {
    return {
        tokens: Int32Array.from({ length: n }, (_, i) => 100 + ((i * 7919) % 20000)),
        positions: Int32Array.from({ length: n }, (_, i) => i),
        seqIds: new Int32Array(n).fill(seq),
        outputs: Uint8Array.from({ length: n }, (_, i) => (i === n - 1 ? 1 : 0)),
    };
}

async function workerMain(w: WorkerTask): Promise<void> {
    let lines = 0;
    if (w.logger) setLogger(() => { lines++; }, 1);
    if (w.task === "generate") {
        const tokens = await generateOnce(w.config);
        parentPort!.postMessage({ tokens, lines });
        return;
    }
    // "busy": start a long tokenization, two long prefills on two contexts, more decodes queued behind one of
    // them, and tell the parent while all of them are in flight. With libuv's 4 pool threads, the first three
    // run and the first queued decode waits for its context; the rest wait in libuv's queue. The parent
    // terminates this worker then; nothing here is ever awaited.
    const model = await LlamaModel.load(w.config.path, { gpuLayers: 0 });
    const big = { contextSize: 4096, maxSequences: 8, batchSize: 4096, ubatchSize: 512, threads: 1 };
    const ctxs = [await model.createContext(big), await model.createContext(big)];
    let settled = 0;
    const track = (p: Promise<unknown>) => p.then(() => { settled++; }, () => { settled++; });
    // seconds of plain BPE work (special tokens no longer take long: the splitter is linear since patch 0004)
    track(model.tokenize("hello world ".repeat(400_000)));
    track(ctxs[1].decode(bigBatch(4096)));
    track(ctxs[0].decode(bigBatch(2048)));
    // queued behind it (decodes on one context run one at a time, in no set order: each has its own sequence)
    for (let i = 1; i <= 6; i++) track(ctxs[0].decode(bigBatch(256, i)));
    setTimeout(() => {
        parentPort!.postMessage({ busy: true, settled });
        if (w.exitSelf) process.exit(3);
    }, 20);
}

if (!isMainThread) {
    workerMain(workerData as WorkerTask).catch((e) => {
        parentPort!.postMessage({ error: String(e?.stack ?? e) });
    });
}

// ---- main side -------------------------------------------------------------------------------

interface WorkerResult { tokens?: number[]; lines?: number; busy?: boolean; settled?: number; error?: string }

function startWorker(task: WorkerTask): { worker: Worker; message: Promise<WorkerResult>; exit: Promise<number> } {
    const worker = new Worker(new URL(import.meta.url), { workerData: task });
    const exit = new Promise<number>((resolve) => worker.once("exit", resolve));
    const message = new Promise<WorkerResult>((resolve, reject) => {
        worker.once("message", (m: WorkerResult) => (m.error ? reject(new Error(`worker: ${m.error}`)) : resolve(m)));
        worker.once("error", reject);
        exit.then((code) => reject(new Error(`worker exited with code ${code} before answering`)));
    });
    return { worker, message, exit };
}

async function runWorker(task: WorkerTask): Promise<WorkerResult> {
    const w = startWorker(task);
    const m = await w.message;
    await w.exit;
    return m;
}

const scenarios: Record<string, (config: ChildConfig) => Promise<unknown>> = {
    // two workers load the addon and decode at the same time (the main thread never loads it)
    async "two-workers"(config) {
        const [a, b] = await Promise.all([runWorker({ task: "generate", config }), runWorker({ task: "generate", config })]);
        return { workers: [a.tokens, b.tokens] };
    },

    // the main thread, then a worker, then the main thread again: with a model and a context it made before
    // the worker existed, and with a fresh load after the worker is gone
    async "main-worker-main"(config) {
        const model = await LlamaModel.load(config.path, { gpuLayers: 0 });
        const ctx = await model.createContext(contextOptions);
        const first = await generate(ctx, 0, config.prompt, config.n);
        const worker = (await runWorker({ task: "generate", config })).tokens;
        ctx.clear();
        const again = await generate(ctx, 0, config.prompt, config.n);
        const fresh = await generateOnce(config);
        ctx.dispose();
        model.dispose();
        return { first, worker, again, fresh };
    },

    // a worker is terminated while decodes (running and queued) and a tokenization are in flight on the
    // libuv pool, and while the main thread decodes; another one ends itself with process.exit() in the same
    // state; then the main thread and a new worker decode
    async terminate(config) {
        const model = await LlamaModel.load(config.path, { gpuLayers: 0 });
        const ctx = await model.createContext(contextOptions);
        const busy = startWorker({ task: "busy", config, logger: true });
        const state = await busy.message;
        const during = generate(ctx, 0, config.prompt, config.n); // main-thread work while the worker goes
        const t0 = performance.now();
        const terminated = await busy.worker.terminate();
        const terminateMs = performance.now() - t0;
        const main = await during;
        // a worker that ends itself (process.exit) with its work in flight
        const quits = startWorker({ task: "busy", config, exitSelf: true });
        const quitState = await quits.message;
        const exitedWith = await quits.exit;
        ctx.clear();
        const after = await generate(ctx, 0, config.prompt, config.n);
        const fresh = await generateOnce(config);
        const worker = (await runWorker({ task: "generate", config })).tokens;
        ctx.dispose();
        model.dispose();
        return {
            settledBeforeTerminate: state.settled! + quitState.settled!, terminated, terminateMs, exitedWith,
            main, after, fresh, worker,
        };
    },

    // loggers: each thread's logger gets the lines of its own work; the main thread's gets none of the workers'
    async loggers(config) {
        let mainLines = 0;
        setLogger(() => { mainLines++; }, 1);
        const [a, b] = await Promise.all([
            runWorker({ task: "generate", config, logger: true }),
            runWorker({ task: "generate", config, logger: true }),
        ]);
        const beforeOwnLoad = mainLines;
        const own = await generateOnce(config);
        setLogger(null);
        return { workers: [a, b], mainLinesDuringWorkers: beforeOwnLoad, mainLines, own };
    },
};

if (isMainThread && process.argv[2]) {
    const run = scenarios[process.argv[2]];
    if (!run) {
        console.error(`unknown scenario ${process.argv[2]}`);
        process.exit(2);
    }
    const result = await run(JSON.parse(process.argv[3] ?? "{}") as ChildConfig);
    console.log(`RESULT ${JSON.stringify(result)}`);
}
