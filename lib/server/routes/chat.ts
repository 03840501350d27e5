// POST /v1/chat/completions: OpenAI's chat API, the messages (and tools) through the model's chat template.
// One generation with `n` choices; each choice's text is read back as a message: content, reasoning_content
// and tool_calls. A stream opens each choice with the assistant role, then sends each change as it is read.
import type { ChatBody } from "../openai.js";
import { chatApi, chatDeltas, chatFinishReason, chatLogprobs, chatMessage, chatRequest, usage } from "../openai.js";
import type { ServerPlugin } from "../context.js";
import { failIfErrored, record, serve, stream } from "../generate.js";
import { bodySchemas } from "../schemas.js";

export const chatRoutes: ServerPlugin = async (app, { ctx }) => {
    app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: bodySchemas().chatBody }, config: { api: chatApi } }, (req, reply) => {
        const b = req.body;
        const id = `chatcmpl-${req.id}`;
        const created = Math.floor(Date.now() / 1000);
        return serve(ctx, req, reply, b.model, (engine, signal) => [engine.chat({ ...chatRequest(b), messageDeltas: b.stream === true, signal })], async (name, engine, gens) => {
            const gen = gens[0];
            if (b.stream) {
                const opening = Array.from({ length: b.n ?? 1 }, (_, index) => [{ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
                const calls = new Set<number>(); // choices that called a tool: they finish with "tool_calls"
                return stream(ctx, req, reply, name, { id, object: "chat.completion.chunk", created }, [gen], b.stream_options?.include_usage === true, (_p, ev) => {
                    if (ev.type === "finish") {
                        const reason = ev.finishReason === "stop" && calls.has(ev.index) ? "tool_calls" : ev.finishReason;
                        return [[{ index: ev.index, delta: {}, logprobs: null, finish_reason: reason }]];
                    }
                    const deltas = ev.message ? chatDeltas(ev.message) : ev.text.length > 0 ? [{ content: ev.text }] : [];
                    if (deltas.some((d) => d.tool_calls !== undefined)) calls.add(ev.index);
                    const logprobs = ev.logprobs ? chatLogprobs(engine, ev.logprobs) : null;
                    if (deltas.length === 0) return logprobs ? [[{ index: ev.index, delta: {}, logprobs, finish_reason: null }]] : null;
                    // the token's logprobs go with the last of the changes it made
                    return deltas.map((delta, i) => [{ index: ev.index, delta, logprobs: i === deltas.length - 1 ? logprobs : null, finish_reason: null }]);
                }, opening);
            }
            const result = await gen.result();
            record(ctx, req, name, [result], false);
            failIfErrored(req, [result], ctx.settings.retryAfter);
            return {
                id, object: "chat.completion", created, model: name,
                choices: result.choices.map((c) => ({
                    index: c.index,
                    message: chatMessage(c.message, c.text),
                    logprobs: c.logprobs ? chatLogprobs(engine, c.logprobs) : null,
                    finish_reason: chatFinishReason(c.finishReason, c.message),
                })),
                usage: usage([result]),
            };
        });
    });
};
