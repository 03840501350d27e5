// POST /v1/responses: OpenAI's Responses API, stateless, over the chat path (responses.ts maps the request
// to engine.chat and the message back to output items). Streamed, the response.* events are built from
// the message's changes as they are read, each with an `event:` line and its sequence_number.
import type { ServerPlugin } from "../context.js";
import { choiceError, failIfErrored, pump, record, serve } from "../generate.js";
import { scopeOf } from "../plugins/errors.js";
import {
    outputItems, reasoningTokens, responseObject, responsesApi, responsesBodySchema, responsesRequest, responseUsage,
    ResponseEvents, wantsEncryptedReasoning, type ResponseEvent, type ResponseHead, type ResponsesBody,
} from "../responses.js";
import { bodySchemas } from "../schemas.js";
import { Sse } from "../sse.js";
import type { ApiError } from "../errors.js";

export const responsesRoutes: ServerPlugin = async (app, { ctx }) => {
    const schema = responsesBodySchema(bodySchemas().chatBody as { properties: Record<string, unknown> });
    app.post<{ Body: ResponsesBody }>("/v1/responses", { schema: { body: schema }, config: { api: responsesApi } }, (req, reply) => {
        const b = req.body;
        const created = Math.floor(Date.now() / 1000);
        const encrypted = wantsEncryptedReasoning(b);
        return serve(ctx, req, reply, b.model, (engine, signal) => [engine.chat({ ...responsesRequest(b).request, messageDeltas: b.stream === true, signal })], async (name, engine, gens) => {
            const gen = gens[0];
            const head: ResponseHead = { id: `resp_${req.id}`, created, model: name, body: b };
            if (b.stream) {
                let sse: Sse | undefined;
                const ev = new ResponseEvents(encrypted, (e: ResponseEvent) => sse?.send(e, e.type));
                sse = new Sse(reply, req.id, { done: false, error: (e) => ({ event: "error", data: ev.error(e) }) });
                const scope = scopeOf(req);
                return sse.guard(req, scope, async () => {
                    ev.send("response.created", { response: responseObject(head) });
                    ev.send("response.in_progress", { response: responseObject(head) });
                    let failed: ApiError | undefined;
                    const result = await pump(gen, (e) => {
                        if (e.type === "finish") {
                            if (e.finishReason === "error") failed = choiceError(e.error, scope);
                            return;
                        }
                        ev.push(e.message ?? (e.text.length > 0 ? [{ content: e.text }] : []));
                    });
                    record(ctx, req, name, [result], true);
                    if (failed) {
                        ev.emitError(failed);
                        ev.send("response.failed", { response: { ...responseObject(head), status: "failed", error: { code: failed.code ?? "server_error", message: failed.message } } });
                        sse!.end();
                        return;
                    }
                    const choice = result.choices[0];
                    ev.finish(choice.finishReason);
                    const usage = responseUsage(result, await reasoningTokens(engine, choice.message?.reasoningContent ?? ""));
                    const response = responseObject(head, { output: ev.output, finishReason: choice.finishReason, usage });
                    ev.send(response.status === "incomplete" ? "response.incomplete" : "response.completed", { response });
                    sse!.end();
                });
            }
            const result = await gen.result();
            record(ctx, req, name, [result], false);
            failIfErrored(req, [result], ctx.settings.retryAfter);
            const c = result.choices[0];
            const message = c.message ?? { role: "assistant" as const, content: c.text, reasoningContent: "", toolCalls: [] };
            const usage = responseUsage(result, await reasoningTokens(engine, message.reasoningContent));
            return responseObject(head, { output: outputItems(message, c.finishReason, encrypted), finishReason: c.finishReason, usage });
        });
    });
};
