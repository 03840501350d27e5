// Processes for the fleet harness: any program (nginx, haproxy, a node server) under a small supervisor
// that kills it when we go away however we go (a crash, SIGKILL, a test runner's timeout), free loopback
// ports, and waiting for an HTTP status. No top-level side effects: `node --test dist/test/` loads every
// module under dist/test.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:net";
import { constants } from "node:os";

// The supervisor: its stdin is a pipe from us, and its end means we are gone (then the program gets
// SIGKILL). The signals below reach the program as they are (SIGHUP reloads nginx, SIGUSR2 haproxy).
const SUPERVISOR = `
const { spawn } = require("node:child_process");
const { constants } = require("node:os");
const [cmd, ...args] = JSON.parse(process.argv[1]);
const child = spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
const kill = (s) => { try { child.kill(s); } catch {} };
process.stdin.on("end", () => kill("SIGKILL"));
process.stdin.on("error", () => kill("SIGKILL"));
process.stdin.resume();
for (const s of ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"]) process.on(s, () => kill(s));
child.on("error", (e) => { process.stderr.write("[supervised error " + e.message + "]\\n"); process.exit(127); });
child.on("exit", (code, signal) => process.exit(signal ? 128 + (constants.signals[signal] ?? 0) : (code ?? 1)));
`;

export interface Exit {
    code: number | null;
    /** The program's signal, as the supervisor saw it (128 + n exit codes are turned back into names). */
    signal: string | null;
    at: number;
}

export class Guarded {
    readonly proc: ChildProcess;
    readonly exited: Promise<Exit>;
    private exitValue: Exit | null = null;
    private readonly log: WriteStream | null;

    /** Starts `cmd args` supervised; its stdout and stderr go to `logFile` (and to onLine, line by line). */
    constructor(readonly cmd: string, readonly args: string[], logFile: string | null, onLine?: (line: string, stream: "stdout" | "stderr") => void) {
        this.proc = spawn(process.execPath, ["-e", SUPERVISOR, JSON.stringify([cmd, ...args])], { stdio: ["pipe", "pipe", "pipe"], detached: true });
        this.log = logFile ? createWriteStream(logFile, { flags: "a" }) : null;
        for (const name of ["stdout", "stderr"] as const) {
            let rest = "";
            this.proc[name]!.on("data", (d: Buffer) => {
                this.log?.write(d);
                if (!onLine) return;
                const text = rest + d.toString("utf8");
                const lines = text.split("\n");
                rest = lines.pop()!;
                for (const l of lines) onLine(l, name);
            });
        }
        this.exited = new Promise((resolve) => {
            this.proc.once("exit", (code, signal) => {
                const sig = code !== null && code > 128 ? signalName(code - 128) : signal;
                this.exitValue = { code, signal: sig, at: Date.now() };
                this.log?.end();
                resolve(this.exitValue);
            });
        });
    }

    get running(): boolean {
        return this.exitValue === null;
    }

    /** Sends a signal to the program (through the supervisor); SIGKILL is the supervisor's own to send. */
    signal(sig: NodeJS.Signals): void {
        if (!this.running) return;
        if (sig === "SIGKILL") this.proc.stdin!.end();
        else this.proc.kill(sig);
    }

    /** SIGKILLs the program and waits for it. */
    async kill(): Promise<Exit> {
        this.signal("SIGKILL");
        return this.exited;
    }
}

function signalName(n: number): string | null {
    for (const [name, v] of Object.entries(constants.signals)) if (v === n) return name;
    return null;
}

const taken = new Set<number>();

/** A loopback port free now, and not handed out before in this process. */
export async function freePort(): Promise<number> {
    for (;;) {
        const port = await new Promise<number>((resolve, reject) => {
            const s = createServer();
            s.once("error", reject);
            s.listen(0, "127.0.0.1", () => {
                const p = (s.address() as { port: number }).port;
                s.close(() => resolve(p));
            });
        });
        if (!taken.has(port)) {
            taken.add(port);
            return port;
        }
    }
}

/** GET url: the status and body, or null when no answer came (refused, reset, timeout). */
export function httpGet(url: string, timeoutMs = 2000): Promise<{ status: number; body: string } | null> {
    return new Promise((resolve) => {
        const req = request(url, { method: "GET", agent: false, timeout: timeoutMs }, (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (d: string) => (body += d));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
            res.on("error", () => resolve(null));
        });
        req.on("timeout", () => req.destroy());
        req.on("error", () => resolve(null));
        req.end();
    });
}

/** Polls url until it answers `status`; throws after timeoutMs, or at once when `alive()` turns false. */
export async function waitForStatus(url: string, status: number, timeoutMs: number, alive: () => boolean = () => true): Promise<number> {
    const t0 = Date.now();
    for (;;) {
        const r = await httpGet(url, 1000);
        if (r?.status === status) return Date.now() - t0;
        if (!alive()) throw new Error(`${url}: the process exited before answering ${status}`);
        if (Date.now() - t0 > timeoutMs) throw new Error(`${url}: no ${status} after ${timeoutMs} ms (last: ${r ? r.status : "no answer"})`);
        await sleep(50);
    }
}

export function sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
}
