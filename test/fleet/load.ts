// The fleet's client: a closed loop of generation requests (completions and chat, streamed and not) through
// a balancer, each one classified as a client sees it. Every request carries its own X-Request-Id, which
// the balancer logs and the server logs, so each record can be matched with the replica that served it.
import { Agent, request, type IncomingMessage } from "node:http";

export type Outcome =
    | "ok"
    /** an HTTP status other than 200 (status says which) */
    | "http"
    /** no response at all: refused, reset before the headers, the socket hung up */
    | "conn"
    /** a stream whose body ended (cleanly or not) without `data: [DONE]` */
    | "cut"
    /** a stream that ended with an error event, or a 200 whose body is not a complete answer */
    | "bad"
    /** no end within the client's timeout */
    | "timeout";

export interface RequestSpec {
    path: "/v1/completions" | "/v1/chat/completions";
    stream: boolean;
    body: Record<string, unknown>;
    headers?: Record<string, string>;
    /** Bytes of JSON whitespace appended to the body (a big request, as an IDE's prompt with a file is). */
    padding?: number;
}

export interface RequestRecord {
    id: string;
    client: number;
    path: string;
    stream: boolean;
    big: boolean;
    session?: string;
    /** Epoch ms: sent, first content token (streams), ended. */
    t0: number;
    tFirst?: number;
    t1: number;
    outcome: Outcome;
    status?: number;
    error?: string;
    /** The response's `model` (which version answered). */
    model?: string;
    /** Streams: whether `data: [DONE]` came, and a finish_reason before it. */
    done?: boolean;
    finished?: boolean;
    completionTokens?: number;
    promptTokens?: number;
    cachedTokens?: number;
    /** The connection was a kept-alive one and was reset before any answer (then the request is sent again). */
    resetOnReused?: boolean;
    /** 1 when the request was sent again after such a reset; firstError is what the first try met. */
    clientRetries?: number;
    firstError?: string;
}

export interface RequestOptions {
    agent: Agent;
    id: string;
    timeoutMs: number;
}

/**
 * Sends one request; resolves with its record (never rejects). Like the openai SDKs and node's own advice
 * (http.ClientRequest.reusedSocket), a request that met a reset on a kept-alive connection before any
 * answer is sent once more: the balancer closed that idle connection as the request left (nginx does on a
 * reload). Such resends are counted (clientRetries), so they cannot hide anything.
 */
export async function send(baseUrl: string, spec: RequestSpec, o: RequestOptions, client = 0): Promise<RequestRecord> {
    let rec = await attempt(baseUrl, spec, o, client);
    if (rec.outcome === "conn" && rec.resetOnReused) {
        const again = await attempt(baseUrl, spec, o, client);
        again.t0 = rec.t0;
        again.clientRetries = 1;
        again.firstError = rec.error;
        rec = again;
    }
    return rec;
}

function attempt(baseUrl: string, spec: RequestSpec, o: RequestOptions, client: number): Promise<RequestRecord> {
    const json = JSON.stringify(spec.body);
    const body = spec.padding ? json.slice(0, -1) + " ".repeat(spec.padding) + "}" : json;
    const rec: RequestRecord = {
        id: o.id, client, path: spec.path, stream: spec.stream, big: (spec.padding ?? 0) > 0, session: spec.headers?.["x-session-id"],
        t0: Date.now(), t1: 0, outcome: "ok",
    };
    return new Promise((resolve) => {
        let settled = false;
        const finish = (outcome: Outcome, error?: string) => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            rec.t1 = Date.now();
            rec.outcome = outcome;
            if (error !== undefined) rec.error = error;
            resolve(rec);
        };
        const req = request(`${baseUrl}${spec.path}`, {
            method: "POST", agent: o.agent,
            headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), "x-request-id": o.id, ...spec.headers },
        }, (res) => onResponse(res, rec, spec.stream, finish));
        const timer = setTimeout(() => {
            req.destroy(new Error("client timeout"));
            finish("timeout", `no end after ${o.timeoutMs} ms`);
        }, o.timeoutMs);
        req.on("error", (e: NodeJS.ErrnoException) => {
            if (rec.status === undefined && req.reusedSocket && (e.code === "ECONNRESET" || e.code === "EPIPE")) rec.resetOnReused = true;
            finish(rec.status === undefined ? "conn" : rec.stream ? "cut" : "bad", e.code ?? e.message);
        });
        req.end(body);
    });
}

interface Chunk {
    model?: string;
    choices?: { text?: string; delta?: { content?: string | null }; finish_reason?: string | null }[];
    usage?: { completion_tokens?: number; prompt_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } } | null;
    error?: { message?: string; code?: string };
}

function noteUsage(rec: RequestRecord, u: Chunk["usage"]): void {
    if (!u) return;
    if (typeof u.completion_tokens === "number") rec.completionTokens = u.completion_tokens;
    if (typeof u.prompt_tokens === "number") rec.promptTokens = u.prompt_tokens;
    if (typeof u.prompt_tokens_details?.cached_tokens === "number") rec.cachedTokens = u.prompt_tokens_details.cached_tokens;
}

function onResponse(res: IncomingMessage, rec: RequestRecord, stream: boolean, finish: (o: Outcome, e?: string) => void): void {
    rec.status = res.statusCode;
    res.setEncoding("utf8");
    let text = "";
    let buf = "";
    let errorEvent: string | undefined;
    const isSse = stream && res.statusCode === 200;
    res.on("data", (d: string) => {
        if (!isSse) {
            text += d;
            return;
        }
        buf += d;
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, i);
            buf = buf.slice(i + 2);
            for (const line of event.split("\n")) {
                if (!line.startsWith("data: ")) continue;
                const data = line.slice(6).trim();
                if (data === "[DONE]") {
                    rec.done = true;
                    continue;
                }
                try {
                    const j = JSON.parse(data) as Chunk;
                    if (j.error) errorEvent = `${j.error.code ?? "error"}: ${j.error.message ?? ""}`;
                    if (j.model) rec.model = j.model;
                    noteUsage(rec, j.usage);
                    for (const c of j.choices ?? []) {
                        const piece = c.text ?? c.delta?.content;
                        if (piece && rec.tFirst === undefined) rec.tFirst = Date.now();
                        if (c.finish_reason) rec.finished = true;
                    }
                } catch {
                    errorEvent = `unparsable event: ${data.slice(0, 80)}`;
                }
            }
        }
    });
    // a body cut short (the replica died mid-response) is an 'error' (aborted) or a close before 'end'
    res.on("error", (e: NodeJS.ErrnoException) => finish(isSse ? "cut" : "bad", `body: ${e.code ?? e.message}`));
    res.on("close", () => {
        if (!res.complete) finish(isSse ? "cut" : "bad", "body ended early");
    });
    res.on("end", () => {
        if (res.statusCode !== 200) {
            let code = "";
            try {
                code = (JSON.parse(text) as Chunk).error?.code ?? "";
            } catch { /* not json */ }
            finish("http", `${res.statusCode}${code ? ` ${code}` : ""}`);
            return;
        }
        if (isSse) {
            if (!rec.done) finish("cut", "no [DONE]");
            else if (errorEvent) finish("bad", errorEvent);
            else if (!rec.finished) finish("bad", "[DONE] without a finish_reason");
            else finish("ok");
            return;
        }
        try {
            const j = JSON.parse(text) as Chunk;
            rec.model = j.model;
            noteUsage(rec, j.usage);
            if (!j.choices?.every((c) => c.finish_reason)) finish("bad", "a choice without finish_reason");
            else finish("ok");
        } catch {
            finish("bad", "unparsable body");
        }
    });
}

export interface LoadOptions {
    baseUrl: string;
    clients: number;
    /** Request i of client c (i counts from 0). */
    spec: (client: number, i: number) => RequestSpec;
    /** Pause after each request of a client, ms (0: closed loop without think time). */
    thinkMs?: (client: number) => number;
    timeoutMs?: number;
    /** Prefix of the request ids. */
    tag: string;
}

/** A closed loop: each client sends its next request when its last one ended, until stop(). */
export class Load {
    readonly records: RequestRecord[] = [];
    private stopping = false;
    private readonly agent: Agent;
    private readonly loops: Promise<void>[] = [];
    private n = 0;

    constructor(private readonly o: LoadOptions) {
        this.agent = new Agent({ keepAlive: true, maxSockets: o.clients });
    }

    start(): this {
        for (let c = 0; c < this.o.clients; c++) this.loops.push(this.loop(c));
        return this;
    }

    private async loop(c: number): Promise<void> {
        for (let i = 0; !this.stopping; i++) {
            const id = `${this.o.tag}-${c}-${i}-${this.n++}`;
            const rec = await send(this.o.baseUrl, this.o.spec(c, i), { agent: this.agent, id, timeoutMs: this.o.timeoutMs ?? 120_000 }, c);
            this.records.push(rec);
            const think = this.o.thinkMs?.(c) ?? 0;
            if (think > 0 && !this.stopping) await new Promise((r) => setTimeout(r, think));
        }
    }

    /** Stops sending; resolves when the requests in flight have ended. */
    async stop(): Promise<RequestRecord[]> {
        this.stopping = true;
        await Promise.all(this.loops);
        this.agent.destroy();
        return this.records;
    }
}

/** The fleet test's mix: completions and chat, streamed and not, and now and then a big request body. */
export function mixedSpec(o: { streamTokens: number; plainTokens: number; bigEvery: number; bigBytes: number }): (client: number, i: number) => RequestSpec {
    return (client, i) => {
        const k = (client + i) % 4;
        const stream = k === 1 || k === 3;
        const chat = k === 1 || k === 2;
        const maxTokens = stream ? o.streamTokens : o.plainTokens;
        const words = `request ${i} of client ${client}: write a function that adds two numbers`;
        const body: Record<string, unknown> = chat
            ? { messages: [{ role: "user", content: words }], max_tokens: maxTokens, temperature: 0.7, ...(stream && { stream: true }) }
            : { prompt: words, max_tokens: maxTokens, temperature: 0.7, ...(stream && { stream: true }) };
        const padding = !stream && o.bigEvery > 0 && i % o.bigEvery === o.bigEvery - 1 ? o.bigBytes : 0;
        return { path: chat ? "/v1/chat/completions" : "/v1/completions", stream, body, padding };
    };
}
