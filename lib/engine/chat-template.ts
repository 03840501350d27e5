// Chat formatting: the model's Jinja chat template (GGUF tokenizer.chat_template, or one passed in),
// rendered with @huggingface/jinja, the engine transformers.js uses for the same templates. A template
// that this renderer cannot parse falls back to llama.cpp's built-in formats, which recognise the common
// templates by their text; so do built-in names such as "chatml" or "llama3".
import { Template } from "@huggingface/jinja";
import { BatchwiseError, ErrorCode, fieldError, type LlamaModel } from "../binding/index.js";

/** A chat message. Fields other than role and content (name, tool_calls, ...) reach the template as they are. */
export interface ChatMessage {
    role: string;
    content: string | null;
    [field: string]: unknown;
}

export interface ChatFormatOptions {
    /** A Jinja template, or the name of one of llama.cpp's built-in formats ("chatml", "llama3", ...). Default: the model's. */
    template?: string;
    /** End with the assistant's turn opened (default true). */
    addGenerationPrompt?: boolean;
    /** Variables for the template, e.g. tools, or enable_thinking for templates that read it. */
    variables?: Record<string, unknown>;
}

const isJinja = (t: string) => t.includes("{%") || t.includes("{{");

function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
    if (!Array.isArray(messages) || messages.length === 0) {
        throw fieldError(ErrorCode.InvalidArgument, "messages", "must be a non-empty array of { role, content }");
    }
    messages.forEach((m, i) => {
        if (m === null || typeof m !== "object") throw fieldError(ErrorCode.InvalidArgument, `messages[${i}]`, "must be an object");
        const { role, content } = m as Record<string, unknown>;
        if (typeof role !== "string" || role.length === 0) {
            throw fieldError(ErrorCode.InvalidArgument, `messages[${i}].role`, "must be a non-empty string");
        }
        if (content !== null && content !== undefined && typeof content !== "string") {
            throw fieldError(ErrorCode.InvalidArgument, `messages[${i}].content`, "must be a string");
        }
    });
}

export class ChatFormatter {
    private readonly compiled = new Map<string, Template | null>();
    private readonly specials: Record<string, string>;

    constructor(private readonly model: LlamaModel) {
        const t = model.metadata.tokens;
        const text = (id: number) => (id >= 0 ? new TextDecoder().decode(model.tokenToPiece(id, { special: true })) : "");
        this.specials = { bos_token: text(t.bos), eos_token: text(t.eos), pad_token: text(t.pad) };
    }

    /** Which renderer the model's own template goes through. */
    get kind(): "jinja" | "builtin" | "none" {
        const src = this.model.metadata.chatTemplate;
        if (!src) return "none";
        return this.compile(src) ? "jinja" : "builtin";
    }

    private compile(source: string): Template | null {
        let t = this.compiled.get(source);
        if (t === undefined) {
            try {
                t = new Template(source);
            } catch {
                t = null; // a template the renderer cannot parse: llama.cpp's built-in formats may know it
            }
            // requests may carry templates of their own: keep the most recent few (Map order is insertion order)
            if (this.compiled.size >= 16) this.compiled.delete(this.compiled.keys().next().value!);
            this.compiled.set(source, t);
        }
        return t;
    }

    /** The prompt text for a chat. */
    format(messages: readonly ChatMessage[], options: ChatFormatOptions = {}): string {
        checkMessages(messages);
        const source = options.template ?? this.model.metadata.chatTemplate;
        if (!source) {
            throw new BatchwiseError(ErrorCode.ChatTemplate, "the model has no chat template: pass one (a Jinja template or a built-in name such as 'chatml')");
        }
        const addGenerationPrompt = options.addGenerationPrompt ?? true;
        const template = isJinja(source) ? this.compile(source) : null;
        if (template) {
            try {
                return template.render({
                    ...this.specials, ...options.variables, messages: messages.map((m) => ({ ...m, content: m.content ?? "" })),
                    add_generation_prompt: addGenerationPrompt,
                });
            } catch (e) {
                // raise_exception() in a template is its way of refusing the conversation (roles out of order, ...)
                throw new BatchwiseError(ErrorCode.ChatTemplate, `the chat template refused the messages: ${(e as Error).message}`, { cause: e });
            }
        }
        return this.model.applyChatTemplate(
            messages.map((m) => ({ role: m.role, content: m.content ?? "" })),
            { addAssistant: addGenerationPrompt, template: source },
        );
    }
}
