// The fleet report as a readable table (the JSON is the report object itself).
import type { AffinityReport } from "./affinity.js";
import type { Counts, FleetReport, PhaseFigures } from "./scenario.js";

function failed(c: Counts): string {
    const kinds = Object.entries(c.failed).map(([k, n]) => `${n} ${k}`);
    return kinds.length === 0 ? "0" : `${c.sent - c.ok} (${kinds.join(", ")})`;
}

function ms(x: number | null | undefined): string {
    return x === null || x === undefined || Number.isNaN(x) ? "-" : `${Math.round(x)}`;
}

function table(rows: string[][]): string {
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
    return rows.map((r) => r.map((c, i) => (c ?? "").padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}

function events(p: PhaseFigures): string {
    return p.events.map((e) => {
        const oor = e.outOfRotationMs === null ? "not seen" : `${e.outOfRotationMs} ms`;
        const tries = e.attemptsWhileGone === null ? "" : `, ${e.attemptsWhileGone} attempts on it, ${e.reprobes} re-probes`;
        const back = e.readyAgainMs === undefined ? "" : `, exit ${ms(e.exitMs)} ms, ready again ${ms(e.readyAgainMs)} ms`;
        return `${e.event} ${e.replica}: out of rotation ${oor}${tries}, ${e.retried} retried${back}`;
    }).join("; ");
}

export function fleetTable(r: FleetReport): string {
    const out: string[] = [];
    for (const b of r.balancers) {
        out.push(`${b.balancer} (${b.version})`);
        const rows = [["phase", "s", "sent", "plain: sent", "failed", "streams: sent", "failed", "cut on", "client resends", "plain p50/p95 ms", "TTFT p50/p95 ms"]];
        for (const p of b.phases) {
            rows.push([
                p.phase, ((p.to - p.from) / 1000).toFixed(1), String(p.all.sent), String(p.plain.sent), failed(p.plain), String(p.streams.sent), failed(p.streams),
                Object.entries(p.cut.byReplica).map(([k, n]) => `${k}:${n}`).join(" ") + (p.cut.unattributed ? ` ?:${p.cut.unattributed}` : ""), String(p.clientRetries),
                `${ms(p.latencyMs.plainP50)}/${ms(p.latencyMs.plainP95)}`, `${ms(p.latencyMs.ttftP50)}/${ms(p.latencyMs.ttftP95)}`,
            ]);
        }
        out.push(table(rows));
        for (const p of b.phases) {
            if (p.events.length > 0) out.push(`  ${p.phase}: ${events(p)}`);
            if (p.split) {
                const n = Object.values(p.split.byModel).reduce((a, x) => a + x, 0);
                out.push(`  split: ${(p.split.greenShare * 100).toFixed(1)}% of ${n} requests answered by demo-v2 (weights give ${(p.split.expected * 100).toFixed(0)}%); ` +
                    `by replica ${Object.entries(p.split.byReplica).map(([k, x]) => `${k}:${x}`).join(" ")}`);
            }
        }
        if (b.unlogged > 0) out.push(`  ${b.unlogged} requests missing from the balancer's log`);
        out.push("");
    }
    for (const s of r.skipped) out.push(`${s.balancer}: skipped: ${s.why}`);
    out.push(`wall ${r.wallS.toFixed(0)} s`);
    return out.join("\n");
}

export function affinityTable(r: AffinityReport): string {
    const out: string[] = [];
    const rows = [["balancer", "routing", "requests", "failed", "hit rate (metrics)", "hit rate (usage)", "TTFT p50/p95 ms", "users per replica", "replicas per user"]];
    for (const m of r.runs) {
        rows.push([
            m.balancer, m.routing, String(m.requests), String(m.failed), `${(m.metricsHitRate * 100).toFixed(1)}%`, `${(m.usageHitRate * 100).toFixed(1)}%`,
            `${ms(m.ttftMs.p50)}/${ms(m.ttftMs.p95)}`, Object.entries(m.usersPerReplica).sort().map(([k, n]) => `${k}:${n}`).join(" "), m.replicasPerUser.toFixed(1),
        ]);
    }
    out.push(table(rows));
    for (const m of r.runs) {
        if (!m.leave) continue;
        const w = m.leave;
        out.push(`  ${m.balancer} ${m.routing}: ${w.replica} left at ${(w.atS).toFixed(1)} s; hit rate before ${(w.before * 100).toFixed(1)}%, ` +
            `first ${w.windowS} s after ${(w.justAfter * 100).toFixed(1)}%, then ${(w.later * 100).toFixed(1)}%; TTFT p50 ${ms(w.ttftBeforeP50)} ms before, ${ms(w.ttftJustAfterP50)} ms just after` +
            (m.routing === "affinity" ? `; ${w.movedUsers} users were on it, ${w.otherUsersMoved} users of other replicas changed replica` : ""));
    }
    return out.join("\n");
}
