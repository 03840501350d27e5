// POST /tokenize and /detokenize (vLLM's shape): a prompt, or chat messages through the template, to
// token ids and back. They answer while the server warms up (only generation waits for ready).
import type { ServerPlugin } from "../context.js";
import { chatRequest, tokenizeApi, type ChatBody } from "../openai.js";
import { bodySchemas } from "../schemas.js";

interface TokenizeBody {
    model?: string;
    prompt?: string;
    messages?: ChatBody["messages"];
    add_special_tokens?: boolean;
    add_generation_prompt?: boolean;
}

export const tokenizeRoutes: ServerPlugin = async (app, { ctx }) => {
    app.post<{ Body: TokenizeBody }>("/tokenize", { schema: { body: bodySchemas().tokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
        const { name, engine } = ctx.models.lookup(req.body.model);
        let text: string;
        let addSpecial = req.body.add_special_tokens ?? true;
        if (req.body.messages) {
            const chat = chatRequest({ messages: req.body.messages });
            text = engine.formatChat(chat.messages, { addGenerationPrompt: req.body.add_generation_prompt ?? true });
            addSpecial = req.body.add_special_tokens ?? false;
        } else {
            text = req.body.prompt!;
        }
        const tokens = await engine.tokenize(text, { addSpecial });
        return { model: name, tokens, count: tokens.length, max_model_len: engine.maxContext };
    });
    app.post<{ Body: { model?: string; tokens: number[] } }>("/detokenize", { schema: { body: bodySchemas().detokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
        const { engine } = ctx.models.lookup(req.body.model);
        return { prompt: await engine.detokenize(req.body.tokens) };
    });
};
