// POST /v1/chat/completions: OpenAI's chat API, the messages through the model's chat template. One
// generation with `n` choices; a stream opens each choice with the assistant role.
import type { ChatBody } from "../openai.js";
import { chatApi, chatLogprobs, chatRequest, usage } from "../openai.js";
import type { ServerPlugin } from "../context.js";
import { failIfErrored, record, serve, stream } from "../generate.js";
import { bodySchemas } from "../schemas.js";

export const chatRoutes: ServerPlugin = async (app, { ctx }) => {
    app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: bodySchemas().chatBody }, config: { api: chatApi } }, (req, reply) => {
        const b = req.body;
        const id = `chatcmpl-${req.id}`;
        const created = Math.floor(Date.now() / 1000);
        return serve(ctx, req, reply, b.model, (engine, signal) => [engine.chat({ ...chatRequest(b), signal })], async (name, engine, gens) => {
            const gen = gens[0];
            if (b.stream) {
                const opening = Array.from({ length: b.n ?? 1 }, (_, index) => [{ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
                return stream(ctx, req, reply, name, { id, object: "chat.completion.chunk", created }, [gen], b.stream_options?.include_usage === true, (_p, ev) => {
                    if (ev.type === "finish") return [{ index: ev.index, delta: {}, logprobs: null, finish_reason: ev.finishReason }];
                    if (ev.text.length === 0 && !ev.logprobs) return null;
                    return [{ index: ev.index, delta: { content: ev.text }, logprobs: ev.logprobs ? chatLogprobs(engine, ev.logprobs) : null, finish_reason: null }];
                }, opening);
            }
            const result = await gen.result();
            record(ctx, req, name, [result], false);
            failIfErrored(req, [result]);
            return {
                id, object: "chat.completion", created, model: name,
                choices: result.choices.map((c) => ({
                    index: c.index,
                    message: { role: "assistant", content: c.text },
                    logprobs: c.logprobs ? chatLogprobs(engine, c.logprobs) : null,
                    finish_reason: c.finishReason,
                })),
                usage: usage([result]),
            };
        });
    });
};
