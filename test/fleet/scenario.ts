// The fleet scenario: three `batchwise serve` replicas behind nginx, then HAProxy, under a closed loop of
// streamed and non-streamed requests, through (a) a SIGKILL of one replica, (b) a SIGTERM (drain) of
// another, (c) a rolling restart of all three, (d) a 90/10 weighted split to a second "version".
// runFleet() returns the figures; report.ts prints them; test/fleet.test.ts asserts on a short run and
// scripts/fleet.mjs runs the long one.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { Agent } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Balancer, Haproxy, Nginx, type BalancerEntry, type StateChange } from "./balancers.js";
import { Instance, type InstanceOptions } from "./instances.js";
import { Load, mixedSpec, send, type Outcome, type RequestRecord } from "./load.js";
import { sleep } from "./proc.js";
import type { Replica } from "./render.js";

export type BalancerName = "nginx" | "haproxy";
/** Rolling restart: how long a restarted replica stays ready before the next goes (over nginx's fail_timeout of 5 s). */
const ROLLING_SETTLE_MS = 6000;

export type PhaseName = "steady" | "kill" | "drain" | "rolling" | "split";

export interface FleetOptions {
    /** The repository root. */
    root: string;
    balancers: BalancerName[];
    /** Seconds of load around each event. */
    phaseSeconds: number;
    clients: number;
    streamTokens: number;
    plainTokens: number;
    /** Every n-th non-streamed request of a client carries bigBytes of padding (0: none). */
    bigEvery: number;
    bigBytes: number;
    /** Per replica. */
    ctx: number;
    threads: number;
    maxRunning: number;
    /** The "version" weights of the split: blue per replica, green (one replica). */
    splitWeights: { blue: number; green: number };
    /** Requests (at least) sent with the weighted config in place. */
    splitRequests: number;
    keepDir?: boolean;
    log?: (line: string) => void;
}

export const SHORT: Omit<FleetOptions, "root"> = {
    balancers: ["nginx", "haproxy"], phaseSeconds: 3, clients: 6, streamTokens: 48, plainTokens: 8, bigEvery: 6, bigBytes: 40_000,
    ctx: 4096, threads: 1, maxRunning: 8, splitWeights: { blue: 3, green: 1 }, splitRequests: 40,
};

export const LONG: Omit<FleetOptions, "root"> = { ...SHORT, phaseSeconds: 12, clients: 8, streamTokens: 96, splitRequests: 400 };

export interface Counts {
    sent: number;
    ok: number;
    /** Failed requests by kind: "http 503", "conn", "cut", "bad", "timeout". */
    failed: Record<string, number>;
}

export interface EventFigures {
    /** What happened, to which replica, when (epoch ms). */
    event: "kill" | "term";
    replica: string;
    at: number;
    /** ms from the event to the replica's exit (drain time), and to its being ready again after the restart. */
    exitMs?: number;
    readyAgainMs?: number;
    /**
     * ms from the event until the balancer took the replica out of rotation. nginx (passive, max_fails=1):
     * its first failed attempt on it after the event, by its log ($upstream_addr, $upstream_status);
     * HAProxy: when its runtime API showed the replica DOWN.
     */
    outOfRotationMs: number | null;
    /** Attempts on the replica after the event while it was gone (nginx's log; HAProxy logs only the last try). */
    attemptsWhileGone: number | null;
    /** nginx: failed attempts after the first while it was still gone (passive checks let one request through per fail_timeout). */
    reprobes: number | null;
    /** Requests the balancer retried in the event's window (nginx: several upstreams; HAProxy: %rc > 0). */
    retried: number;
}

export interface PhaseFigures {
    phase: PhaseName;
    from: number;
    to: number;
    all: Counts;
    plain: Counts;
    streams: Counts;
    /** Streams cut (ended without [DONE]) and the replicas that served them, by the balancer's log. */
    cut: { count: number; byReplica: Record<string, number>; unattributed: number };
    /** Streams that ended with [DONE]: all must have had a finish_reason first and no error event. */
    streamsDone: number;
    /** Requests the client sent a second time after a reset on a kept-alive connection (load.ts send()). */
    clientRetries: number;
    latencyMs: { plainP50: number; plainP95: number; ttftP50: number; ttftP95: number };
    events: EventFigures[];
    /** Phase (d): the share of requests each model (version) answered, and each replica by the balancer's log. */
    split?: { byModel: Record<string, number>; greenShare: number; expected: number; byReplica: Record<string, number> };
}

export interface BalancerFigures {
    balancer: BalancerName;
    version: string;
    phases: PhaseFigures[];
    /** The state changes HAProxy's runtime API showed (HAProxy only). */
    states: StateChange[];
    /** Requests the client sent with no match in the balancer's log (should be 0). */
    unlogged: number;
    /** The first few of them: what the client saw, and when they were sent and ended relative to the load's stop. */
    unloggedSample: { id: string; path: string; stream: boolean; outcome: string; status?: number; error?: string; sentMs: number; endedMs: number }[];
    /**
     * Before the load: requests with an X-Session-Id (several per session) and without, and the replicas
     * that served them by the balancer's log: one per session with the header, spread without.
     */
    affinityCheck: { sessions: Record<string, string[]>; noHeader: string[]; failed: number };
}

export interface FleetReport {
    options: Omit<FleetOptions, "root" | "log">;
    startedAt: string;
    wallS: number;
    balancers: BalancerFigures[];
    skipped: { balancer: BalancerName; why: string }[];
}

export function percentile(xs: readonly number[], p: number): number {
    if (xs.length === 0) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function failureKey(r: RequestRecord): string {
    return r.outcome === "http" ? `http ${r.status}` : r.outcome;
}

function counts(rs: RequestRecord[]): Counts {
    const failed: Record<string, number> = {};
    for (const r of rs) if (r.outcome !== "ok") failed[failureKey(r)] = (failed[failureKey(r)] ?? 0) + 1;
    return { sent: rs.length, ok: rs.filter((r) => r.outcome === "ok").length, failed };
}

export function failures(c: Counts): number {
    return c.sent - c.ok;
}

/** Makes a balancer object for `name` in `dir` (its binary may be missing: see .binary). */
export function makeBalancer(name: BalancerName, root: string, dir: string): Balancer {
    return name === "nginx"
        ? new Nginx("nginx", join(root, "deploy", "nginx", "nginx.conf"), join(dir, "nginx"))
        : new Haproxy("haproxy", join(root, "deploy", "haproxy", "haproxy.cfg"), join(dir, "haproxy"));
}

function binaryVersion(b: Balancer): string {
    // nginx -v writes to stderr, haproxy -v to stdout
    const r = spawnSync(b.binary!, ["-v"], { encoding: "utf8" });
    return `${r.stdout ?? ""}${r.stderr ?? ""}`.split("\n")[0].trim();
}

/** Figures for the phase [from, to) from the client's records and the balancer's log. */
function phaseFigures(phase: PhaseName, from: number, to: number, records: RequestRecord[], byId: Map<string, BalancerEntry>, events: EventFigures[]): PhaseFigures {
    // a request belongs to the phase it ended in: one in flight when a replica was killed ends in that phase
    const rs = records.filter((r) => r.t1 >= from && r.t1 < to);
    const plain = rs.filter((r) => !r.stream);
    const streams = rs.filter((r) => r.stream);
    const cut = streams.filter((r) => r.outcome === "cut");
    const byReplica: Record<string, number> = {};
    let unattributed = 0;
    for (const r of cut) {
        const e = byId.get(r.id);
        const who = e?.attempts[e.attempts.length - 1];
        if (who) byReplica[who] = (byReplica[who] ?? 0) + 1;
        else unattributed++;
    }
    const okPlain = plain.filter((r) => r.outcome === "ok").map((r) => r.t1 - r.t0);
    const ttft = streams.filter((r) => r.outcome === "ok" && r.tFirst !== undefined).map((r) => r.tFirst! - r.t0);
    return {
        phase, from, to, all: counts(rs), plain: counts(plain), streams: counts(streams),
        cut: { count: cut.length, byReplica, unattributed },
        streamsDone: streams.filter((r) => r.done).length,
        clientRetries: rs.filter((r) => r.clientRetries).length,
        latencyMs: { plainP50: percentile(okPlain, 50), plainP95: percentile(okPlain, 95), ttftP50: percentile(ttft, 50), ttftP95: percentile(ttft, 95) },
        events,
    };
}

/** Out-of-rotation and retry figures for one event, once the phase's logs are in. */
function eventFigures(
    b: Balancer, ev: { event: "kill" | "term"; replica: string; at: number; exitAt?: number; readyAt?: number },
    entries: BalancerEntry[], until: number,
): EventFigures {
    const goneUntil = ev.readyAt ?? until;
    // the requests in flight at the event and those sent until the replica was ready again
    const window = entries.filter((e) => e.end >= ev.at && e.start < goneUntil);
    const retried = window.filter((e) => e.retries > 0).length;
    const out: EventFigures = {
        event: ev.event, replica: ev.replica, at: ev.at,
        ...(ev.exitAt !== undefined && { exitMs: ev.exitAt - ev.at }),
        ...(ev.readyAt !== undefined && { readyAgainMs: ev.readyAt - ev.at }),
        outOfRotationMs: null, attemptsWhileGone: null, reprobes: null, retried,
    };
    if (b.name === "nginx") {
        // $upstream_addr and $upstream_status list every attempt and its answer. With max_fails=1 the first
        // failed attempt (a refused connection: 502 in the log; a 503 from a draining replica) takes the
        // replica out for fail_timeout; each later failed one is a re-probe (one request let through per
        // fail_timeout, while it is still gone)
        const tries: { at: number; ok: boolean }[] = [];
        for (const e of window) {
            e.attempts.forEach((a, k) => {
                if (a !== ev.replica) return;
                const ok = e.attemptStatuses[k] === "200";
                // one in flight at the event: if it failed, it failed then (the connection dropped with the kill)
                if (e.start < ev.at && ok) return;
                tries.push({ at: Math.max(e.start, ev.at), ok });
            });
        }
        tries.sort((x, y) => x.at - y.at);
        const failedTries = tries.filter((t) => !t.ok);
        out.attemptsWhileGone = tries.length;
        // no failed attempt on it at all: nothing to measure (null)
        out.outOfRotationMs = failedTries.length > 0 ? failedTries[0].at - ev.at : null;
        out.reprobes = Math.max(0, failedTries.length - 1);
    } else {
        const down = b.stateLog.find((s) => s.server === ev.replica && s.at >= ev.at && (s.status === "DOWN" || s.status === "MAINT"));
        out.outOfRotationMs = down ? down.at - ev.at : null;
    }
    return out;
}

export async function runFleet(o: FleetOptions): Promise<FleetReport> {
    const log = o.log ?? (() => {});
    const t0 = Date.now();
    const dir = mkdtempSync(join(tmpdir(), "batchwise-fleet-"));
    const report: FleetReport = {
        options: { ...o, root: undefined, log: undefined } as unknown as FleetReport["options"],
        startedAt: new Date(t0).toISOString(), wallS: 0, balancers: [], skipped: [],
    };
    delete (report.options as Record<string, unknown>).root;
    delete (report.options as Record<string, unknown>).log;
    const base: InstanceOptions = { root: o.root, dir, ctx: o.ctx, threads: o.threads, maxRunning: o.maxRunning, drainTimeout: 30 };
    const blue = ["r1", "r2", "r3"].map((n) => new Instance(n, base));
    const green = new Instance("g1", { ...base, modelName: "demo-v2" });
    const all = [...blue, green];
    const replicas = (weights?: { blue: number; green: number }): Replica[] => [
        ...blue.map((i) => ({ name: i.name, host: "127.0.0.1", port: i.port, weight: weights?.blue ?? 1 })),
        ...(weights ? [{ name: green.name, host: "127.0.0.1", port: green.port, weight: weights.green }] : []),
    ];
    try {
        // the first start makes the demo model file (once per machine); the others would race on writing it
        log(`replicas: starting ${blue.length} (demo model, --ctx-size ${o.ctx}, --threads ${o.threads}) in ${dir}`);
        await blue[0].start();
        await Promise.all(blue.slice(1).map((i) => i.start()));
        for (const name of o.balancers) {
            const b = makeBalancer(name, o.root, dir);
            if (!b.binary) {
                report.skipped.push({ balancer: name, why: `${name} not found (apt-get install ${b.aptPackage})` });
                log(`${name}: skipped, not installed (apt-get install ${b.aptPackage})`);
                continue;
            }
            for (const i of blue) if (!i.running) await i.start();
            report.balancers.push(await runBalancer(b, o, blue, green, replicas, log));
        }
    } finally {
        await Promise.all(all.map((i) => (i.running ? i.proc!.kill() : null)));
        if (!o.keepDir) rmSync(dir, { recursive: true, force: true });
        else log(`logs kept in ${dir}`);
    }
    report.wallS = (Date.now() - t0) / 1000;
    return report;
}

async function runBalancer(
    b: Balancer, o: FleetOptions, blue: Instance[], green: Instance, replicas: (w?: { blue: number; green: number }) => Replica[], log: (l: string) => void,
): Promise<BalancerFigures> {
    const P = o.phaseSeconds * 1000;
    await b.start(replicas());
    b.watchStates();
    log(`${b.name}: up on ${b.url} (${binaryVersion(b)})`);
    const affinityCheck = await checkAffinity(b);
    const load = new Load({
        baseUrl: b.url, clients: o.clients, tag: b.name, timeoutMs: 120_000,
        spec: mixedSpec({ streamTokens: o.streamTokens, plainTokens: o.plainTokens, bigEvery: o.bigEvery, bigBytes: o.bigBytes }),
    }).start();
    const marks: { phase: PhaseName; from: number; to: number; events: { event: "kill" | "term"; replica: string; at: number; exitAt?: number; readyAt?: number }[] }[] = [];
    const phase = async (name: PhaseName, body: (events: (typeof marks)[number]["events"]) => Promise<void>) => {
        const m = { phase: name, from: Date.now(), to: 0, events: [] as (typeof marks)[number]["events"] };
        marks.push(m);
        await body(m.events);
        m.to = Date.now();
        log(`${b.name}: ${name} done in ${((m.to - m.from) / 1000).toFixed(1)} s (${load.records.length} requests so far)`);
    };
    const restartAfter = async (i: Instance, ev: (typeof marks)[number]["events"][number]) => {
        const exit = await i.proc!.exited;
        ev.exitAt = exit.at;
        await i.start();
        ev.readyAt = i.lives[i.lives.length - 1].readyAt;
    };
    let splitFrom = Infinity;
    try {
        await phase("steady", () => sleep(P));
        await phase("kill", async (events) => {
            await sleep(P / 3);
            const ev = { event: "kill" as const, replica: blue[0].name, at: Date.now() };
            events.push(ev);
            await blue[0].kill();
            // dead for a while, so that the balancer has to notice
            await sleep(Math.max(1000, P / 3));
            await restartAfter(blue[0], ev);
            await sleep(P / 3);
        });
        await phase("drain", async (events) => {
            await sleep(P / 3);
            const ev = { event: "term" as const, replica: blue[1].name, at: Date.now() };
            events.push(ev);
            blue[1].term();
            await restartAfter(blue[1], ev);
            await sleep(P / 3);
        });
        await phase("rolling", async (events) => {
            for (const [k, i] of blue.entries()) {
                // the next replica goes only once this one has been ready for a while, as the shipped Deployment's
                // minReadySeconds (10 s) has it: nginx's passive check keeps a replica out for fail_timeout (5 s)
                // after its last failure, and the next replica went 3 s after the last was ready, so one replica
                // could be left to take everything, and one failure there left nginx with none. Once in three
                // full runs nginx answered 65 requests 502 in this phase (the cause read from the timings, not
                // from nginx's log)
                if (k > 0) await sleep(ROLLING_SETTLE_MS);
                const ev = { event: "term" as const, replica: i.name, at: Date.now() };
                events.push(ev);
                i.term();
                await restartAfter(i, ev);
            }
            await sleep(P / 3);
        });
        await phase("split", async () => {
            // the second version starts, the balancer reloads with the weights (under load: nothing may be lost)
            if (!green.running) await green.start();
            await b.reload(replicas(o.splitWeights));
            splitFrom = Date.now();
            // long enough for the share to mean something: P, and at least splitRequests sent since the reload
            const until = splitFrom + 6 * P;
            await sleep(P);
            while (load.records.filter((r) => r.t0 >= splitFrom).length < o.splitRequests && Date.now() < until) await sleep(100);
        });
    } finally {
        await load.stop();
        // the requests still in flight when the last phase ended belong to it
        if (marks.length > 0) marks[marks.length - 1].to = Date.now() + 1;
    }
    // back to the blue replicas alone for whatever runs next
    await b.reload(replicas()).catch(() => {});
    await sleep(300);
    b.stopWatching();
    await b.stop();
    const entries = b.entries();
    const byId = new Map(entries.map((e) => [e.id, e]));
    const records = load.records;
    const phases = marks.map((m) => {
        const evs = m.events.map((ev) => eventFigures(b, ev, entries, m.to));
        const f = phaseFigures(m.phase, m.from, m.to, records, byId, evs);
        if (m.phase === "split") {
            // the requests sent once the weighted config was in place
            const rs = records.filter((r) => r.t0 >= splitFrom && r.t0 < m.to && r.outcome === "ok");
            const byModel: Record<string, number> = {};
            for (const r of rs) byModel[r.model ?? "?"] = (byModel[r.model ?? "?"] ?? 0) + 1;
            const byReplica: Record<string, number> = {};
            for (const r of rs) {
                const e = byId.get(r.id);
                const who = e?.attempts[e.attempts.length - 1] ?? "?";
                byReplica[who] = (byReplica[who] ?? 0) + 1;
            }
            const w = o.splitWeights;
            f.split = { byModel, greenShare: (byModel["demo-v2"] ?? 0) / Math.max(1, rs.length), expected: w.green / (w.green + 3 * w.blue), byReplica };
        }
        return f;
    });
    const missing = records.filter((r) => !byId.has(r.id) && r.outcome !== "conn");
    const stoppedAt = marks.length > 0 ? marks[marks.length - 1].to : Date.now();
    const unloggedSample = missing.slice(0, 5).map((r) => ({
        id: r.id, path: r.path, stream: r.stream, outcome: r.outcome, status: r.status, error: r.error, sentMs: r.t0 - stoppedAt, endedMs: r.t1 - stoppedAt,
    }));
    return { balancer: b.name as BalancerName, version: binaryVersion(b), phases, states: [...b.stateLog], unlogged: missing.length, unloggedSample, affinityCheck };
}

/** Sessions s0..s3, five requests each, and twelve requests without the header, one at a time. */
async function checkAffinity(b: Balancer): Promise<BalancerFigures["affinityCheck"]> {
    const agent = new Agent({ keepAlive: true });
    const recs: RequestRecord[] = [];
    const body = { prompt: "def add(a, b):", max_tokens: 1 };
    for (let i = 0; i < 5; i++) {
        for (let s = 0; s < 4; s++) {
            recs.push(await send(b.url, { path: "/v1/completions", stream: false, body, headers: { "x-session-id": `session-${s}` } }, { agent, id: `${b.name}-aff-${s}-${i}`, timeoutMs: 30_000 }));
        }
    }
    for (let i = 0; i < 12; i++) recs.push(await send(b.url, { path: "/v1/completions", stream: false, body }, { agent, id: `${b.name}-noaff-${i}`, timeoutMs: 30_000 }));
    agent.destroy();
    await sleep(200); // the log lines of the last requests
    const byId = new Map(b.entries().map((e) => [e.id, e]));
    const served = (r: RequestRecord) => byId.get(r.id)?.attempts.at(-1) ?? "?";
    const sessions: Record<string, string[]> = {};
    for (const r of recs.filter((x) => x.session)) (sessions[r.session!] ??= []).push(served(r));
    return { sessions, noHeader: recs.filter((x) => !x.session).map(served), failed: recs.filter((r) => r.outcome !== "ok").length };
}

export type { Outcome };
