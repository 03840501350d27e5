// The engine: one model, one context, one scheduling loop. Requests come in through generate(), chat()
// and complete(); intake (input.ts) makes them ready, the loop plans a step, launches its decode, and while
// the GPU works turns the previous step's tokens into text and events (output.ts). Data flows one way:
// request -> engine -> scheduler -> binding, and tokens back out through the scheduler's events.
//
// The rest of the engine: types.ts (its public types), options.ts (options to settings, the context),
// generation.ts (a request's handle), request.ts (field checks), input.ts, output.ts, stats.ts.
import { BatchwiseError, ErrorCode, LlamaModel, fieldError, trimHeap, type LlamaContext, type ModelMetadata } from "../binding/index.js";
import { runSwaps, Scheduler, type SchedRequest, type SchedulerEvent } from "../scheduler/scheduler.js";
import { Chats, type ChatMessage, type ChatPlan } from "./chat.js";
import { Generation } from "./generation.js";
import { Intake } from "./input.js";
import { createEngineContext, resolveOptions } from "./options.js";
import { PieceTable, RequestOutput } from "./output.js";
import type { GenerateRequest } from "./request.js";
import { EngineCounters } from "./stats.js";
import type { ChatFormatOptions } from "./chat.js";
import type { ChatRequest, EngineOptions, EngineSettings, EngineStats, GenerateResult } from "./types.js";

export { Generation } from "./generation.js";
export type * from "./types.js";

interface Live {
    sched: SchedRequest;
    output: RequestOutput;
}

const now = () => performance.now();
/** The least time between two heap trims when the engine goes idle. */
const IDLE_TRIM_MS = 1000;
/** The last heap trim in this process: malloc_trim acts on the whole process, so engines (several models) share it. */
let lastTrim = now();

export class Engine {
    private readonly scheduler: Scheduler;
    private readonly intake: Intake;
    private readonly chats: Chats;
    private readonly pieces: PieceTable;
    private readonly counters = new EngineCounters();
    private readonly requests = new Map<SchedRequest, Live>();
    private nextId = 1;
    private wakeLoop: (() => void) | null = null;
    private readonly loopDone: Promise<void>;
    private closing = false;
    private closed = false;
    private broken: unknown = null;
    private pendingAdmissions = 0;
    private lastProgress = now();

    private constructor(readonly model: LlamaModel, readonly context: LlamaContext, readonly options: Readonly<EngineOptions>,
        /** The settings in force, defaults resolved: what load() made of the options. */
        readonly settings: Readonly<EngineSettings>) {
        const s = settings;
        this.scheduler = new Scheduler(context, {
            numBlocks: s.numBlocks, blockSize: s.blockSize, maxRunning: s.maxRunning, seqIds: s.seqIds, batchTokens: s.batchTokens,
            prefillChunk: s.prefillChunk, longPrefills: s.longPrefills, maxContext: s.maxContext, pagedKv: s.pagedKv,
            prefixCache: s.prefixCache, preemption: s.preemption, swapSpaceBytes: s.swapSpaceBytes, watermark: s.watermark,
            isEog: (t) => model.isEog(t), vocabSize: model.metadata.vocabSize,
        });
        this.chats = new Chats(model, options.chatTemplate);
        this.intake = new Intake(model, this.chats, s, () => this.scheduler.waitingSequences);
        this.pieces = new PieceTable(model.metadata.vocabSize, (t) => model.tokenToPiece(t));
        this.loopDone = this.loop();
    }

    /** Loads the model and creates the KV cache and the scheduling loop. */
    static async load(options: EngineOptions): Promise<Engine> {
        const resolved = resolveOptions(options);
        const model = await LlamaModel.load(resolved.model, resolved.load);
        let context: LlamaContext | undefined;
        try {
            const made = await createEngineContext(model, resolved);
            context = made.context;
            return new Engine(model, context, { ...options }, made.settings);
        } catch (e) {
            context?.dispose();
            model.dispose();
            throw e;
        }
    }

    get metadata(): ModelMetadata {
        return this.model.metadata;
    }

    /** Most tokens (prompt + generated) one request may hold. */
    get maxContext(): number {
        return this.settings.maxContext;
    }

    get maxQueued(): number {
        return this.settings.maxQueued;
    }

    get maxPromptLength(): number {
        return this.settings.maxPromptLength;
    }

    /** Starts a request; iterate the result for events or await its result(). */
    generate(request: GenerateRequest): Generation {
        return this.start(request, undefined);
    }

    private start(request: GenerateRequest, plan: ChatPlan | undefined): Generation {
        const gen = new Generation();
        const startedAt = now();
        this.pendingAdmissions++;
        this.enqueue(gen, request, startedAt, plan).finally(() => this.pendingAdmissions--);
        return gen;
    }

    /** Runs a request to its end. */
    complete(request: GenerateRequest): Promise<GenerateResult> {
        return this.generate(request).result();
    }

    /**
     * Starts a chat request: the messages, tools and reasoning options go through the chat template; each
     * choice's text is read back as a message (result choices' `message`, stream deltas' `message`).
     */
    chat(request: ChatRequest): Generation {
        let chat: ReturnType<Intake["chatRequest"]>;
        try {
            chat = this.intake.chatRequest(request);
        } catch (e) {
            const gen = new Generation();
            gen.fail(e);
            return gen;
        }
        return this.start(chat.request, chat.plan);
    }

    /** The prompt text a chat becomes (the engine's template, or options.template), assistant turn opened unless addGenerationPrompt is false. */
    formatChat(messages: readonly ChatMessage[], options: ChatFormatOptions = {}): string {
        return this.chats.format(messages, options);
    }

    /** A chat's prompt tokens, exactly as chat() computes them (what /tokenize with messages counts). */
    async chatPromptTokens(request: ChatRequest): Promise<number[]> {
        const { request: r } = this.intake.chatRequest(request);
        return this.intake.promptOf(r);
    }

    /** How the chat template is rendered: Jinja (tools, reasoning), llama.cpp's built-in formats, or not at all (none). */
    get chatTemplateKind(): "jinja" | "builtin" | "none" {
        return this.chats.kind;
    }

    /** Text to token ids, as a prompt is tokenized (addSpecial adds BOS where the model asks; parseSpecial reads "<|im_start|>" as one token). */
    tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): Promise<number[]> {
        return this.intake.tokenize(text, options);
    }

    /** Token ids to text (special tokens written out unless special is false). */
    detokenize(tokens: readonly number[], options: { special?: boolean } = {}): Promise<string> {
        const vocab = this.model.metadata.vocabSize;
        if (!Array.isArray(tokens)) throw fieldError(ErrorCode.InvalidArgument, "tokens", "must be an array of token ids");
        tokens.forEach((t, i) => {
            if (!Number.isInteger(t) || t < 0 || t >= vocab) throw fieldError(ErrorCode.InvalidArgument, `tokens[${i}]`, `(${String(t)}) is not a token id in [0, ${vocab})`);
        });
        return this.model.detokenize(tokens, { special: options.special ?? true });
    }

    /** The bytes of one token's text (a piece may hold part of a UTF-8 character). */
    tokenBytes(token: number): Uint8Array {
        if (!Number.isInteger(token) || token < 0 || token >= this.model.metadata.vocabSize) return this.model.tokenToPiece(token); // its typed error
        return this.pieces.piece(token).slice(); // the caller's own copy: the table is shared
    }

    /** Whether the model has the tokens fill-in-the-middle needs (prefix, suffix, middle). */
    get supportsInfill(): boolean {
        return this.intake.supportsInfill;
    }

    stats(): EngineStats {
        const t = now();
        return this.counters.snapshot(this.scheduler.stats(), t, { intakeSequences: this.intake.sequences, closing: this.closing, ...this.health(t) });
    }

    /** stats()'s `healthy` and `stalledMs` alone, without the counters (cheap enough for every request). */
    health(t = now()): Pick<EngineStats, "healthy" | "stalledMs"> {
        return { healthy: this.broken === null, stalledMs: this.scheduler.busy || this.requests.size > 0 ? Math.max(0, t - this.lastProgress) : 0 };
    }

    /**
     * Stops taking requests, lets running ones finish (with `drain`, up to `timeoutMs`) or aborts them,
     * then frees the KV cache and the model. Idempotent.
     */
    async close(options: { drain?: boolean; timeoutMs?: number } = {}): Promise<void> {
        if (!this.closing) {
            this.closing = true;
            if (options.drain) {
                const deadline = now() + (options.timeoutMs ?? 30_000);
                while ((this.requests.size > 0 || this.pendingAdmissions > 0) && now() < deadline) {
                    await new Promise((r) => setTimeout(r, 10));
                }
            }
            while (this.pendingAdmissions > 0) await new Promise((r) => setTimeout(r, 1));
            this.scheduler.finishAll("abort");
            this.closed = true;
            this.wake();
        }
        await this.loopDone;
        if (!this.context.disposed) {
            this.chats.dispose();
            this.context.dispose();
            this.model.dispose();
        }
    }

    // ---- intake to the queue --------------------------------------------------------------------

    private refuseIfClosed(): void {
        if (this.closing) throw new BatchwiseError(ErrorCode.EngineClosed, "the engine is closing and takes no new requests");
        if (this.broken !== null) throw this.failure(this.broken);
    }

    private async enqueue(gen: Generation, request: GenerateRequest, startedAt: number, plan: ChatPlan | undefined): Promise<void> {
        try {
            this.refuseIfClosed();
            const { valid, prompt, chat } = await this.intake.prepare(request, plan);
            // a request that arrived before close() began is served (or aborted) like the others
            if (this.closed) throw new BatchwiseError(ErrorCode.EngineClosed, "the engine closed while the request was being tokenized");
            if (this.broken !== null) this.refuseIfClosed();
            const sched = this.scheduler.submit({
                prompt, n: valid.n, maxTokens: valid.maxTokens ?? this.maxContext - prompt.length, priority: valid.priority,
                ignoreEos: valid.ignoreEos, stopTokens: valid.stopTokens, samplers: valid.samplers, useCache: valid.useCache,
                cacheSalt: valid.cacheSalt,
            }, this.nextId++);
            gen.id = sched.id;
            gen.promptTokens = prompt.length;
            const output = new RequestOutput(sched.id, gen, sched.seqs, { stopStrings: valid.stopStrings, requestStops: valid.requestStops, logprobs: valid.logprobs >= 0 },
                startedAt, (t) => this.pieces.piece(t), this.counters.totals,
                chat ? { parser: chat.plan.parser, specialTokens: chat.specialTokens, specialPiece: (t) => this.model.tokenToPiece(t, { special: true }) } : null);
            this.requests.set(sched, { sched, output });
            this.counters.request(prompt.length);
            const abort = () => {
                for (const s of sched.seqs) this.scheduler.finish(s, "abort");
                this.wake();
            };
            gen.onAbort = abort;
            const signal = request.signal;
            signal?.addEventListener("abort", abort, { once: true });
            output.onDone = () => {
                this.requests.delete(sched);
                signal?.removeEventListener("abort", abort);
            };
            gen.markQueued();
            if (signal?.aborted || gen.abortRequested) abort();
            this.wake();
        } catch (e) {
            gen.fail(e);
        }
    }

    // ---- the loop -------------------------------------------------------------------------------

    private wake(): void {
        const w = this.wakeLoop;
        this.wakeLoop = null;
        w?.();
    }

    private async loop(): Promise<void> {
        await Promise.resolve();
        try {
            for (;;) {
                const t0 = now();
                const step = this.scheduler.plan();
                // the swaps the plan decided, before the decode (the step's rows may change: a failed restore leaves it)
                if (step && (step.swapOut.length > 0 || step.swapIn.length > 0)) await runSwaps(this.scheduler, this.context, step);
                const events = this.scheduler.takeEvents();
                if (step && step.entries.length === 0) {
                    this.dispatch(events); // only swaps this step
                    continue;
                }
                if (!step) {
                    this.dispatch(events);
                    if (!this.scheduler.busy) {
                        if (this.closed) break;
                        this.maybeTrimHeap(IDLE_TRIM_MS); // what the burst freed goes back now, not at the next one
                        await new Promise<void>((r) => (this.wakeLoop = r));
                        this.lastProgress = now(); // idle time is not a stall
                    } else {
                        // work that cannot start yet (should not last): poll rather than spin
                        await new Promise<void>((r) => setTimeout((this.wakeLoop = r), 2));
                    }
                    continue;
                }
                const t1 = now();
                const decoding = this.context.decode(step.batch);
                decoding.catch(() => {});
                // the decode runs off the JS thread: hand out the last step's tokens meanwhile (and trim the heap, now and then)
                this.dispatch(events);
                this.maybeTrimHeap(this.settings.trimHeapMs);
                let decodeMs = 0;
                try {
                    const result = await decoding;
                    decodeMs = result.decodeMs + result.sampleMs;
                    this.scheduler.complete(step, result);
                } catch (e) {
                    this.scheduler.fail(step, e);
                }
                this.lastProgress = now();
                this.counters.step({ planMs: t1 - t0, stepMs: this.lastProgress - t0, decodeMs }, step.promptTokens, step.decodeTokens, this.lastProgress);
                this.readGraphCounters();
            }
            this.dispatch(this.scheduler.takeEvents());
        } catch (e) {
            this.fatal(e);
        }
    }

    /** llama.cpp's graph counters, between steps (the context is idle then); diagnostics: a failure to read is not the engine's. */
    private readGraphCounters(): void {
        try {
            const p = this.context.perf();
            this.counters.graphs.reuses = p.graphReuses;
            this.counters.graphs.allocationPlans = p.allocationPlans;
        } catch {
            return;
        }
    }

    /**
     * Gives malloc's free pages back to the system when the process's last trim (by any engine) is `everyMs` old
     * (trimHeapMs 0: never). Housekeeping: a trim that fails is not the engine's failure.
     */
    private maybeTrimHeap(everyMs: number): void {
        const t = now();
        if (this.settings.trimHeapMs === 0 || t - lastTrim < everyMs) return;
        lastTrim = t;
        try {
            trimHeap();
        } catch {
            return;
        }
        this.counters.heap.trims++;
        this.counters.heap.trimMs += now() - t;
    }

    /** An internal failure: every request ends with ERR_ENGINE_FAILED (the cause attached), the engine takes no more. */
    private fatal(e: unknown): void {
        this.broken = e;
        try {
            this.dispatch(this.scheduler.takeEvents()); // what had ended before the failure ends as it did
        } catch {
            // the failure may be in dispatch itself
        }
        const failure = this.failure(e);
        for (const live of [...this.requests.values()]) live.output.finishAll("error", failure);
    }

    /** The error a request gets from an engine that stopped after an internal error: no fault of the request's. */
    private failure(cause: unknown): BatchwiseError {
        const why = cause instanceof Error ? cause.message : String(cause);
        return new BatchwiseError(ErrorCode.EngineFailed, `the engine stopped after an internal error: ${why}`, { cause });
    }

    private dispatch(events: SchedulerEvent[]): void {
        for (const e of events) {
            const live = this.requests.get(e.seq.request);
            if (!live) continue;
            if (e.kind === "token") {
                if (live.output.token(e.seq.index, e)) this.scheduler.finish(e.seq, "stop");
            } else {
                live.output.finish(e.seq.index, e.reason, e.error);
            }
        }
    }
}
