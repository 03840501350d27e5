// The server's HTTP layer, below and around the routes: requests node's parser refuses (sent over raw
// sockets, as a client that means harm would), timeouts for slow headers and bodies (and none for long
// responses), the content type, CORS, and the validation messages.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { createServer, type BatchwiseServer, type ServerOptions } from "../lib/server/server.js";
import { gpu, gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const KEY = "test-key-http";
const engineOptions = { gpuLayers, contextSize: 2048, maxSequences: 4, batchTokens: 512, flashAttention: gpu ? "on" as const : "auto" as const };
const cli = new URL("../lib/cli/main.js", import.meta.url).pathname;

async function start(o: Partial<ServerOptions> = {}): Promise<BatchwiseServer> {
    const server = await createServer({ models: [{ name: "q", path: await modelPath(tinyQwen), options: engineOptions }], port: 0, logger: false, warmup: false, ...o });
    await server.ready();
    return server;
}

interface RawResponse { status: number; headers: Record<string, string>; text: string; body: any; ms: number; closed: boolean }

/**
 * Sends bytes on a fresh TCP connection (all at once, or by a function that writes them over time) and
 * reads the first response, until the server closes the connection or the response is whole.
 */
function raw(url: string, send: string | Buffer | ((s: Socket) => Promise<void>), timeoutMs = 15_000): Promise<RawResponse> {
    const { hostname, port } = new URL(url);
    return new Promise((resolve, reject) => {
        const t0 = performance.now();
        const s = connect(Number(port), hostname);
        let buf = Buffer.alloc(0);
        let done = false;
        const finish = (closed: boolean) => {
            if (done) return;
            const text = buf.toString("latin1");
            const head = text.indexOf("\r\n\r\n");
            if (head < 0) {
                if (closed) {
                    done = true;
                    clearTimeout(timer);
                    reject(new Error(`the connection closed without a response (got ${JSON.stringify(text)})`));
                }
                return;
            }
            const [statusLine, ...lines] = text.slice(0, head).split("\r\n");
            const headers: Record<string, string> = {};
            for (const l of lines) {
                const i = l.indexOf(":");
                headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
            }
            const body = buf.subarray(head + 4);
            const length = headers["content-length"] === undefined ? undefined : Number(headers["content-length"]);
            if (!closed && (length === undefined || body.length < length)) return;
            done = true;
            clearTimeout(timer);
            const bodyText = body.subarray(0, length ?? body.length).toString("utf8");
            let parsed: unknown;
            try {
                parsed = JSON.parse(bodyText);
            } catch {
                parsed = undefined;
            }
            s.destroy();
            resolve({ status: Number(statusLine.split(" ")[1]), headers, text: bodyText, body: parsed, ms: performance.now() - t0, closed });
        };
        const timer = setTimeout(() => {
            done = true;
            s.destroy();
            reject(new Error(`no response in ${timeoutMs} ms (got ${JSON.stringify(buf.toString("latin1").slice(0, 200))})`));
        }, timeoutMs);
        s.on("data", (d) => {
            buf = Buffer.concat([buf, d]);
            finish(false);
        });
        s.on("close", () => finish(true));
        s.on("error", () => {}); // a reset after the response is fine; none before it is caught by 'close'
        s.on("connect", () => {
            if (typeof send === "function") send(s).catch(() => {});
            else s.write(send);
        });
    });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function assertShaped(r: { status: number; body: any; text: string; headers: Record<string, string> | Headers }, status: number, code?: string | null): void {
    assert.equal(r.status, status, r.text);
    const e = r.body?.error;
    assert.ok(e && typeof e.message === "string" && e.message.length > 0, `an OpenAI-shaped error: ${r.text}`);
    assert.equal(typeof e.type, "string");
    assert.ok("param" in e && "code" in e, r.text);
    if (code !== undefined) assert.equal(e.code, code, r.text);
    const id = r.headers instanceof Headers ? r.headers.get("x-request-id") : r.headers["x-request-id"];
    assert.match(id ?? "", /^[\w.:-]{1,128}$/, "an x-request-id");
}

async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}) {
    // no body: no content type either
    const r = body === undefined
        ? await fetch(url + path, { method: "POST", headers })
        : await fetch(url + path, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: typeof body === "string" ? body : JSON.stringify(body) });
    const text = await r.text();
    let parsed: any;
    try {
        parsed = JSON.parse(text);
    } catch {
        parsed = undefined;
    }
    return { status: r.status, headers: r.headers, text, body: parsed };
}

describe("server HTTP layer", () => {
    let server: BatchwiseServer;
    let url: string;

    before(async () => {
        server = await start();
        url = server.url;
    });
    after(async () => {
        await server?.close();
    });

    it("answers requests node's HTTP parser refuses in the API's shape, with an x-request-id", async () => {
        const cases: [string, string, number, string][] = [
            ["a Content-Length that is not a number", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1x\r\n\r\n{}", 400, "malformed_request"],
            ["two different Content-Lengths", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "malformed_request"],
            ["a CR inside a header value", "GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\rb\r\n\r\n", 400, "malformed_request"],
            ["a bare LF inside a header line", "GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\nX-Other b\r\n\r\n", 400, "malformed_request"],
            ["chunked together with Content-Length", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, "malformed_request"],
            ["a NUL in Content-Type", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\0\r\nContent-Length: 2\r\n\r\n{}", 400, "malformed_request"],
            ["a broken chunk size mid-body", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n", 400, "malformed_request"],
            ["a space in the URL", "GET /v1/mo dels HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request"],
            ["an unknown HTTP version", "GET /health HTTP/7.1\r\nHost: x\r\n\r\n", 400, "malformed_request"],
            ["headers over 16 KiB", `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`, 431, "headers_too_large"],
            ["Expect other than 100-continue", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", 417, "expectation_failed"],
            ["a path that does not percent-decode", "GET /v1/models/%E0%A4%A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, "invalid_url"],
            ["an HTTP/1.1 request without Host", "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "malformed_request"],
        ];
        for (const [what, bytes, status, code] of cases) {
            const r = await raw(url, bytes);
            assertShaped(r, status, code);
            assert.equal(r.body.error.type, "invalid_request_error", what);
            assert.match(r.headers["content-type"] ?? "", /^application\/json/, what);
        }
        // the request's own id comes back when it is sane, even from a request the parser refused
        const mine = await raw(url, "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\nX-Note: a\rb\r\n\r\n");
        assertShaped(mine, 400);
        assert.equal(mine.headers["x-request-id"], "mine-1");
        const expect = await raw(url, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-2\r\nExpect: nope\r\nContent-Length: 0\r\n\r\n");
        assert.equal(expect.headers["x-request-id"], "mine-2");
        const injected = await raw(url, "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: a b<c>\r\nX-Note: a\rb\r\n\r\n");
        assert.match(injected.headers["x-request-id"], /^[0-9a-f-]{36}$/, "an id that is not sane is replaced");
        // and the server is fine after all of that
        assert.equal((await fetch(`${url}/health`)).status, 200);
    });

    it("takes only application/json bodies: 415 for forms, text, other types and a body with none", async () => {
        const body = JSON.stringify({ prompt: "hi", max_tokens: 1 });
        for (const type of ["application/x-www-form-urlencoded", "text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x", "application/jsonx", "application/xml"]) {
            const r = await post(url, "/v1/completions", body, { "content-type": type });
            assertShaped(r, 415, "unsupported_media_type");
            assert.match(r.body.error.message, /application\/json/);
            assert.ok(r.body.error.message.includes(type), r.body.error.message);
        }
        // a body with no content type at all (what curl -d sends without -H is a form; a raw client may send none)
        const none = await raw(url, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        assertShaped(none, 415, "unsupported_media_type");
        assert.match(none.body.error.message, /got none/);
        assert.match(none.body.error.message, /-H 'content-type: application\/json'/);
        for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON"]) {
            const r = await post(url, "/v1/completions", body, { "content-type": type });
            assert.equal(r.status, 200, `${type}: ${r.text}`);
        }
        // what the JSON parser refuses is a 400 in the same shape
        assertShaped(await post(url, "/v1/completions", "{nope"), 400);
        assertShaped(await post(url, "/v1/completions", ""), 400);
        assertShaped(await post(url, "/v1/completions", '{"prompt":"x","__proto__":{"polluted":1}}'), 400);
        // a body-less GET needs no content type
        assert.equal((await fetch(`${url}/v1/models`)).status, 200);
    });

    it("says what is wrong with each bad field, naming the first in param", async () => {
        const cases: [string, unknown, string | null, RegExp][] = [
            ["/tokenize", {}, "prompt", /^one of 'prompt' or 'messages' is required$/],
            ["/tokenize", { prompt: "a", messages: [{ role: "user", content: "b" }] }, "prompt", /^give only one of 'prompt' or 'messages'$/],
            ["/v1/completions", { prompt: "x", temperature: "hot" }, "temperature", /^'temperature' must be a number between 0 and 2 \(got "hot"\)$/],
            ["/v1/completions", { prompt: "x", temperature: 9 }, "temperature", /^'temperature' must be a number between 0 and 2 \(got 9\)$/],
            ["/v1/completions", { prompt: "x", max_tokens: 0 }, "max_tokens", /^'max_tokens' must be an integer >= 1 \(got 0\)$/],
            ["/v1/completions", { prompt: "x", max_tokens: 1.5 }, "max_tokens", /^'max_tokens' must be an integer >= 1 \(got 1.5\)$/],
            ["/v1/completions", { prompt: "x", top_p: 0 }, "top_p", /^'top_p' must be a number > 0 and <= 1 \(got 0\)$/],
            ["/v1/completions", { prompt: 5 }, "prompt", /^'prompt' must be a string, an array of strings, an array of token ids or an array of token-id arrays \(got 5\)$/],
            ["/v1/completions", { prompt: [1, "a"] }, "prompt", /^'prompt' must be a string, an array of strings/],
            ["/v1/completions", { prompt: "x", stop: 5 }, "stop", /^'stop' must be a non-empty string of at most \d+ characters or an array of up to \d+ such strings \(got 5\)$/],
            ["/v1/completions", { prompt: "x", stop: ["a", ""] }, "stop[1]", /^'stop\[1\]' must not be empty$/],
            ["/v1/completions", { prompt: "x", stop_token_ids: [1, -2] }, "stop_token_ids[1]", /^'stop_token_ids\[1\]' must be an integer >= 0 \(got -2\)$/],
            ["/v1/completions", { prompt: "x", logit_bias: { abc: 1 } }, "logit_bias", /^'logit_bias' has a key that is not a token id: "abc"$/],
            ["/v1/completions", { prompt: "x", logit_bias: { 5: 500 } }, "logit_bias[5]", /^'logit_bias\[5\]' must be a number between -100 and 100 \(got 500\)$/],
            ["/v1/completions", { prompt: "x", echo: "yes" }, "echo", /^'echo' must be true or false \(got "yes"\)$/],
            ["/v1/completions", { prompt: "x", model: "" }, "model", /^'model' must not be empty$/],
            ["/v1/completions", [1, 2], null, /^the request body must be an object \(got an array of 2\)$/],
            ["/v1/chat/completions", { messages: [{ content: "hi" }] }, "messages[0].role", /^'messages\[0\]\.role' is required$/],
            ["/v1/chat/completions", { messages: [{ role: 5, content: "hi" }] }, "messages[0].role", /^'messages\[0\]\.role' must be a non-empty string \(got 5\)$/],
            ["/v1/chat/completions", { messages: [] }, "messages", /^'messages' must not be empty$/],
            ["/v1/chat/completions", { messages: "hi" }, "messages", /^'messages' must be a non-empty array of objects \(got "hi"\)$/],
            ["/v1/chat/completions", { messages: [{ role: "user", content: 7 }] }, "messages[0].content", /^'messages\[0\]\.content' must be a string or an array of content parts \(got 7\)$/],
            ["/v1/chat/completions", { messages: [{ role: "user", content: "ok" }, { role: "user", content: 7 }] }, "messages[1].content", /^'messages\[1\]\.content' must be a string or an array of content parts \(got 7\)$/],
            ["/v1/chat/completions", { messages: [{ role: "user", content: [{ text: "a" }] }] }, "messages[0].content[0].type", /^'messages\[0\]\.content\[0\]\.type' is required$/],
            ["/v1/completions", undefined, null, /^the request body is missing: send a JSON object$/],
            ["/v1/chat/completions", { messages: [{ role: "user", content: "x" }], response_format: { type: "xml" } }, "response_format.type",
                /^'response_format\.type' must be one of text, json_object, json_schema \(got "xml"\)$/],
        ];
        for (const [path, body, param, message] of cases) {
            const r = await post(url, path, body);
            assertShaped(r, 400);
            assert.equal(r.body.error.param, param, `${path} ${JSON.stringify(body)}: ${r.text}`);
            assert.match(r.body.error.message, message, `${path} ${JSON.stringify(body)}`);
        }
        // several bad fields: each named once, in the body's order, the first in param
        const two = await post(url, "/v1/completions", { prompt: "x", max_tokens: "ten", temperature: "hot", n: 0 });
        assert.equal(two.body.error.param, "max_tokens");
        assert.equal(two.body.error.message, "'max_tokens' must be an integer >= 1 (got \"ten\"); 'temperature' must be a number between 0 and 2 (got \"hot\"); " +
            "'n' must be an integer between 1 and 128 (got 0)");
    });
});

describe("server timeouts", () => {
    let server: BatchwiseServer;
    let url: string;
    const bodyTimeoutMs = 800, headersTimeoutMs = 600;

    before(async () => {
        server = await start({ bodyTimeoutMs, headersTimeoutMs, bodyMinRate: 2000 });
        url = server.url;
    });
    after(async () => {
        await server?.close();
    });

    it("adds no listener per request to a keep-alive socket (they piled up, with each request's closures)", async () => {
        const sockets: import("node:net").Socket[] = [];
        const onConnection = (s: import("node:net").Socket) => sockets.push(s);
        server.app.server.on("connection", onConnection);
        const { Agent, request } = await import("node:http");
        const agent = new Agent({ keepAlive: true, maxSockets: 1 });
        try {
            for (let i = 0; i < 30; i++) {
                await new Promise<void>((resolve, reject) => {
                    const q = request(`${url}/tokenize`, { method: "POST", agent, headers: { "content-type": "application/json" } }, (res) => {
                        res.resume();
                        res.on("end", resolve);
                    });
                    q.on("error", reject);
                    q.end(JSON.stringify({ prompt: `hello ${i}` }));
                });
            }
            assert.equal(sockets.length, 1, "one keep-alive connection carried every request");
            for (const ev of ["close", "end", "error", "data", "timeout"]) {
                assert.ok(sockets[0].listenerCount(ev) < 6, `${sockets[0].listenerCount(ev)} '${ev}' listeners on the socket after 30 requests`);
            }
        } finally {
            agent.destroy();
            server.app.server.off("connection", onConnection);
        }
    });

    it("answers a body that trickles (a byte every 200 ms) with a 408 within the bound", async () => {
        const body = JSON.stringify({ prompt: "hello", max_tokens: 1 });
        const r = await raw(url, async (s) => {
            s.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
            for (const ch of body) {
                if (s.destroyed) return;
                s.write(ch);
                await sleep(200);
            }
        });
        assertShaped(r, 408, "request_timeout");
        assert.equal(r.headers["x-request-id"], "slow-1");
        assert.match(r.body.error.message, /did not arrive in time/);
        // the bound: the base time, a little for the few bytes sent, and timer slack (generous: CI machines are busy)
        assert.ok(r.ms >= bodyTimeoutMs - 50 && r.ms < bodyTimeoutMs + 3000, `cut after ${Math.round(r.ms)} ms`);
        assert.equal(r.headers.connection, "close");
    });

    it("closes the connection of a body that trickles after an early answer (415)", async () => {
        const { hostname, port } = new URL(url);
        const s = connect(Number(port), hostname);
        let text = "";
        const t0 = performance.now();
        let answeredAt = 0;
        s.on("data", (d) => {
            text += d;
            answeredAt ||= performance.now() - t0;
        });
        s.on("error", () => {});
        const closed = new Promise<number>((r) => s.on("close", () => r(performance.now() - t0)));
        s.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n");
        const trickle = (async () => {
            for (let i = 0; i < 100 && !s.destroyed; i++) {
                s.write("a");
                await sleep(200);
            }
        })();
        const ms = await closed;
        await trickle;
        assert.match(text, /^HTTP\/1\.1 415 /);
        assert.ok(answeredAt < bodyTimeoutMs, "answered at once");
        assert.ok(ms >= bodyTimeoutMs - 50 && ms < bodyTimeoutMs + 3000, `closed after ${Math.round(ms)} ms`);
    });

    it("lets a slow but steady upload finish past the base time", async () => {
        // 3000 bytes at about 3000 B/s: 1 s, past the 0.8 s base, above the 2000 B/s minimum rate
        const body = JSON.stringify({ prompt: "hello", max_tokens: 1 }).padEnd(3000, " ");
        const t0 = performance.now();
        const r = await raw(url, async (s) => {
            s.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
            for (let i = 0; i < body.length; i += 150) {
                s.write(body.slice(i, i + 150));
                await sleep(50);
            }
        });
        assert.equal(r.status, 200, r.text);
        assert.ok(performance.now() - t0 > bodyTimeoutMs, "the upload took longer than the base time");
        assert.equal(r.body.object, "text_completion");
    });

    it("answers headers that trickle, and a connection that sends nothing, with a 408", async () => {
        const r = await raw(url, async (s) => {
            for (const ch of "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Long-Header: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") {
                if (s.destroyed) return;
                s.write(ch);
                await sleep(50);
            }
        });
        assertShaped(r, 408, "request_timeout");
        assert.match(r.body.error.message, /headers did not arrive/);
        assert.ok(r.ms < headersTimeoutMs + 3000, `cut after ${Math.round(r.ms)} ms`);
        const idle = await raw(url, async () => {});
        assertShaped(idle, 408, "request_timeout");
        assert.ok(idle.ms >= headersTimeoutMs - 50 && idle.ms < headersTimeoutMs + 3000, `cut after ${Math.round(idle.ms)} ms`);
    });

    it("a drain is not held up by a connection still sending a request no one will serve", async () => {
        // the soak saw it: after the load, an idle server took more than 30 s to exit on SIGTERM
        const server = await start({ bodyTimeoutMs: 60_000 });
        const { port } = new URL(server.url);
        const s = connect(Number(port), "127.0.0.1");
        await new Promise<void>((r) => s.once("connect", () => r()));
        s.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"");
        s.on("error", () => {});
        await sleep(200);
        const t0 = performance.now();
        await server.close();
        const ms = performance.now() - t0;
        s.destroy();
        assert.ok(ms < 5_000, `the drain took ${Math.round(ms)} ms with a body half sent`);
    });

    it("leaves an idle keep-alive connection alone between requests", async () => {
        const { hostname, port } = new URL(url);
        const s = connect(Number(port), hostname);
        let text = "";
        s.on("data", (d) => (text += d));
        const closed = new Promise((r) => s.on("close", r));
        s.write("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        await sleep(headersTimeoutMs + 1000); // idle past the headers timeout, the first response read
        s.write("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        await closed;
        // both answered on the one connection, and nothing in between
        assert.deepEqual([...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]), ["200", "200"], text);
    });

    it("never cuts a response: a generation that streams for longer than both timeouts completes", async () => {
        const ctx = server.engine("q")!.context;
        const real = ctx.decode.bind(ctx);
        // each step takes 100 ms more: 20 tokens take over 2 s, past both timeouts
        ctx.decode = (batch) => sleep(100).then(() => real(batch));
        try {
            const t0 = performance.now();
            const res = await fetch(`${url}/v1/completions`, {
                method: "POST", headers: { "content-type": "application/json" },
                body: JSON.stringify({ prompt: "count:", max_tokens: 20, ignore_eos: true, stream: true }),
            });
            assert.equal(res.status, 200);
            const text = await res.text();
            const ms = performance.now() - t0;
            assert.ok(ms > bodyTimeoutMs + headersTimeoutMs, `the stream lasted ${Math.round(ms)} ms`);
            const events = text.split("\n\n").filter((b) => b.startsWith("data: ")).map((b) => b.slice(6));
            assert.equal(events.at(-1), "[DONE]");
            const finish = events.slice(0, -1).map((e) => JSON.parse(e)).flatMap((e) => e.choices).find((c: any) => c.finish_reason);
            assert.equal(finish.finish_reason, "length");
            // and one that is not streamed
            const plain = await post(url, "/v1/completions", { prompt: "count:", max_tokens: 15, ignore_eos: true });
            assert.equal(plain.status, 200, plain.text);
            assert.equal(plain.body.usage.completion_tokens, 15);
        } finally {
            ctx.decode = real;
        }
    });
});

describe("server CORS", () => {
    const origin = "http://app.example:3000";

    it("sends no CORS headers and answers no preflight without corsOrigins", async () => {
        const server = await start({ apiKeys: [KEY] });
        try {
            const pre = await fetch(`${server.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "POST" } });
            assert.ok(pre.status === 401 || pre.status === 404, `status ${pre.status}`);
            const get = await fetch(`${server.url}/v1/models`, { headers: { origin, authorization: `Bearer ${KEY}` } });
            assert.equal(get.status, 200);
            for (const r of [pre, get]) assert.deepEqual([...r.headers.keys()].filter((h) => h.startsWith("access-control-")), []);
        } finally {
            await server.close();
        }
    });

    it("answers preflights from allowed origins before the API key, and marks their responses", async () => {
        const server = await start({ apiKeys: [KEY], corsOrigins: [`${origin}/`, "https://other.example"] });
        try {
            const pre = await fetch(`${server.url}/v1/chat/completions`, {
                method: "OPTIONS",
                headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "Authorization, Content-Type, X-Stainless-OS" },
            });
            assert.equal(pre.status, 204);
            assert.equal(pre.headers.get("access-control-allow-origin"), origin);
            assert.match(pre.headers.get("access-control-allow-methods") ?? "", /POST/);
            const allowed = (pre.headers.get("access-control-allow-headers") ?? "").split(", ");
            for (const h of ["authorization", "content-type", "x-stainless-os"]) assert.ok(allowed.includes(h), `allows ${h}: ${allowed}`);
            assert.ok(pre.headers.get("x-request-id"));
            // the request itself, with the key: answered, and readable by the page
            const body = JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
            const ok = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { origin, authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body });
            assert.equal(ok.status, 200);
            assert.equal(ok.headers.get("access-control-allow-origin"), origin);
            assert.match(ok.headers.get("access-control-expose-headers") ?? "", /x-request-id/);
            assert.match(ok.headers.get("vary") ?? "", /Origin/);
            // a stream too (its headers are written by hand)
            const stream = await fetch(`${server.url}/v1/completions`, {
                method: "POST", headers: { origin, authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", max_tokens: 2, stream: true }),
            });
            assert.equal(stream.headers.get("access-control-allow-origin"), origin);
            await stream.text();
            // an error too, so the page can read why
            const denied = await fetch(`${server.url}/v1/models`, { headers: { origin } });
            assert.equal(denied.status, 401);
            assert.equal(denied.headers.get("access-control-allow-origin"), origin);
            // another origin: no CORS header, and its preflight refused
            const evil = "http://evil.example";
            const other = await fetch(`${server.url}/v1/models`, { headers: { origin: evil, authorization: `Bearer ${KEY}` } });
            assert.equal(other.status, 200);
            assert.equal(other.headers.get("access-control-allow-origin"), null);
            const pre2 = await fetch(`${server.url}/v1/completions`, { method: "OPTIONS", headers: { origin: evil, "access-control-request-method": "POST" } });
            assert.equal(pre2.status, 403);
            assert.equal(pre2.headers.get("access-control-allow-origin"), null);
            assert.equal((await pre2.json()).error.code, "origin_not_allowed");
        } finally {
            await server.close();
        }
    });

    it("allows any origin with '*', and refuses a corsOrigins entry that is not an origin", async () => {
        const server = await start({ corsOrigins: ["*"] });
        try {
            const pre = await fetch(`${server.url}/v1/completions`, { method: "OPTIONS", headers: { origin: "https://anywhere.example", "access-control-request-method": "POST" } });
            assert.equal(pre.status, 204);
            assert.equal(pre.headers.get("access-control-allow-origin"), "*");
            const r = await fetch(`${server.url}/health`, { headers: { origin: "https://anywhere.example" } });
            assert.equal(r.headers.get("access-control-allow-origin"), "*");
        } finally {
            await server.close();
        }
        for (const bad of ["localhost:3000", "http://a.example/path", "null", ""]) {
            await assert.rejects(start({ corsOrigins: [bad] }), /not an origin/, bad);
        }
    });

    it("takes --cors-origin and the timeouts on the command line", async () => {
        const run = (args: string[]) => new Promise<{ code: number | null; out: string }>((r) => {
            const p = spawn(process.execPath, [cli, ...args]);
            let out = "";
            p.stdout.on("data", (d) => (out += d));
            p.stderr.on("data", (d) => (out += d));
            p.on("exit", (code) => r({ code, out }));
        });
        const help = await run(["serve", "--help"]);
        for (const o of ["--cors-origin", "--headers-timeout", "--body-timeout", "--body-min-rate"]) assert.ok(help.out.includes(o), o);
        const bad = await run(["serve", "--cors-origin", "http://a.example,not an origin"]);
        assert.notEqual(bad.code, 0);
        assert.match(bad.out, /not an origin/);
        const badTimeout = await run(["serve", "--body-timeout", "soon"]);
        assert.notEqual(badTimeout.code, 0);
        assert.match(badTimeout.out, /body-timeout/);
        const proc = spawn(process.execPath, [cli, "serve", "--model", `q=${await modelPath(tinyQwen)}`, "--port", "0", "--ctx-size", "1024", "--parallel", "2",
            "--gpu-layers", String(gpuLayers), "--no-warmup", "--log-level", "silent", "--cors-origin", "http://a.example", "--cors-origin", "http://b.example,http://c.example",
            "--headers-timeout", "0.5"], { stdio: ["ignore", "ignore", "pipe"] });
        try {
            let stderr = "";
            proc.stderr.on("data", (d) => (stderr += d));
            const t0 = Date.now();
            while (!/ready on (http:\/\/\S+)/.test(stderr)) {
                if (Date.now() - t0 > 60_000) throw new Error(`the CLI did not get ready: ${stderr}`);
                await sleep(20);
            }
            const base = /ready on (http:\/\/\S+)/.exec(stderr)![1];
            for (const o of ["http://a.example", "http://c.example"]) {
                const pre = await fetch(`${base}/v1/completions`, { method: "OPTIONS", headers: { origin: o, "access-control-request-method": "POST" } });
                assert.equal(pre.status, 204);
                assert.equal(pre.headers.get("access-control-allow-origin"), o);
            }
            const idle = await raw(base, async () => {});
            assertShaped(idle, 408, "request_timeout");
            assert.ok(idle.ms < 4000, `cut after ${Math.round(idle.ms)} ms`);
        } finally {
            proc.kill("SIGKILL");
        }
    });
});
