// Intake: a request's input made ready for the scheduler. Its fields are checked (request.ts), a JSON
// response format becomes a grammar and every grammar is parsed, the queue bound is checked, the prompt
// (text, token ids, fill-in-the-middle or a chat) becomes tokens that fit the context. Every refusal is a
// typed error naming the field at fault, raised before anything is queued.
import { BatchwiseError, ErrorCode, fieldError, jsonSchemaToGrammar, type LlamaModel } from "../binding/index.js";
import type { ChatPlan, Chats } from "./chat.js";
import { validateRequest, type GenerateRequest, type RequestOptions, type ValidRequest } from "./request.js";
import type { ChatRequest } from "./types.js";

export interface IntakeLimits {
    maxContext: number;
    maxQueued: number;
    maxPromptLength: number;
}

/** A request that passed intake: its checked options and its prompt tokens (and a chat's plan, with the ids of its preserved tokens). */
export interface Prepared {
    valid: ValidRequest;
    prompt: number[];
    chat?: { plan: ChatPlan; specialTokens: Set<number> };
}

/** The chat fields a ChatRequest has beyond a GenerateRequest's. */
const CHAT_FIELDS = [
    "messages", "template", "templateVariables", "tools", "toolChoice", "parallelToolCalls", "enableThinking", "reasoningEffort",
    "reasoningBudget", "addGenerationPrompt", "continueFinalMessage", "messageDeltas",
] as const;

export class Intake {
    /** Sequences of requests in intake that passed the queue check (they count as waiting). */
    sequences = 0;
    private tokenizing = 0;
    /** Preserved-token texts to their ids (-1: not one token). */
    private readonly preserved = new Map<string, number>();
    private readonly tokenizeWaiters: (() => void)[] = [];

    /** `waiting`: sequences the scheduler holds that are not running yet. */
    constructor(private readonly model: LlamaModel, private readonly chats: Chats, readonly limits: IntakeLimits,
        private readonly waiting: () => number) {}

    /** Checks, tokenizes and fits a request; throws the reason it is refused. */
    async prepare(request: GenerateRequest, plan?: ChatPlan): Promise<Prepared> {
        if (request === null || typeof request !== "object") throw new BatchwiseError(ErrorCode.InvalidArgument, "the request must be an object");
        const valid = validateRequest(request, this.model.metadata.vocabSize);
        if (plan) this.applyPlan(plan, valid);
        else this.resolveGrammar(request, valid);
        this.checkQueue(valid.n);
        this.sequences += valid.n;
        let prompt: number[];
        let specialTokens: Set<number> | undefined;
        try {
            prompt = await this.promptTokens(request);
            if (plan) specialTokens = await this.preservedTokenIds(plan.preservedTokens);
        } finally {
            this.sequences -= valid.n;
        }
        const { maxContext } = this.limits;
        if (prompt.length >= maxContext) {
            throw fieldError(ErrorCode.ContextLength, "prompt",
                `has ${prompt.length} tokens; the context holds ${maxContext}, which leaves no room to generate`);
        }
        if (valid.maxTokens !== undefined && prompt.length + valid.maxTokens > maxContext) {
            throw fieldError(ErrorCode.ContextLength, "prompt",
                `(${prompt.length} tokens) plus maxTokens (${valid.maxTokens}) is ${prompt.length + valid.maxTokens} tokens, more than the context holds (${maxContext})`);
        }
        return plan ? { valid, prompt, chat: { plan, specialTokens: specialTokens! } } : { valid, prompt };
    }

    /**
     * A chat request as the generate request it becomes (the messages, tools and options through the chat
     * template) and its plan (grammar, stops, how the output is read).
     */
    chatRequest(request: ChatRequest): { request: GenerateRequest; plan: ChatPlan } {
        if (request === null || typeof request !== "object") throw new BatchwiseError(ErrorCode.InvalidArgument, "the request must be an object");
        const { messages } = request;
        if (Array.isArray(messages)) this.checkPromptLength(chatLength(request), "messages");
        const { grammar, grammarRoot, responseFormat } = request;
        if (typeof grammar === "string" && responseFormat && responseFormat.type !== "text") {
            throw fieldError(ErrorCode.InvalidArgument, "grammar", "cannot be combined with a JSON responseFormat");
        }
        if (grammar !== undefined && (typeof grammar !== "string" || grammar.length === 0)) throw fieldError(ErrorCode.InvalidArgument, "grammar", "must be a non-empty GBNF string");
        const { result, plan } = this.chats.apply(request, { grammar, grammarRoot, responseFormat });
        const rest: Record<string, unknown> = { ...request };
        for (const k of CHAT_FIELDS) delete rest[k];
        delete rest.grammar;
        delete rest.grammarRoot;
        delete rest.responseFormat;
        return { request: { ...(rest as RequestOptions), prompt: result.prompt, addSpecial: true, parseSpecial: true }, plan };
    }

    /** Text to tokens for a caller (Engine.tokenize): the same length bound and tokenizer gate as prompts. */
    async tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean }): Promise<number[]> {
        if (typeof text !== "string") throw fieldError(ErrorCode.InvalidArgument, "text", "must be a string");
        this.checkPromptLength(text.length, "text");
        return Array.from(await this.tokenizeText(text, { addSpecial: options.addSpecial ?? true, parseSpecial: options.parseSpecial ?? true }));
    }

    /** Whether the model has the tokens fill-in-the-middle needs (prefix, suffix, middle). */
    get supportsInfill(): boolean {
        const t = this.model.metadata.tokens;
        return t.fimPrefix >= 0 && t.fimSuffix >= 0 && t.fimMiddle >= 0;
    }

    /** Sequences waiting, with those of requests still in intake (tokenizing) that passed this check. */
    private checkQueue(n: number): void {
        const { maxQueued } = this.limits;
        if (n > maxQueued) throw fieldError(ErrorCode.InvalidArgument, "n", `(${n}) asks for more sequences than the queue holds (maxQueued ${maxQueued})`);
        const waiting = this.waiting() + this.sequences;
        if (waiting + n > maxQueued) {
            throw new BatchwiseError(ErrorCode.QueueFull, `the queue is full (${waiting} sequences waiting, at most ${maxQueued}); retry later`);
        }
    }

    private checkPromptLength(length: number, field: string): void {
        const { maxPromptLength, maxContext } = this.limits;
        if (length > maxPromptLength) {
            throw fieldError(ErrorCode.ContextLength, field,
                `is ${length} characters long, more than this server tokenizes (${maxPromptLength}, 16 per token of its ${maxContext}-token context)`);
        }
    }

    /** A chat's plan on its samplers and stops; its grammar (lazy or not) is parsed before the request is queued. */
    private applyPlan(plan: ChatPlan, valid: ValidRequest): void {
        for (const s of valid.samplers) Object.assign(s, plan.sampler);
        for (const stop of plan.stops) if (stop.length > 0 && !valid.stopStrings.includes(stop)) valid.stopStrings.push(stop);
        const s0 = valid.samplers[0];
        if (s0?.grammar !== undefined) {
            try {
                this.model.checkGrammar(s0.grammar, s0.grammarRoot, s0.grammarLazy ? { lazy: true, triggers: s0.grammarTriggers } : undefined);
            } catch (e) {
                throw fieldError(ErrorCode.InvalidArgument, "grammar", (e as Error).message, e);
            }
        }
    }

    /** The ids of the special tokens a chat's parser reads as text (those that are one token). */
    private async preservedTokenIds(texts: readonly string[]): Promise<Set<number>> {
        const ids = new Set<number>();
        for (const t of texts) {
            let id = this.preserved.get(t);
            if (id === undefined) {
                const tokens = await this.model.tokenize(t, { addSpecial: false, parseSpecial: true });
                id = tokens.length === 1 ? tokens[0] : -1;
                // templates name a handful: a bound keeps requests with templates of their own from growing it
                if (this.preserved.size < 4096) this.preserved.set(t, id);
            }
            if (id >= 0) ids.add(id);
        }
        return ids;
    }

    /** A JSON responseFormat becomes a grammar; every grammar is parsed before the request is queued. */
    private resolveGrammar(request: GenerateRequest, valid: ValidRequest): void {
        const f = request.responseFormat;
        if (f && f.type !== "text") {
            const grammar = jsonSchemaToGrammar(f.type === "json_object" ? { type: "object" } : f.schema);
            for (const s of valid.samplers) {
                s.grammar = grammar;
                delete s.grammarRoot;
            }
        }
        const s0 = valid.samplers[0];
        if (s0?.grammar !== undefined) {
            try {
                this.model.checkGrammar(s0.grammar, s0.grammarRoot);
            } catch (e) {
                throw fieldError(ErrorCode.InvalidArgument, "grammar", (e as Error).message, e);
            }
        }
    }

    /** A request's prompt tokens, as prepare() computes them. */
    promptOf(request: GenerateRequest): Promise<number[]> {
        return this.promptTokens(request);
    }

    private async promptTokens(request: GenerateRequest): Promise<number[]> {
        const p = request.prompt;
        const vocab = this.model.metadata.vocabSize;
        if (request.suffix !== undefined && request.suffix !== null) return this.infillPrompt(p, request.suffix);
        if (typeof p === "string") {
            if (p.length === 0) throw fieldError(ErrorCode.InvalidArgument, "prompt", "must not be empty");
            this.checkPromptLength(p.length, "prompt");
            const t = Array.from(await this.tokenizeText(p, { addSpecial: request.addSpecial ?? true, parseSpecial: request.parseSpecial ?? true }));
            const bos = this.model.metadata.tokens.bos;
            // a chat template that writes BOS itself, plus the tokenizer's BOS, would give two
            if (t.length > 1 && bos >= 0 && t[0] === bos && t[1] === bos) t.shift();
            if (t.length === 0) throw fieldError(ErrorCode.InvalidArgument, "prompt", "tokenizes to nothing");
            return t;
        }
        if (p === null || typeof p !== "object" || typeof (p as ArrayLike<number>).length !== "number") {
            throw fieldError(ErrorCode.InvalidArgument, "prompt", "must be a string or an array of token ids");
        }
        const t = Array.from(p as ArrayLike<number>);
        if (t.length === 0) throw fieldError(ErrorCode.InvalidArgument, "prompt", "must not be empty");
        for (let i = 0; i < t.length; i++) {
            if (!Number.isInteger(t[i]) || t[i] < 0 || t[i] >= vocab) {
                throw fieldError(ErrorCode.InvalidArgument, `prompt[${i}]`, `(${t[i]}) is not a token id in [0, ${vocab})`);
            }
        }
        return t;
    }

    private async infillPrompt(prefix: unknown, suffix: unknown): Promise<number[]> {
        const t = this.model.metadata.tokens;
        if (!this.supportsInfill) {
            throw fieldError(ErrorCode.InvalidArgument, "suffix", "needs a model with fill-in-the-middle tokens, and this model has none");
        }
        if (typeof prefix !== "string") throw fieldError(ErrorCode.InvalidArgument, "prompt", "must be a string when 'suffix' is given");
        if (typeof suffix !== "string") throw fieldError(ErrorCode.InvalidArgument, "suffix", "must be a string");
        const plain = { addSpecial: false, parseSpecial: false };
        if (prefix.length + suffix.length > this.limits.maxPromptLength) this.checkPromptLength(prefix.length + suffix.length, "prompt");
        const [pre, suf] = await Promise.all([this.tokenizeText(prefix, plain), this.tokenizeText(suffix, plain)]);
        // prefix-suffix-middle order, as the FIM-trained code models (Qwen2.5-Coder, DeepSeek-Coder, StarCoder, CodeLlama) expect
        const out: number[] = [];
        if (this.model.metadata.addBos && t.bos >= 0) out.push(t.bos);
        out.push(t.fimPrefix, ...pre, t.fimSuffix, ...suf, t.fimMiddle);
        return out;
    }

    /**
     * Tokenizes on the libuv pool, at most two texts at once: decodes share that pool (4 threads by default),
     * and must find a thread free whatever the prompts in intake.
     */
    private async tokenizeText(text: string, options: { addSpecial: boolean; parseSpecial: boolean }): Promise<Int32Array> {
        if (this.tokenizing >= 2) await new Promise<void>((r) => this.tokenizeWaiters.push(r));
        else this.tokenizing++;
        try {
            return await this.model.tokenize(text, options);
        } finally {
            const next = this.tokenizeWaiters.shift();
            if (next) next(); // the slot passes to the next waiter
            else this.tokenizing--;
        }
    }
}

/** Characters of a chat's messages and tools, bounded like a prompt's before the template renders them. */
function chatLength(request: ChatRequest): number {
    let length = 0;
    for (const m of request.messages) {
        if (m === null || typeof m !== "object") continue;
        if (typeof m.content === "string") length += m.content.length;
        else if (Array.isArray(m.content)) for (const p of m.content) if (typeof p?.text === "string") length += p.text.length;
        if (typeof m.reasoning_content === "string") length += m.reasoning_content.length;
        if (Array.isArray(m.tool_calls)) for (const c of m.tool_calls) if (typeof c?.function?.arguments === "string") length += c.function.arguments.length;
    }
    if (Array.isArray(request.tools)) length += JSON.stringify(request.tools).length;
    return length;
}
