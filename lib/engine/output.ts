// Output: one request's tokens become text, events and a result. Each choice's token bytes go through a
// TextStream (whole UTF-8 characters, text held back while it may be the start of a stop string); a stop
// string ends the choice; the last choice to end makes the result (usage, timings). Needs no addon: the
// token bytes come from `piece`, and the sequences' counters from the scheduler's view of the request.
import type { FinishReason } from "../scheduler/scheduler.js";
import { MessageReader, plainMessage, type ChatPlan, type MessageDelta } from "./chat.js";
import type { Generation } from "./generation.js";
import { TextStream } from "./text.js";
import type { Choice, GenerateEvent, GenerateResult, TokenLogprob } from "./types.js";

/** What the output reads of a scheduled sequence when the request ends. */
export interface SequenceCounters {
    readonly promptLength: number;
    readonly cachedTokens: number;
    /** Tokens sampled (output tokens, plus a final EOS or stop token). */
    readonly sampled: number;
    readonly preemptions: number;
    /** When it was first scheduled (performance.now()), -1 if never. */
    readonly firstScheduledAt: number;
}

/** One sampled token of one choice, as the scheduler reports it. */
export interface TokenOut {
    token: number;
    logprob?: number;
    topIds?: Int32Array;
    topLogprobs?: Float32Array;
}

/** Where finished choices and results are counted (the engine's totals). */
export interface OutputTotals {
    generatedTokens: number;
    cachedTokens: number;
    finished: Record<FinishReason, number>;
}

interface ChoiceState {
    text: string[];
    tokens: number[];
    logprobs: TokenLogprob[] | undefined;
    stream: TextStream;
    finishReason: FinishReason | null;
    /** The request's stop string that ended the choice. */
    stopString?: string;
    error?: unknown;
    lastTokenAt: number;
    /** A chat's parser (null: a completion, or a chat whose text is all content). */
    reader: MessageReader | null;
}

/** What a chat's output needs: how its text is read, and the tokens rendered as their special text (a call's tags). */
export interface ChatOutput {
    parser: ChatPlan["parser"];
    specialTokens: ReadonlySet<number>;
    specialPiece: (token: number) => Uint8Array;
}

const now = () => performance.now();

export class RequestOutput {
    private readonly choices: ChoiceState[];
    private open: number;
    private firstTokenAt = -1;
    private readonly interTokenMs: number[] = [];
    private readonly requestStops: ReadonlySet<string>;
    /** Called once, when the last choice has ended and the result is out. */
    onDone: (() => void) | null = null;

    constructor(readonly id: number, readonly gen: Generation, private readonly seqs: readonly SequenceCounters[],
        options: { stopStrings: readonly string[]; requestStops?: number; logprobs: boolean }, private readonly startedAt: number,
        private readonly piece: (token: number) => Uint8Array, private readonly totals: OutputTotals,
        private readonly chat: ChatOutput | null = null) {
        this.open = seqs.length;
        this.requestStops = new Set(options.stopStrings.slice(0, options.requestStops ?? options.stopStrings.length));
        this.choices = seqs.map(() => ({
            text: [], tokens: [], logprobs: options.logprobs ? [] : undefined, stream: new TextStream(options.stopStrings),
            finishReason: null, lastTokenAt: -1, reader: chat?.parser ? new MessageReader(chat.parser) : null,
        }));
    }

    private bytesOf(token: number): Uint8Array {
        return this.chat !== null && this.chat.specialTokens.has(token) ? this.chat.specialPiece(token) : this.piece(token);
    }

    /** The message changes of a choice's next text; a parser that fails leaves the rest of the choice as content. */
    private read(c: ChoiceState, text: string, final: boolean): MessageDelta[] | undefined {
        if (this.chat === null) return undefined;
        if (c.reader === null) return text.length > 0 ? [{ content: text }] : [];
        try {
            return c.reader.update(text, final);
        } catch {
            // the parser promises not to throw on model text; if it does, the text is still delivered: this piece and
            // any the reader held back
            const unread = c.reader.unread();
            c.reader = null;
            return unread.length > 0 ? [{ content: unread }] : [];
        }
    }

    /** Whether choice `index` has ended. */
    finished(index: number): boolean {
        return this.choices[index].finishReason !== null;
    }

    /** A token of choice `index`: pushes its delta. Returns true when a stop string ended the choice (the caller stops its sequence). */
    token(index: number, e: TokenOut): boolean {
        const c = this.choices[index];
        if (c.finishReason !== null) return false;
        const t = now();
        if (this.firstTokenAt < 0) this.firstTokenAt = t;
        if (c.lastTokenAt >= 0) this.interTokenMs.push(t - c.lastTokenAt);
        c.lastTokenAt = t;
        this.totals.generatedTokens++;
        const { text, stopped, stop } = c.stream.push(this.bytesOf(e.token));
        if (stop !== undefined && this.requestStops.has(stop)) c.stopString = stop;
        c.tokens.push(e.token);
        let lp: TokenLogprob[] | undefined;
        if (c.logprobs && e.logprob !== undefined) {
            const entry: TokenLogprob = { token: e.token, logprob: e.logprob };
            if (e.topIds && e.topLogprobs) {
                entry.top = [];
                for (let i = 0; i < e.topIds.length; i++) if (e.topIds[i] >= 0) entry.top.push({ token: e.topIds[i], logprob: e.topLogprobs[i] });
            }
            c.logprobs.push(entry);
            lp = [entry];
        }
        if (text.length > 0) c.text.push(text);
        const delta: GenerateEvent = { type: "delta", index, text, tokens: [e.token] };
        if (lp) delta.logprobs = lp;
        // the last piece is read as final when the choice ends (a stop string here ends it just below)
        const message = text.length > 0 ? this.read(c, text, false) : this.chat !== null ? [] : undefined;
        if (message) delta.message = message;
        this.gen.push(delta);
        if (stopped) this.finish(index, "stop");
        return stopped;
    }

    /** Ends choice `index` (no-op if it has ended); the last one ends the request with its result. */
    finish(index: number, reason: FinishReason, error?: unknown): void {
        const c = this.choices[index];
        if (c.finishReason !== null) return;
        const rest = c.stream.end(); // text held back for a stop string that never came
        if (rest.length > 0) c.text.push(rest);
        // a chat's text is read once more as complete: what a partial read held back (a call's last argument) comes out
        const message = this.read(c, rest, true);
        if (rest.length > 0 || (message && message.length > 0)) {
            const delta: GenerateEvent = { type: "delta", index, text: rest, tokens: [] };
            if (message) delta.message = message;
            this.gen.push(delta);
        }
        c.finishReason = reason;
        c.error = error;
        this.totals.finished[reason]++;
        const fin: GenerateEvent = { type: "finish", index, finishReason: reason };
        if (c.stopString !== undefined) fin.stopString = c.stopString;
        if (error !== undefined) fin.error = error;
        this.gen.push(fin);
        if (--this.open === 0) this.done();
    }

    /** Ends every choice still open (an internal failure). */
    finishAll(reason: FinishReason, error?: unknown): void {
        for (let i = 0; i < this.choices.length; i++) this.finish(i, reason, error);
    }

    private done(): void {
        const t = now();
        let firstScheduled = Infinity, completion = 0, preemptions = 0;
        for (const s of this.seqs) {
            if (s.firstScheduledAt >= 0) firstScheduled = Math.min(firstScheduled, s.firstScheduledAt);
            completion += s.sampled;
            preemptions += s.preemptions;
        }
        const promptTokens = this.seqs[0].promptLength;
        const cachedTokens = this.seqs[0].cachedTokens;
        this.totals.cachedTokens += cachedTokens;
        const choices: Choice[] = this.choices.map((c, index) => {
            const ch: Choice = { index, text: c.text.join(""), tokens: c.tokens, finishReason: c.finishReason! };
            if (c.stopString !== undefined) ch.stopString = c.stopString;
            if (c.error !== undefined) ch.error = c.error;
            if (c.logprobs) ch.logprobs = c.logprobs;
            if (this.chat !== null) ch.message = c.reader ? c.reader.message() : plainMessage(ch.text);
            return ch;
        });
        const first = choices[0];
        const result: GenerateResult = {
            id: this.id, text: first.text, tokens: first.tokens, finishReason: first.finishReason, choices,
            usage: { promptTokens, cachedTokens, completionTokens: completion, totalTokens: promptTokens + completion },
            timings: {
                queueMs: Number.isFinite(firstScheduled) ? firstScheduled - this.startedAt : t - this.startedAt,
                ttftMs: this.firstTokenAt >= 0 ? this.firstTokenAt - this.startedAt : -1,
                interTokenMs: this.interTokenMs, e2eMs: t - this.startedAt,
            },
            preemptions,
        };
        if (first.error !== undefined) result.error = first.error;
        if (first.logprobs) result.logprobs = first.logprobs;
        this.onDone?.();
        this.gen.push({ type: "done", ...result });
    }
}

/**
 * Every token's bytes, packed: token t is bytes[offsets[t], offsets[t + 1]). About 1 MB for a 152K vocabulary,
 * built once at load (a Map filled with each token as it was first seen grew the JS heap for hours under a
 * random model's spread of tokens: 21 to 45 MB in a 20-minute soak).
 */
export class PieceTable {
    private readonly bytes: Uint8Array;
    private readonly offsets: Uint32Array;

    constructor(vocabSize: number, pieceOf: (token: number) => Uint8Array) {
        const pieces = Array.from({ length: vocabSize }, (_, t) => pieceOf(t));
        this.offsets = new Uint32Array(vocabSize + 1);
        for (let t = 0; t < vocabSize; t++) this.offsets[t + 1] = this.offsets[t] + pieces[t].length;
        this.bytes = new Uint8Array(this.offsets[vocabSize]);
        for (let t = 0; t < vocabSize; t++) this.bytes.set(pieces[t], this.offsets[t]);
    }

    /** A view of a token's bytes (the caller passes ids in the vocabulary; copy it to keep it). */
    piece(token: number): Uint8Array {
        return this.bytes.subarray(this.offsets[token], this.offsets[token + 1]);
    }
}
