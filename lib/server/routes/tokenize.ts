// POST /tokenize and /detokenize (vLLM's shape): a prompt, or chat messages through the template, to
// token ids and back. They answer while the server warms up (only generation waits for ready).
import type { ServerPlugin } from "../context.js";
import { chatRequest, tokenizeApi, type ChatBody } from "../openai.js";
import { bodySchemas } from "../schemas.js";

interface TokenizeBody extends Partial<Pick<ChatBody, "messages" | "tools" | "tool_choice" | "chat_template_kwargs" | "continue_final_message">> {
    model?: string;
    prompt?: string;
    add_special_tokens?: boolean;
    add_generation_prompt?: boolean;
}

export const tokenizeRoutes: ServerPlugin = async (app, { ctx }) => {
    app.post<{ Body: TokenizeBody }>("/tokenize", { schema: { body: bodySchemas().tokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
        const { name, engine } = ctx.models.lookup(req.body.model);
        const b = req.body;
        let tokens: number[];
        if (b.messages) {
            // exactly the prompt a chat with these messages (and tools) is billed for
            const { messages, tools, tool_choice, chat_template_kwargs, add_generation_prompt, continue_final_message } = b;
            tokens = await engine.chatPromptTokens(chatRequest({ messages, tools, tool_choice, chat_template_kwargs, add_generation_prompt, continue_final_message }));
        } else {
            tokens = await engine.tokenize(b.prompt!, { addSpecial: b.add_special_tokens ?? true });
        }
        return { model: name, tokens, count: tokens.length, max_model_len: engine.maxContext };
    });
    app.post<{ Body: { model?: string; tokens: number[] } }>("/detokenize", { schema: { body: bodySchemas().detokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
        const { engine } = ctx.models.lookup(req.body.model);
        return { prompt: await engine.detokenize(req.body.tokens) };
    });
};
