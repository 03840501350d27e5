// The reproducers of the hardening issue, over real HTTP against `batchwise serve` in a child process: each
// request that used to abort the process, hold the libuv pool or slip past the queue bound gets its answer, the
// process stays up, and it exits on SIGTERM with tokenizations in flight.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const cli = join(import.meta.dirname, "..", "..", "dist", "lib", "cli", "main.js");
const CTX = 1024;

interface Reply { status: number; body: any }

async function post(base: string, path: string, body: unknown, timeoutMs = 60_000): Promise<Reply> {
    const r = await fetch(base + path, {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs),
    });
    return { status: r.status, body: JSON.parse(await r.text()) };
}

interface Served { proc: ChildProcess; base: string; exited: Promise<number | null> }

async function serve(model: string, args: string[]): Promise<Served> {
    const proc = spawn(process.execPath, [cli, "serve", "--model", `q=${model}`, "--port", "0", "--gpu-layers", String(gpuLayers), "--no-warmup", "--log-level", "warn", ...args],
        { stdio: ["ignore", "ignore", "pipe"] });
    const exited = new Promise<number | null>((r) => proc.on("exit", (code) => r(code)));
    let stderr = "";
    const base = await new Promise<string>((resolve, reject) => {
        proc.stderr!.on("data", (d) => {
            stderr += d;
            const m = /ready on (http:\/\/\S+)/.exec(stderr);
            if (m) resolve(m[1]);
        });
        void exited.then((code) => reject(new Error(`serve exited (${code}) before it was ready: ${stderr}`)));
    });
    return { proc, base, exited };
}

describe("intake: the hardening reproducers over HTTP", () => {
    let model: string;
    let s: Served;

    before(async () => {
        model = await modelPath(tinyQwen);
        s = await serve(model, ["--ctx-size", String(CTX), "--parallel", "2", "--max-queued", "4"]);
    });
    after(() => s?.proc.kill("SIGKILL"));

    it("top_k at, around and far above the vocabulary samples (it aborted the process)", async () => {
        for (const top_k of [151936, 151935, 151664, 131073, 2 ** 31 - 1]) {
            const c = await post(s.base, "/v1/completions", { prompt: "hi", max_tokens: 2, top_k });
            assert.equal(c.status, 200, JSON.stringify(c.body));
            const chat = await post(s.base, "/v1/chat/completions", { messages: [{ role: "user", content: "hi" }], max_tokens: 2, top_k });
            assert.equal(chat.status, 200, JSON.stringify(chat.body));
        }
    });

    it("bounds the queue in sequences: one request asking for more than it holds is a 400", async () => {
        const one = await post(s.base, "/v1/completions", { prompt: "x", n: 5, max_tokens: 1 });
        assert.equal(one.status, 400, JSON.stringify(one.body));
        assert.equal(one.body.error.param, "n");
        const many = await post(s.base, "/v1/completions", { prompt: ["a", "b", "c"], n: 2, max_tokens: 1 });
        assert.equal(many.status, 400, JSON.stringify(many.body));
        assert.match(many.body.error.message, /3 prompts x 'n' 2 is 6 sequences.*\(4\)/);
        const fits = await post(s.base, "/v1/completions", { prompt: ["a", "b"], n: 2, max_tokens: 1 });
        assert.equal(fits.status, 200, JSON.stringify(fits.body));
        assert.equal(fits.body.choices.length, 4);
    });

    it("refuses prompts past the length limit before tokenizing, and keeps tokenizing for others while big ones run", async () => {
        const limit = 16 * CTX;
        const over = await post(s.base, "/tokenize", { prompt: "<|im_start|>".repeat(Math.ceil(limit / 12) + 1) });
        assert.equal(over.status, 400, JSON.stringify(over.body));
        assert.equal(over.body.error.code, "context_length_exceeded");
        const overChat = await post(s.base, "/v1/chat/completions", { messages: [{ role: "user", content: "a".repeat(limit + 1) }], max_tokens: 1 });
        assert.equal(overChat.status, 400);
        // the largest texts taken, four at once (four of them held every libuv thread for 47 s each): a small
        // request beside them is answered, and so is a generation (decodes need a pool thread too)
        const big = Array.from({ length: 4 }, () => post(s.base, "/tokenize", { prompt: "<|im_start|>".repeat(Math.floor(limit / 12)) }));
        const small = await post(s.base, "/tokenize", { prompt: "hello" }, 30_000);
        assert.equal(small.status, 200);
        const gen = await post(s.base, "/v1/completions", { prompt: "hello", max_tokens: 3, ignore_eos: true }, 30_000);
        assert.equal(gen.status, 200);
        for (const r of await Promise.all(big)) {
            assert.equal(r.status, 200);
            assert.equal(r.body.count, Math.floor(limit / 12));
        }
    });

    it("exits on SIGTERM while texts are being tokenized", async () => {
        const t = await serve(model, ["--ctx-size", String(CTX), "--parallel", "2", "--drain-timeout", "5"]);
        try {
            const texts = Array.from({ length: 6 }, () => post(t.base, "/tokenize", { prompt: "<|im_start|>".repeat(Math.floor((16 * CTX) / 12)) }).catch(() => null));
            await new Promise((r) => setTimeout(r, 50));
            t.proc.kill("SIGTERM");
            // the drain timeout (5 s) plus the CLI's grace (15 s) is the most it may take; it should take far less
            const code = await Promise.race([t.exited, new Promise((r) => setTimeout(() => r("still running"), 25_000))]);
            assert.equal(code, 0);
            await Promise.all(texts);
        } finally {
            t.proc.kill("SIGKILL");
        }
    });
});
