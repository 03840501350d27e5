// Prefix affinity: an IDE-like workload (each user re-sends the same file prefix with fresh tokens after
// it) over three replicas, routed by round robin (no session header: the configs' default pool) or by a
// consistent hash of X-Session-Id; the prefix-cache hit rate (the servers' vllm:prefix_cache_hits_total / _queries_total, and
// each answer's usage.prompt_tokens_details.cached_tokens) and TTFT; and what happens to the hit rate
// when one replica leaves (SIGTERM) halfway through.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomTokens, seededRandom } from "../../lib/bench/loadgen.js";
import type { BalancerEntry } from "./balancers.js";
import { Instance } from "./instances.js";
import { Load, type RequestRecord } from "./load.js";
import { httpGet, sleep } from "./proc.js";
import { makeBalancer, percentile, type BalancerName } from "./scenario.js";

export type Routing = "round_robin" | "affinity";

export interface AffinityOptions {
    root: string;
    balancers: BalancerName[];
    routings: Routing[];
    users: number;
    /** Tokens of each user's file prefix, and fresh tokens after it in each request. */
    prefixTokens: number;
    freshTokens: number;
    maxTokens: number;
    /** Seconds of each run; a replica leaves at the half. */
    seconds: number;
    /** A user's pause between two requests, ms: uniform in [min, max]. */
    thinkMs: [number, number];
    /** Per replica: KV cache tokens (--ctx-size), threads. */
    ctx: number;
    threads: number;
    maxRunning: number;
    /** Whether a replica leaves (SIGTERM) at the half of each run. */
    leave: boolean;
    keepDir?: boolean;
    log?: (line: string) => void;
}

export const AFFINITY: Omit<AffinityOptions, "root"> = {
    balancers: ["nginx", "haproxy"], routings: ["round_robin", "affinity"], users: 16, prefixTokens: 1536, freshTokens: 64, maxTokens: 4,
    seconds: 40, thinkMs: [1000, 3000], ctx: 16384, threads: 1, maxRunning: 16, leave: true,
};

export interface AffinityRun {
    balancer: BalancerName;
    routing: Routing;
    requests: number;
    failed: number;
    /** Before the replica left: hits / queries from the replicas' /metrics. */
    metricsHitRate: number;
    /** Before the replica left: cached / prompt tokens from the answers' usage. */
    usageHitRate: number;
    /** Before the replica left: time to the first token, as the client saw it. */
    ttftMs: { p50: number; p95: number };
    /** Before the replica left: users by the replica that served most of their requests. */
    usersPerReplica: Record<string, number>;
    /** Before the replica left: distinct replicas a user's requests reached, on average. */
    replicasPerUser: number;
    leave?: {
        replica: string;
        atS: number;
        windowS: number;
        /** Usage hit rate in the second quarter, in the windowS seconds after the leave, and after that. */
        before: number;
        justAfter: number;
        later: number;
        ttftBeforeP50: number;
        ttftJustAfterP50: number;
        /** Users whose replica was the one that left, and users of other replicas whose replica changed. */
        movedUsers: number;
        otherUsersMoved: number;
    };
}

export interface AffinityReport {
    options: Omit<AffinityOptions, "root" | "log">;
    runs: AffinityRun[];
    skipped: { balancer: BalancerName; why: string }[];
    wallS: number;
}

async function prefixCounters(url: string): Promise<{ hits: number; queries: number } | null> {
    const r = await httpGet(`${url}/metrics`, 3000);
    if (!r || r.status !== 200) return null;
    const get = (name: string) => {
        const m = new RegExp(`^${name}\\{[^}]*\\} ([0-9.e+-]+)$`, "m").exec(r.body);
        return m ? Number(m[1]) : 0;
    };
    return { hits: get("vllm:prefix_cache_hits_total"), queries: get("vllm:prefix_cache_queries_total") };
}

function usageRate(rs: RequestRecord[]): number {
    const ok = rs.filter((r) => r.outcome === "ok" && r.promptTokens);
    const prompt = ok.reduce((a, r) => a + (r.promptTokens ?? 0), 0);
    return prompt === 0 ? NaN : ok.reduce((a, r) => a + (r.cachedTokens ?? 0), 0) / prompt;
}

function ttfts(rs: RequestRecord[]): number[] {
    return rs.filter((r) => r.outcome === "ok" && r.tFirst !== undefined).map((r) => r.tFirst! - r.t0);
}

/** Each user's replica: the one that served most of its requests among `rs`. */
function homes(rs: RequestRecord[], byId: Map<string, BalancerEntry>): Map<string, { home: string; distinct: number }> {
    const per = new Map<string, Map<string, number>>();
    for (const r of rs) {
        const e = byId.get(r.id);
        const who = e?.attempts[e.attempts.length - 1];
        if (!who || !r.session) continue;
        const m = per.get(r.session) ?? new Map<string, number>();
        m.set(who, (m.get(who) ?? 0) + 1);
        per.set(r.session, m);
    }
    const out = new Map<string, { home: string; distinct: number }>();
    for (const [u, m] of per) out.set(u, { home: [...m.entries()].sort((a, b) => b[1] - a[1])[0][0], distinct: m.size });
    return out;
}

export async function runAffinity(o: AffinityOptions): Promise<AffinityReport> {
    const log = o.log ?? (() => {});
    const t0 = Date.now();
    const dir = mkdtempSync(join(tmpdir(), "batchwise-affinity-"));
    const { root: _r, log: _l, ...options } = o;
    const report: AffinityReport = { options, runs: [], skipped: [], wallS: 0 };
    const base = { root: o.root, dir, ctx: o.ctx, threads: o.threads, maxRunning: o.maxRunning, drainTimeout: 30 };
    const replicas = ["r1", "r2", "r3"].map((n) => new Instance(n, base));
    const prefixes = Array.from({ length: o.users }, (_, u) => randomTokens(o.prefixTokens, 1000 + u));
    try {
        for (const name of o.balancers) {
            for (const routing of o.routings) {
                const b = makeBalancer(name, o.root, join(dir, `${routing}`));
                if (!b.binary) {
                    if (!report.skipped.some((s) => s.balancer === name)) report.skipped.push({ balancer: name, why: `${name} not found (apt-get install ${b.aptPackage})` });
                    continue;
                }
                // fresh replicas: empty prefix caches, zero counters
                await Promise.all(replicas.map((i) => (i.running ? i.stop() : null)));
                await replicas[0].start();
                await Promise.all(replicas.slice(1).map((i) => i.start()));
                await b.start(replicas.map((i) => ({ name: i.name, host: "127.0.0.1", port: i.port, weight: 1 })));
                log(`affinity: ${name}, ${routing}: ${o.users} users, ${o.prefixTokens}-token prefixes, ${o.seconds} s`);
                report.runs.push(await oneRun(b, name, routing, replicas, prefixes, o, log));
                await b.stop();
            }
        }
    } finally {
        await Promise.all(replicas.map((i) => (i.running ? i.proc!.kill() : null)));
        if (!o.keepDir) rmSync(dir, { recursive: true, force: true });
        else log(`logs kept in ${dir}`);
    }
    report.wallS = (Date.now() - t0) / 1000;
    return report;
}

async function oneRun(
    b: ReturnType<typeof makeBalancer>, name: BalancerName, routing: Routing, replicas: Instance[], prefixes: number[][], o: AffinityOptions, log: (l: string) => void,
): Promise<AffinityRun> {
    const rand = seededRandom(42);
    const before0 = await Promise.all(replicas.map((i) => prefixCounters(i.url)));
    const start = Date.now();
    const load = new Load({
        baseUrl: b.url, clients: o.users, tag: `aff-${name}-${routing}`, timeoutMs: 120_000,
        thinkMs: () => o.thinkMs[0] + rand() * (o.thinkMs[1] - o.thinkMs[0]),
        spec: (u, i) => ({
            path: "/v1/completions", stream: true,
            body: {
                prompt: [...prefixes[u], ...randomTokens(o.freshTokens, 1_000_000 + u * 10_000 + i)], max_tokens: o.maxTokens, temperature: 0,
                ignore_eos: true, stream: true, stream_options: { include_usage: true },
            },
            headers: routing === "affinity" ? { "x-session-id": `user-${u}` } : ({} as Record<string, string>),
        }),
    });
    // round-robin requests carry no session header: the user is the client number
    load.start();
    const half = start + (o.seconds * 1000) / 2;
    await sleep(half - Date.now());
    const beforeLeave = await Promise.all(replicas.map((i) => prefixCounters(i.url)));
    const leaving = replicas[2];
    const leaveAt = Date.now();
    if (o.leave) leaving.term();
    await sleep(start + o.seconds * 1000 - Date.now());
    const records = await load.stop();
    const end = Date.now();
    // a user is the client number in the request id: tag-client-i-n
    for (const r of records) r.session ??= `user-${r.client}`;
    let hits = 0;
    let queries = 0;
    for (let k = 0; k < replicas.length; k++) {
        const a = before0[k];
        const z = beforeLeave[k];
        if (a && z) {
            hits += z.hits - a.hits;
            queries += z.queries - a.queries;
        }
    }
    const entries = b.entries();
    const byId = new Map(entries.map((e) => [e.id, e]));
    const pre = records.filter((r) => r.t1 < leaveAt);
    const q2 = records.filter((r) => r.t0 >= start + (leaveAt - start) / 2 && r.t1 < leaveAt);
    const windowS = Math.max(2, Math.round(o.seconds / 8));
    const justAfter = records.filter((r) => r.t0 >= leaveAt && r.t0 < leaveAt + windowS * 1000);
    const later = records.filter((r) => r.t0 >= leaveAt + windowS * 1000);
    const homesBefore = homes(pre, byId);
    const usersPerReplica: Record<string, number> = {};
    for (const h of homesBefore.values()) usersPerReplica[h.home] = (usersPerReplica[h.home] ?? 0) + 1;
    const distinct = [...homesBefore.values()].map((h) => h.distinct);
    const ttftPre = ttfts(pre);
    const run: AffinityRun = {
        balancer: name, routing, requests: records.length, failed: records.filter((r) => r.outcome !== "ok").length,
        metricsHitRate: queries > 0 ? hits / queries : NaN, usageHitRate: usageRate(pre),
        ttftMs: { p50: percentile(ttftPre, 50), p95: percentile(ttftPre, 95) }, usersPerReplica,
        replicasPerUser: distinct.reduce((a, x) => a + x, 0) / Math.max(1, distinct.length),
    };
    if (o.leave) {
        const homesAfter = homes(records.filter((r) => r.t0 >= leaveAt), byId);
        let moved = 0;
        let others = 0;
        for (const [u, h] of homesBefore) {
            const after = homesAfter.get(u);
            if (!after) continue;
            if (h.home === leaving.name) moved++;
            else if (after.home !== h.home) others++;
        }
        run.leave = {
            replica: leaving.name, atS: (leaveAt - start) / 1000, windowS, before: usageRate(q2), justAfter: usageRate(justAfter), later: usageRate(later),
            ttftBeforeP50: percentile(ttfts(q2), 50), ttftJustAfterP50: percentile(ttfts(justAfter), 50), movedUsers: moved, otherUsersMoved: others,
        };
    }
    log(`affinity: ${name}, ${routing}: ${records.length} requests in ${((end - start) / 1000).toFixed(0)} s, hit rate ${(run.usageHitRate * 100).toFixed(1)}%`);
    return run;
}
