// POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API (what Claude Code speaks), an
// adapter over the engine's chat path (anthropic.ts maps the body and shapes the answer). Served as the
// other generation routes are (generate.ts: the model lookup, 503 while not ready, the abort when the client
// goes, the drain count, the metrics and log line), with Anthropic's event stream and error shape.
import type { FastifyReply, FastifyRequest } from "fastify";
import type { GenerateResult, Generation } from "../../index.js";
import {
    anthropicUsage, BlockStream, contentBlocks, messagesApi, messagesRequest, messagesSchemas, stopReason, type MessagesBody,
} from "../anthropic.js";
import type { ServerContext, ServerPlugin } from "../context.js";
import { anthropicError } from "../errors.js";
import { choiceError, failIfErrored, pump, record, serve } from "../generate.js";
import { scopeOf } from "../plugins/errors.js";
import { Sse } from "../sse.js";

export const messagesRoutes: ServerPlugin = async (app, { ctx }) => {
    const { messagesBody, countTokensBody } = messagesSchemas();

    app.post<{ Body: MessagesBody }>("/v1/messages", { schema: { body: messagesBody }, config: { api: messagesApi } }, (req, reply) => {
        const b = req.body;
        const id = `msg_${req.id}`;
        const omitThinking = b.thinking?.display === "omitted";
        // a 400 from messagesRequest is counted as a rejection, as on the other routes
        return serve(ctx, req, reply, b.model, (engine, signal) => [engine.chat({ ...messagesRequest(b), messageDeltas: b.stream === true, signal })], async (name, _engine, gens) => {
            const gen = gens[0];
            if (b.stream === true) {
                // message_start carries the prompt's size, known once the request is queued (serve() waited for that);
                // the result's usage comes in message_delta
                const promptTokens = gen.promptTokens;
                return streamMessage(ctx, req, reply, name, gen, { id, promptTokens, omitThinking });
            }
            const result = await gen.result();
            record(ctx, req, name, [result], false);
            failIfErrored(req, [result], ctx.settings.retryAfter);
            const c = result.choices[0];
            return {
                id, type: "message", role: "assistant", model: name,
                content: contentBlocks(c.message, c.text, req.id, omitThinking),
                ...stopReason(c),
                stop_details: null,
                usage: anthropicUsage(result),
            };
        });
    });

    app.post<{ Body: MessagesBody }>("/v1/messages/count_tokens", { schema: { body: countTokensBody }, config: { api: messagesApi } }, async (req) => {
        // answered while the server warms up, as /tokenize is (only generation waits for ready)
        const { engine } = ctx.models.lookup(req.body.model);
        // exactly the prompt a /v1/messages call with these fields is billed for (its usage's input_tokens plus cache_read_input_tokens)
        const tokens = await engine.chatPromptTokens(messagesRequest(req.body, true));
        return { input_tokens: tokens.length };
    });
};

/** How often an idle stream gets a ping event. */
const PING_MS = 10_000;

/** Anthropic's event stream of one message: message_start, ping, the content blocks, message_delta, message_stop. */
function streamMessage(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply, name: string, gen: Generation,
    o: { id: string; promptTokens: number; omitThinking: boolean }): Promise<unknown> {
    // Anthropic's framing: named events, no [DONE], an error as `event: error` with Anthropic's body
    const sse = new Sse(reply, req.id, { done: false, error: (e) => ({ event: "error", data: anthropicError(e, req.id).body }) });
    const scope = scopeOf(req);
    return sse.guard(req, scope, async () => {
        const send = (event: string, data: unknown) => sse.send(data, event);
        send("message_start", {
            type: "message_start",
            message: {
                id: o.id, type: "message", role: "assistant", model: name, content: [], stop_reason: null, stop_sequence: null, stop_details: null,
                usage: { input_tokens: o.promptTokens, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 0 },
            },
        });
        send("ping", { type: "ping" });
        // and one every PING_MS while nothing else is sent (a long prompt's prefill), for clients and proxies that time out idle streams
        let last = Date.now();
        const pinger = setInterval(() => {
            if (Date.now() - last >= PING_MS) send("ping", { type: "ping" });
        }, PING_MS / 2);
        const blocks = new BlockStream((event, data) => {
            last = Date.now();
            send(event, data);
        }, req.id, o.omitThinking);
        let failed = false;
        let result: GenerateResult;
        try {
            result = await pump(gen, (ev) => {
                if (ev.type === "finish") {
                    if (ev.finishReason === "error") {
                        failed = true;
                        send("error", anthropicError(choiceError(ev.error, scope), req.id).body);
                    }
                    return;
                }
                blocks.push(ev.message ?? (ev.text.length > 0 ? [{ content: ev.text }] : []));
            });
        } finally {
            clearInterval(pinger);
        }
        record(ctx, req, name, [result], true);
        if (failed) return sse.end();
        blocks.stop();
        const c = result.choices[0];
        const u = anthropicUsage(result);
        send("message_delta", {
            type: "message_delta",
            delta: { ...stopReason(c), stop_details: null },
            // the totals: the prompt's split between the cache and the rest is known only now
            usage: { input_tokens: u.input_tokens, cache_creation_input_tokens: 0, cache_read_input_tokens: u.cache_read_input_tokens, output_tokens: u.output_tokens },
        });
        send("message_stop", { type: "message_stop" });
        sse.end();
    });
}
