// Fake replicas for checking a balancer's retry and streaming settings in isolation, in a second:
// one that answers 200, one that answers 503 with Retry-After (a replica draining before the balancer
// noticed), one that takes the request and closes the connection without a word (a replica killed
// mid-request), a port where nothing listens (a dead replica), and one that streams server-sent events
// slowly. Each answers GET /ready with 200, so a balancer with active checks keeps it in rotation.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { freePort } from "./proc.js";

export type FakeKind = "ok" | "draining" | "hangup" | "dead" | "slow-stream";

export interface Fake {
    kind: FakeKind;
    port: number;
    /** Generation requests (POST) it received. */
    posts: number;
    /** Bytes of the last POST body it read. */
    lastBody: number;
    close(): Promise<void>;
}

export async function startFake(kind: FakeKind, o: { eventGapMs?: number; events?: number } = {}): Promise<Fake> {
    const port = await freePort();
    const fake: Fake = { kind, port, posts: 0, lastBody: 0, close: async () => {} };
    if (kind === "dead") return fake;
    const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
        if (req.method === "GET") {
            res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ready"}');
            return;
        }
        fake.posts++;
        let n = 0;
        req.on("data", (d: Buffer) => (n += d.length));
        req.on("end", () => {
            fake.lastBody = n;
            if (kind === "hangup") {
                req.socket.destroy();
                return;
            }
            if (kind === "draining") {
                const body = JSON.stringify({ error: { message: "the server is shutting down", type: "service_unavailable_error", code: "draining" } });
                res.writeHead(503, { "content-type": "application/json", "retry-after": "1", "content-length": Buffer.byteLength(body) }).end(body);
                return;
            }
            if (kind === "slow-stream") {
                res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" });
                const gap = o.eventGapMs ?? 500;
                const total = o.events ?? 4;
                let i = 0;
                const tick = () => {
                    res.write(`data: {"i":${i},"sent":${Date.now()}}\n\n`);
                    if (++i < total) setTimeout(tick, gap);
                    else res.end("data: [DONE]\n\n");
                };
                tick();
                return;
            }
            const body = JSON.stringify({ object: "text_completion", model: `fake-${port}`, choices: [{ index: 0, text: "", finish_reason: "length" }], bytes: n });
            res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
        });
    });
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
    fake.close = () => new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
    });
    return fake;
}
