// POST /v1/completions: OpenAI's legacy completions API. Each prompt of a list is its own generation
// with `n` choices (choice index prompt * n + choice); `echo` puts the prompt before its text.
import type { CompletionBody } from "../openai.js";
import { completionApi, completionLogprobs, completionRequests, usage } from "../openai.js";
import type { ServerPlugin } from "../context.js";
import { badRequest } from "../errors.js";
import { failIfErrored, record, serve, stream } from "../generate.js";
import { bodySchemas } from "../schemas.js";

export const completionsRoutes: ServerPlugin = async (app, { ctx }) => {
    app.post<{ Body: CompletionBody }>("/v1/completions", { schema: { body: bodySchemas().completionBody }, config: { api: completionApi } }, (req, reply) => {
        const b = req.body;
        const id = `cmpl-${req.id}`;
        const created = Math.floor(Date.now() / 1000);
        const n = b.n ?? 1;
        let requests: ReturnType<typeof completionRequests>;
        return serve(ctx, req, reply, b.model, (engine, signal) => {
            requests = completionRequests(b);
            // every prompt's choices wait in the engine's queue together: a request the queue can never hold is a 400
            if (requests.length * n > engine.maxQueued) {
                throw badRequest(`${requests.length} prompts x 'n' ${n} is ${requests.length * n} sequences, more than the server queues at once (${engine.maxQueued})`, "n");
            }
            return requests.map((r) => engine.generate({ ...r, signal }));
        }, async (name, engine, gens) => {
            const echoes = b.echo
                ? await Promise.all(requests.map((r) => (typeof r.prompt === "string" ? r.prompt : engine.detokenize(Array.from(r.prompt)))))
                : requests.map(() => "");
            if (b.stream) {
                const offsets = new Map<number, number>(); // text streamed so far per choice; present once its echo went out
                return stream(ctx, req, reply, name, { id, object: "text_completion", created }, gens, b.stream_options?.include_usage === true, (p, ev) => {
                    const index = p * n + ev.index;
                    const sent = offsets.get(index);
                    if (ev.type === "finish") return [[{ index, text: sent === undefined ? echoes[p] : "", logprobs: null, finish_reason: ev.finishReason }]];
                    const text = sent === undefined ? echoes[p] + ev.text : ev.text;
                    if (text.length === 0 && !ev.logprobs) return null;
                    offsets.set(index, (sent ?? 0) + text.length);
                    return [[{ index, text, logprobs: ev.logprobs ? completionLogprobs(engine, ev.logprobs, sent ?? 0) : null, finish_reason: null }]];
                });
            }
            const results = await Promise.all(gens.map((g) => g.result()));
            record(ctx, req, name, results, false);
            failIfErrored(req, results, ctx.settings.retryAfter);
            return {
                id, object: "text_completion", created, model: name,
                choices: results.flatMap((r, p) => r.choices.map((c) => ({
                    index: p * n + c.index,
                    text: echoes[p] + c.text,
                    logprobs: c.logprobs ? completionLogprobs(engine, c.logprobs, echoes[p].length) : null,
                    finish_reason: c.finishReason,
                }))),
                usage: usage(results),
            };
        });
    });
};
