// How the server names the field at fault, without a model: an engine error that carries `field` and
// `reason` (BatchwiseError) is answered with the request's name for that field, from the route's API
// table; one that carries none gets param null (no message text is read); and a route's API comes from
// its registration, not from its URL.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Fastify from "fastify";
import { BatchwiseError, ErrorCode, fieldError } from "../lib/binding/errors.js";
import type { ServerContext } from "../lib/server/context.js";
import { ApiError, requestField, toApiError, type RouteApi } from "../lib/server/errors.js";
import { chatApi, completionApi, tokenizeApi } from "../lib/server/openai.js";
import { errorHandling } from "../lib/server/plugins/errors.js";

const bad = (field: string, reason = "is wrong") => fieldError(ErrorCode.InvalidArgument, field, reason);

describe("server errors by structure", () => {
    it("renames an engine field to the request's, keeping the index or sub-field after the head", () => {
        const at = { body: { prompt: "x" } };
        assert.equal(requestField("topK", completionApi, at), "top_k");
        assert.equal(requestField("repeatPenalty", completionApi, at), "repetition_penalty");
        assert.equal(requestField("logitBias", completionApi, at), "logit_bias");
        assert.equal(requestField("temperature", completionApi, at), "temperature"); // the same name in both
        assert.equal(requestField("prompt[3]", completionApi, { body: { prompt: [1, 2, 3, 99] } }), "prompt[3]");
        // the longest head the table knows wins
        assert.equal(requestField("responseFormat.schema", chatApi, at), "response_format.json_schema.schema");
        assert.equal(requestField("responseFormat.schema.properties", chatApi, at), "response_format.json_schema.schema.properties");
        assert.equal(requestField("responseFormat", chatApi, at), "response_format");
        // a name the table does not list, even one Object.prototype has, passes as it is
        assert.equal(requestField("toString", completionApi, at), "toString");
        assert.equal(requestField("constructor[1]", completionApi, at), "constructor[1]");
    });

    it("tells 'stop' from 'stop_token_ids' in the engine's one stop list", () => {
        const body = { prompt: "x", stop: ["a", "b"], stop_token_ids: [7, 8] };
        assert.equal(requestField("stop[1]", completionApi, { body }), "stop[1]");
        assert.equal(requestField("stop[2]", completionApi, { body }), "stop_token_ids[0]");
        assert.equal(requestField("stop[3]", chatApi, { body }), "stop_token_ids[1]");
        assert.equal(requestField("stop[0]", completionApi, { body: { stop: "end" } }), "stop");
        assert.equal(requestField("stop[1]", completionApi, { body: { stop: "end", stop_token_ids: [3] } }), "stop_token_ids[0]");
        assert.equal(requestField("stop", completionApi, { body }), "stop");
    });

    it("names the prompt of a list that failed, and the chat's own fields", () => {
        const list = { prompt: [[1, 2], [3, 99999]] };
        assert.equal(requestField("prompt[1]", completionApi, { body: list, index: 1 }), "prompt[1][1]");
        assert.equal(requestField("prompt", completionApi, { body: { prompt: ["a", ""] }, index: 1 }), "prompt[1]");
        assert.equal(requestField("prompt", completionApi, { body: { prompt: "a" }, index: 0 }), "prompt");
        assert.equal(requestField("maxTokens", chatApi, { body: { max_completion_tokens: 5 } }), "max_completion_tokens");
        assert.equal(requestField("maxTokens", chatApi, { body: { max_tokens: 5 } }), "max_tokens");
        assert.equal(requestField("maxTokens", completionApi, { body: {} }), "max_tokens");
        assert.equal(requestField("logprobs", chatApi, { body: {} }), "top_logprobs");
        assert.equal(requestField("logprobs", completionApi, { body: {} }), "logprobs");
        assert.equal(requestField("prompt[5]", chatApi, { body: {} }), "messages");
        assert.equal(requestField("grammar", chatApi, { body: { response_format: { type: "json_schema" } } }), "response_format.json_schema.schema");
        assert.equal(requestField("grammar", chatApi, { body: { response_format: { type: "json_object" } } }), "response_format");
    });

    it("answers a field error with the request's field in param and message", () => {
        const e = toApiError(fieldError(ErrorCode.InvalidArgument, "topK", "must be an integer from 0 to 2147483647"), { api: completionApi, body: {} });
        assert.equal(e.status, 400);
        assert.equal(e.param, "top_k");
        assert.equal(e.message, "'top_k' must be an integer from 0 to 2147483647");
        const native = toApiError(fieldError(ErrorCode.SamplerInvalid, "logprobs", "must be at most 20"), { api: chatApi, body: {} });
        assert.deepEqual(native.body().error, { message: "'top_logprobs' must be at most 20", type: "invalid_request_error", param: "top_logprobs", code: null });
        // no route: the engine's names as they are
        assert.equal(toApiError(bad("topK")).param, "topK");
    });

    it("gives param null to an error that names no field, and never reads its message", () => {
        const e = toApiError(new BatchwiseError(ErrorCode.InvalidArgument, "'topK' must be an integer"), { api: completionApi, body: {} });
        assert.equal(e.status, 400);
        assert.equal(e.param, null);
        assert.equal(e.message, "'topK' must be an integer");
    });

    it("points a context-length error at the route's prompt field, whatever field it names", () => {
        const plain = new BatchwiseError(ErrorCode.ContextLength, "the prompt (9 tokens) plus maxTokens (5000) is 5009 tokens");
        assert.equal(toApiError(plain, { api: completionApi, body: {} }).param, "prompt");
        assert.equal(toApiError(plain, { api: chatApi, body: {} }).param, "messages");
        assert.equal(toApiError(plain, { api: tokenizeApi, body: {} }).code, "context_length_exceeded");
        const named = toApiError(fieldError(ErrorCode.ContextLength, "prompt", "is 70000 characters long"), { api: chatApi, body: {} });
        assert.equal(named.param, "messages");
        assert.equal(named.message, "'messages' is 70000 characters long");
    });

    it("maps the engine's other codes to statuses, with Retry-After where retrying helps", () => {
        const full = toApiError(new BatchwiseError(ErrorCode.QueueFull, "the queue is full"), {}, 7);
        assert.deepEqual([full.status, full.code, full.retryAfter], [429, "queue_full", 7]);
        const closed = toApiError(new BatchwiseError(ErrorCode.EngineClosed, "closing"), {}, 2);
        assert.deepEqual([closed.status, closed.code, closed.retryAfter], [503, "draining", 2]);
        assert.equal(toApiError(new BatchwiseError(ErrorCode.DecodeFailed, "boom")).status, 500);
        assert.equal(toApiError(new Error("boom")).status, 500);
        const api = new ApiError(418, "teapot");
        assert.equal(toApiError(api), api);
    });

    it("takes a route's API from its registration, not from its URL", async () => {
        const ctx = { settings: { retryAfter: 1 } } as unknown as ServerContext;
        const app = Fastify();
        await app.register(errorHandling, { ctx });
        const contextLength = () => {
            throw new BatchwiseError(ErrorCode.ContextLength, "too long");
        };
        const topK = () => {
            throw bad("topK");
        };
        // a chat route whose URL says nothing of chat, and a completion route whose URL says chat
        app.post("/a", { config: { api: chatApi } }, contextLength);
        app.post("/v1/chat/x", { config: { api: completionApi } }, contextLength);
        app.post("/b", { config: { api: { fields: { topK: "k" }, promptField: "p" } satisfies RouteApi } }, topK);
        app.post("/c", topK);
        const param = async (url: string) => (await app.inject({ method: "POST", url, payload: {} })).json().error.param;
        assert.equal(await param("/a"), "messages");
        assert.equal(await param("/v1/chat/x"), "prompt");
        assert.equal(await param("/b"), "k");
        assert.equal(await param("/c"), "topK");
        await app.close();
    });
});
