// nginx and HAProxy for the fleet harness: the shipped configs rendered for loopback (render.ts), started
// in the foreground in a temp folder, reloaded in place, and their per-request logs read back.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { Guarded, freePort, sleep, waitForStatus } from "./proc.js";
import { renderHaproxy, renderNginx, type Replica } from "./render.js";

/** One request as the balancer logged it. */
export interface BalancerEntry {
    id: string;
    /** Epoch ms: when the balancer got the request, and when it logged it (its end). */
    start: number;
    end: number;
    status: number;
    /** The replicas tried, in order (nginx lists every attempt; HAProxy only the last). */
    attempts: string[];
    /** What each attempt answered (nginx only). */
    attemptStatuses: string[];
    /** Retries the balancer made (HAProxy's %rc; nginx: attempts - 1). */
    retries: number;
    /** HAProxy's termination state (%tsc). */
    termination?: string;
    session?: string;
}

/** A replica's health state change, as the balancer's runtime API showed it (HAProxy only). */
export interface StateChange {
    at: number;
    server: string;
    status: string;
}

export interface BalancerCounters {
    /** Per replica: connection errors, retries and redispatches (HAProxy's econ, wretr, wredis). */
    [server: string]: { econ: number; wretr: number; wredis: number };
}

export abstract class Balancer {
    port = 0;
    proc: Guarded | null = null;
    protected replicas: Replica[] = [];
    readonly stateLog: StateChange[] = [];
    /** The binary's path, or null when it is not installed. */
    abstract readonly binary: string | null;
    /** The Debian package that has it. */
    abstract readonly aptPackage: string;

    constructor(readonly name: string, readonly shippedPath: string, readonly dir: string) {}

    get url(): string {
        return `http://127.0.0.1:${this.port}`;
    }

    get shipped(): string {
        return readFileSync(this.shippedPath, "utf8");
    }

    abstract render(replicas: Replica[]): string;
    protected abstract configPath(): string;
    protected abstract launch(): Guarded;
    protected abstract signalReload(): Promise<void>;
    /** Every request logged so far. */
    abstract entries(): BalancerEntry[];
    /** Per-replica counters (HAProxy), or null. */
    abstract counters(): Promise<BalancerCounters | null>;

    /** Writes the rendered config, checks it with the binary's own test, starts, and waits until it routes. */
    async start(replicas: Replica[]): Promise<void> {
        if (!this.binary) throw new Error(`${this.name} is not installed (apt-get install ${this.aptPackage})`);
        mkdirSync(this.dir, { recursive: true });
        // workers may run as another user (nginx's `nobody` when started as root): they must reach the folder
        chmodSync(this.dir, 0o755);
        if (this.port === 0) this.port = await freePort();
        this.replicas = replicas;
        writeFileSync(this.configPath(), this.render(replicas));
        this.check();
        const proc = this.launch();
        this.proc = proc;
        await waitForStatus(`${this.url}/ready`, 200, 30_000, () => proc.running);
    }

    /** Rewrites the config with these replicas (and weights) and reloads in place, without dropping requests. */
    async reload(replicas: Replica[]): Promise<void> {
        this.replicas = replicas;
        writeFileSync(this.configPath(), this.render(replicas));
        this.check();
        await this.signalReload();
    }

    /** The config test (`nginx -t`, `haproxy -c`); throws with its output when it fails. */
    abstract check(): void;

    async stop(): Promise<void> {
        if (!this.proc) return;
        this.proc.signal("SIGTERM");
        const t = setTimeout(() => this.proc?.signal("SIGKILL"), 5000);
        await this.proc.exited;
        clearTimeout(t);
    }

    /** The replica an address (host:port) or server name is. */
    protected replicaName(addr: string): string {
        const r = this.replicas.find((x) => `${x.host}:${x.port}` === addr || x.name === addr);
        return r ? r.name : addr;
    }

    /** Starts recording replica state changes (HAProxy's runtime API); a no-op elsewhere. */
    watchStates(): void {}
    stopWatching(): void {}
}

function which(bin: string, fallbacks: string[]): string | null {
    for (const p of [...(process.env.PATH ?? "").split(":").map((d) => join(d, bin)), ...fallbacks]) if (p && existsSync(p)) return p;
    return null;
}

export class Nginx extends Balancer {
    readonly binary = which("nginx", ["/usr/sbin/nginx"]);
    readonly aptPackage = "nginx-light";
    private readonly addrNames = new Map<string, string>();

    render(replicas: Replica[]): string {
        for (const r of replicas) this.addrNames.set(`${r.host}:${r.port}`, r.name);
        return renderNginx(this.shipped, { replicas, port: this.port, dir: this.dir });
    }

    protected configPath(): string {
        return join(this.dir, "nginx.conf");
    }

    check(): void {
        try {
            execFileSync(this.binary!, ["-t", "-q", "-p", this.dir, "-c", this.configPath()], { stdio: "pipe" });
        } catch (e) {
            throw new Error(`nginx -t failed: ${(e as { stderr?: Buffer }).stderr?.toString() ?? e}`);
        }
    }

    protected launch(): Guarded {
        return new Guarded(this.binary!, ["-p", this.dir, "-c", this.configPath(), "-g", "daemon off;"], join(this.dir, "nginx.out"));
    }

    protected async signalReload(): Promise<void> {
        // SIGHUP: the master rereads the config, starts new workers, and old ones finish their requests
        const before = this.errorText().length;
        this.proc!.signal("SIGHUP");
        const t0 = Date.now();
        while (Date.now() - t0 < 10_000) {
            const text = this.errorText().slice(before);
            if (/start worker process/.test(text) || /reconfiguring/.test(text)) {
                await sleep(200);
                return;
            }
            if (/\[emerg\]/.test(text)) throw new Error(`nginx reload failed: ${text}`);
            await sleep(50);
        }
        // nginx logs the reload at notice level, which `error_log stderr warn` hides: give it a moment
        await sleep(300);
    }

    private errorText(): string {
        const f = join(this.dir, "nginx.out");
        return existsSync(f) ? readFileSync(f, "utf8") : "";
    }

    entries(): BalancerEntry[] {
        const f = join(this.dir, "access.log");
        if (!existsSync(f)) return [];
        const out: BalancerEntry[] = [];
        for (const line of readFileSync(f, "utf8").split("\n")) {
            if (!line.startsWith("{")) continue;
            const j = JSON.parse(line) as { time: number; request_time: number; id: string; status: number; upstream: string; upstream_status: string; session: string };
            // $upstream_addr: "a, b" for attempts in one upstream, "a : b" across upstream groups
            const attempts = j.upstream ? j.upstream.split(/\s*[,:]\s+/).filter(Boolean).map((a) => this.addrNames.get(a) ?? a) : [];
            const statuses = j.upstream_status ? j.upstream_status.split(/\s*[,:]\s+/).filter(Boolean) : [];
            out.push({
                id: j.id, start: Math.round((j.time - j.request_time) * 1000), end: Math.round(j.time * 1000), status: j.status,
                attempts, attemptStatuses: statuses, retries: Math.max(0, attempts.length - 1), ...(j.session && { session: j.session }),
            });
        }
        return out;
    }

    async counters(): Promise<null> {
        return null;
    }
}

export class Haproxy extends Balancer {
    readonly binary = which("haproxy", ["/usr/sbin/haproxy"]);
    readonly aptPackage = "haproxy";
    private readonly lines: string[] = [];
    private readonly stderrLines: string[] = [];
    private watcher: NodeJS.Timeout | null = null;
    private lastStatus = new Map<string, string>();

    render(replicas: Replica[]): string {
        return renderHaproxy(this.shipped, { replicas, port: this.port, dir: this.dir });
    }

    protected configPath(): string {
        return join(this.dir, "haproxy.cfg");
    }

    check(): void {
        try {
            execFileSync(this.binary!, ["-c", "-q", "-f", this.configPath()], { stdio: "pipe" });
        } catch (e) {
            throw new Error(`haproxy -c failed: ${(e as { stderr?: Buffer }).stderr?.toString() ?? e}`);
        }
    }

    protected launch(): Guarded {
        // -W: master-worker, so that SIGUSR2 reloads; -db: in the foreground
        return new Guarded(this.binary!, ["-W", "-db", "-f", this.configPath()], join(this.dir, "haproxy.out"), (line, stream) => {
            if (stream === "stdout" && line.startsWith("{")) this.lines.push(line);
            else this.stderrLines.push(line);
        });
    }

    protected async signalReload(): Promise<void> {
        const before = this.stderrLines.length;
        this.proc!.signal("SIGUSR2");
        const t0 = Date.now();
        while (Date.now() - t0 < 10_000) {
            const text = this.stderrLines.slice(before).join("\n");
            if (/Loading success/.test(text)) {
                await sleep(200);
                return;
            }
            if (/Loading failure|\[ALERT\]/.test(text)) throw new Error(`haproxy reload failed: ${text}`);
            await sleep(50);
        }
        throw new Error("haproxy reload: no 'Loading success' in 10 s");
    }

    entries(): BalancerEntry[] {
        const out: BalancerEntry[] = [];
        for (const line of this.lines) {
            let j: { time: number; id: string; status: number; server: string; retries: string; termination: string; total_ms: number; session: string };
            try {
                j = JSON.parse(line);
            } catch {
                continue;
            }
            const start = Math.round(j.time * 1000);
            const server = j.server && j.server !== "<NOSRV>" ? this.replicaName(j.server) : "";
            out.push({
                id: j.id, start, end: start + Math.max(0, j.total_ms), status: j.status, attempts: server ? [server] : [], attemptStatuses: [],
                retries: Number(String(j.retries).replace("+", "")) || 0, termination: j.termination, ...(j.session && { session: j.session }),
            });
        }
        return out;
    }

    /** One runtime API command's answer. */
    command(cmd: string): Promise<string> {
        return new Promise((resolve, reject) => {
            const s = connect(join(this.dir, "haproxy.sock"));
            let out = "";
            s.setEncoding("utf8");
            s.on("data", (d: string) => (out += d));
            s.on("end", () => resolve(out));
            s.on("error", reject);
            s.setTimeout(2000, () => s.destroy(new Error("runtime API timeout")));
            s.end(`${cmd}\n`);
        });
    }

    private async stat(): Promise<{ px: string; sv: string; status: string; econ: number; wretr: number; wredis: number }[]> {
        const text = await this.command("show stat");
        const [head, ...rows] = text.split("\n").filter((l) => l.trim() !== "");
        const cols = head.replace(/^# /, "").split(",");
        const at = (name: string) => cols.indexOf(name);
        return rows.map((r) => r.split(",")).map((f) => ({
            px: f[at("pxname")], sv: f[at("svname")], status: f[at("status")],
            econ: Number(f[at("econ")]) || 0, wretr: Number(f[at("wretr")]) || 0, wredis: Number(f[at("wredis")]) || 0,
        }));
    }

    async counters(): Promise<BalancerCounters> {
        const out: BalancerCounters = {};
        for (const s of await this.stat().catch(() => [])) {
            if (s.sv === "FRONTEND" || s.sv === "BACKEND") continue;
            const c = (out[s.sv] ??= { econ: 0, wretr: 0, wredis: 0 });
            c.econ += s.econ;
            c.wretr += s.wretr;
            c.wredis += s.wredis;
        }
        return out;
    }

    /** Polls `show stat` every 100 ms and records each change of a replica's check status (backend batchwise). */
    override watchStates(): void {
        if (this.watcher) return;
        let busy = false;
        this.watcher = setInterval(() => {
            if (busy) return;
            busy = true;
            this.stat().then((rows) => {
                const now = Date.now();
                for (const r of rows) {
                    if (r.px !== "batchwise" || r.sv === "FRONTEND" || r.sv === "BACKEND") continue;
                    // "UP 1/2" and "DOWN 1/2" are transitions in progress: the state is the word
                    const state = r.status.split(" ")[0];
                    if (this.lastStatus.get(r.sv) !== state) {
                        this.lastStatus.set(r.sv, state);
                        this.stateLog.push({ at: now, server: r.sv, status: state });
                    }
                }
            }, () => {}).finally(() => (busy = false));
        }, 100);
    }

    override stopWatching(): void {
        if (this.watcher) clearInterval(this.watcher);
        this.watcher = null;
    }

    override async stop(): Promise<void> {
        this.stopWatching();
        await super.stop();
    }
}
