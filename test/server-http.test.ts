// The server's HTTP layer, below and around the routes: the validation messages.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createServer, type BatchwiseServer, type ServerOptions } from "../lib/server/server.js";
import { gpu, gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const engineOptions = { gpuLayers, contextSize: 2048, maxSequences: 4, batchTokens: 512, flashAttention: gpu ? "on" as const : "auto" as const };

async function start(o: Partial<ServerOptions> = {}): Promise<BatchwiseServer> {
    const server = await createServer({ models: [{ name: "q", path: await modelPath(tinyQwen), options: engineOptions }], port: 0, logger: false, warmup: false, ...o });
    await server.ready();
    return server;
}

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

