// `batchwise serve` replicas for the fleet harness: the demo model (no --model) on loopback ports that
// stay the same across restarts, so the balancers' configs keep pointing at them.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { cacheDir } from "../../lib/index.js";
import { Guarded, freePort, waitForStatus, type Exit } from "./proc.js";

export interface InstanceOptions {
    /** The repository root (dist/lib/cli/main.js is under it). */
    root: string;
    /** Folder for the instance's log file. */
    dir: string;
    /** KV cache size in tokens (--ctx-size). */
    ctx: number;
    threads: number;
    maxRunning: number;
    /** Seconds a drain waits for requests in flight (--drain-timeout). */
    drainTimeout: number;
    /** Serve the demo model under another name (a second "version"): --model NAME=PATH. */
    modelName?: string;
    extraArgs?: string[];
}

/** A request the server logged (its pino line at the request's end). */
export interface ServedLine {
    reqId: string;
    status: number;
    url: string;
    time: number;
}

export class Instance {
    port = 0;
    proc: Guarded | null = null;
    /** Every start: when it began, when /ready turned 200, how it ended. */
    readonly lives: { startedAt: number; readyAt?: number; exit?: Exit }[] = [];
    /** Requests this instance logged, across its lives. */
    readonly served: ServedLine[] = [];

    constructor(readonly name: string, readonly options: InstanceOptions) {}

    get url(): string {
        return `http://127.0.0.1:${this.port}`;
    }

    get running(): boolean {
        return this.proc?.running ?? false;
    }

    /** Starts the server (the same port every time) and resolves when /ready answers 200. */
    async start(timeoutMs = 120_000): Promise<void> {
        if (this.running) throw new Error(`${this.name} is already running`);
        if (this.port === 0) this.port = await freePort();
        const o = this.options;
        const cli = join(o.root, "dist", "lib", "cli", "main.js");
        const model = o.modelName ? ["--model", `${o.modelName}=${demoModelPath()}`] : [];
        const args = [cli, "serve", ...model, "--port", String(this.port), "--ctx-size", String(o.ctx), "--threads", String(o.threads),
            "--max-running", String(o.maxRunning), "--drain-timeout", String(o.drainTimeout), "--log-level", "info", ...(o.extraArgs ?? [])];
        const life: (typeof this.lives)[number] = { startedAt: Date.now() };
        this.lives.push(life);
        const proc = new Guarded(process.execPath, args, join(o.dir, `${this.name}.log`), (line, stream) => {
            if (stream !== "stdout" || !line.startsWith("{")) return;
            try {
                const j = JSON.parse(line) as { reqId?: string; res?: { statusCode?: number }; statusCode?: number; status?: number; url?: string; req?: { url?: string }; time?: number; msg?: string };
                const status = j.status ?? j.statusCode ?? j.res?.statusCode;
                if (j.reqId && typeof status === "number") this.served.push({ reqId: j.reqId, status, url: j.url ?? j.req?.url ?? "", time: j.time ?? Date.now() });
            } catch { /* not a log line */ }
        });
        this.proc = proc;
        void proc.exited.then((e) => (life.exit = e));
        await waitForStatus(`${this.url}/ready`, 200, timeoutMs, () => proc.running);
        life.readyAt = Date.now();
    }

    /** SIGKILL: the process dies at once, with its requests in flight. */
    async kill(): Promise<Exit> {
        if (!this.proc) throw new Error(`${this.name} was never started`);
        return this.proc.kill();
    }

    /** SIGTERM (the drain), without waiting. */
    term(): void {
        this.proc?.signal("SIGTERM");
    }

    /** SIGTERM and wait for the exit. */
    async stop(): Promise<Exit | null> {
        if (!this.proc || !this.running) return this.proc ? this.proc.exited : null;
        this.term();
        return this.proc.exited;
    }
}

/**
 * The demo model's file, which `serve` without --model makes on first use in cacheDir()/models (the newest
 * demo-qwen2-*.gguf there): a second "version" serves the same weights under another name.
 */
export function demoModelPath(): string {
    const dir = join(cacheDir(), "models");
    const files = existsSync(dir) ? readdirSync(dir).filter((f) => /^demo-qwen2-.*\.gguf$/.test(f)) : [];
    if (files.length === 0) throw new Error(`no demo model in ${dir}: start one demo instance first`);
    files.sort((a, b) => statSync(join(dir, b)).mtimeMs - statSync(join(dir, a)).mtimeMs);
    return join(dir, files[0]);
}
