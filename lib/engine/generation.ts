// Generation: the handle a caller gets for one request. Events are buffered until the caller iterates
// (or asks only for the result); the engine pushes them, and ends it with a result or a refusal.
import type { GenerateEvent, GenerateResult } from "./types.js";

/** A running request: iterate it for events, or await result(). */
export class Generation implements AsyncIterable<GenerateEvent> {
    private readonly queue: GenerateEvent[] = [];
    private waiter: (() => void) | null = null;
    private ended = false;
    private failure: unknown = null;
    private iterating = false;
    private buffering = true;
    private readonly final: Promise<GenerateResult>;
    private settle!: { resolve: (r: GenerateResult) => void; reject: (e: unknown) => void };
    private readonly admitted: Promise<void>;
    private settleQueued!: { resolve: () => void; reject: (e: unknown) => void };
    /** Set once the request is queued. */
    id = -1;
    /** The prompt's tokens (for a chat, after the template), set once the request is queued; -1 before. */
    promptTokens = -1;
    /** @internal */ onAbort: (() => void) | null = null;

    constructor() {
        this.final = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
        this.final.catch(() => {});
        this.admitted = new Promise((resolve, reject) => (this.settleQueued = { resolve, reject }));
        this.admitted.catch(() => {});
    }

    /**
     * Resolves once the request is queued (validated, tokenized, within the context and the queue bound);
     * rejects with the reason it was refused. A server can wait on it before it commits to a status code.
     */
    queued(): Promise<void> {
        return this.admitted;
    }

    /** @internal */ markQueued(): void {
        this.settleQueued.resolve();
    }

    /** The final result (all choices). Rejects only if the request was refused (validation, queue full, closed). */
    result(): Promise<GenerateResult> {
        if (!this.iterating) {
            this.buffering = false;
            this.queue.length = 0;
        }
        return this.final;
    }

    /** Ends the request now (finishReason "abort"), or as soon as it is queued. */
    abort(): void {
        if (this.onAbort) this.onAbort();
        else this.abortRequested = true;
    }

    /** @internal */ abortRequested = false;

    /** @internal */ push(e: GenerateEvent): void {
        if (e.type === "done") {
            this.settle.resolve(e);
            this.ended = true;
        }
        if (this.buffering) this.queue.push(e);
        this.wake();
    }

    /** @internal */ fail(e: unknown): void {
        this.settleQueued.reject(e);
        this.failure = e;
        this.ended = true;
        this.settle.reject(e);
        this.wake();
    }

    private wake(): void {
        const w = this.waiter;
        this.waiter = null;
        w?.();
    }

    async *[Symbol.asyncIterator](): AsyncIterator<GenerateEvent> {
        this.iterating = true;
        let finished = false;
        try {
            for (;;) {
                if (this.queue.length > 0) {
                    const e = this.queue.shift()!;
                    if (e.type === "done") finished = true;
                    yield e;
                    if (finished) return;
                    continue;
                }
                if (this.failure !== null) throw this.failure;
                if (this.ended) return;
                await new Promise<void>((r) => (this.waiter = r));
            }
        } finally {
            // a consumer that stops early (break, throw) no longer wants the rest
            if (!finished && this.failure === null) this.abort();
        }
    }
}
