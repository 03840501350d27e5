// The benchmark report: Markdown tables of the figures and of ratios against llama-server, and an SVG
// bar chart of output tokens/s. No charting library: a few rectangles and labels.
import { knee, type OpenLoopStats, type RunStats } from "./loadgen.js";

/** The long-prompt workload: one prompt at a share of the context, a few times, one at a time. */
export interface LongStats {
    /** The longest sequence one request may have on both servers: min(ctx-size, the model's trained context). */
    contextTokens: number;
    promptTokens: number;
    outputTokens: number;
    /** The first run's TTFT: a warm-up, not in the figures below. */
    warmupTtftMs: number;
    /** TTFT of each measured run (a fresh prompt each, so no prefix cache helps). */
    ttftMs: number[];
    ttftMsMean: number;
    /** promptTokens / mean TTFT. */
    prefillTokensPerS: number;
    /** Runs (the warm-up included) that failed. */
    failed: number;
    firstError?: string;
}

export interface CaseResult {
    workload: string;
    /** e.g. "512 in / 128 out, concurrency 16" */
    label: string;
    server: string;
    stats: RunStats;
    /** Extra figures a workload reports (idle TTFT, cold start, ...). */
    extra?: Record<string, number>;
    /** The ide workload: one rate's figures. */
    ide?: OpenLoopStats;
    /** The long workload's figures. */
    long?: LongStats;
}

export interface BoundResult {
    label: string;
    /** Output tokens per second of the same work done by llama-batched-bench (prompt time included). */
    outputTokensPerS: number;
    raw: Record<string, number>;
}

export interface Report {
    date: string;
    command: string;
    device: string;
    driver?: string;
    llamaTag: string;
    model: { path: string; shape: string; parameters: number; sizeBytes: number };
    settings: Record<string, unknown>;
    /** Each server process: which workloads it ran, and its command line (the port left out). */
    servers: { server: string; workloads: string[]; args: string[] }[];
    results: CaseResult[];
    bounds: BoundResult[];
    /** Servers that did not start or stopped mid-run, with the error (the rest of the run went on). */
    failures?: { server: string; error: string }[];
    /** The ide workload's knee per server, from its rates in results (null: the lowest rate missed the budget). */
    ideKnees?: { server: string; kneeRps: number | null; rates: number[] }[];
}

/** Workloads with tables of their own (not output tokens/s at a fixed load). */
const OWN_TABLE = new Set(["ide", "long"]);

/** Each server's ide knee, from the rates it ran. */
export function ideKnees(results: readonly CaseResult[]): NonNullable<Report["ideKnees"]> {
    const servers = [...new Set(results.filter((c) => c.ide).map((c) => c.server))];
    return servers.map((server) => {
        const rates = results.filter((c) => c.server === server && c.ide).map((c) => c.ide!);
        return { server, kneeRps: knee(rates), rates: rates.map((x) => x.targetRps) };
    });
}

const f = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");

export function markdown(r: Report, reference = "llama-server"): string {
    const lines: string[] = [];
    lines.push(`Run ${r.date} on ${r.device}${r.driver ? ` (driver ${r.driver})` : ""}, llama.cpp ${r.llamaTag}, model ${r.model.shape} ` +
        `(${(r.model.parameters / 1e9).toFixed(2)}B parameters, ${(r.model.sizeBytes / 2 ** 30).toFixed(1)} GiB, random weights).`);
    lines.push("", "```sh", r.command, "```", "");
    if (r.servers.length > 0) {
        lines.push("Server processes (port left out):", "");
        for (const p of r.servers) lines.push(`- ${p.server} (${p.workloads.join(", ")}): \`${p.args.join(" ")}\``);
        lines.push("");
    }
    const labels = [...new Set(r.results.filter((c) => !OWN_TABLE.has(c.workload)).map((c) => c.label))];
    if (labels.length > 0) {
        lines.push("| workload | server | out tok/s | vs " + reference + " | of bound | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |");
        lines.push("|---|---|---|---|---|---|---|---|---|---|");
    }
    for (const label of labels) {
        const rows = r.results.filter((c) => c.label === label);
        const ref = rows.find((c) => c.server === reference);
        const bound = r.bounds.find((b) => b.label === label);
        for (const c of rows) {
            const vs = ratio(c.stats.outputTokensPerS, ref?.stats.outputTokensPerS);
            const ofBound = bound && bound.outputTokensPerS > 0 ? `${f((100 * c.stats.outputTokensPerS) / bound.outputTokensPerS)}%` : "";
            lines.push(`| ${label} | ${c.server} | ${f(c.stats.outputTokensPerS)} | ${vs} | ${ofBound} | ${f(c.stats.ttftMs.p50)} | ${f(c.stats.ttftMs.p99)} | ` +
                `${f(c.stats.itlMs.p50, 1)} | ${f(c.stats.itlMs.p99, 1)} | ${c.stats.errors} |`);
        }
        if (bound) lines.push(`| ${label} | llama-batched-bench (raw engine bound) | ${f(bound.outputTokensPerS)} | ${ratio(bound.outputTokensPerS, ref?.stats.outputTokensPerS)} | 100% | | | | | |`);
    }
    ideTables(r, reference, lines);
    longTable(r, reference, lines);
    for (const x of r.failures ?? []) lines.push("", `**${x.server} failed:** ${x.error.split("\n").slice(0, 3).join(" / ").slice(0, 600)}`);
    const extras = r.results.filter((c) => c.extra);
    if (extras.length > 0) {
        lines.push("", "| workload | server | figures |", "|---|---|---|");
        for (const c of extras) {
            lines.push(`| ${c.label} | ${c.server} | ${Object.entries(c.extra!).map(([k, v]) => `${k} ${f(v, v < 10 ? 2 : 0)}`).join(", ")} |`);
        }
    }
    return lines.join("\n") + "\n";
}

/** A ratio against the reference's figure, blank where there is none. */
const ratio = (x: number, ref: number | undefined) => (ref !== undefined && ref > 0 && Number.isFinite(x) && Number.isFinite(ref) ? `${(x / ref).toFixed(2)}x` : "");

function ideTables(r: Report, reference: string, lines: string[]): void {
    const cases = r.results.filter((c) => c.ide);
    if (cases.length === 0) return;
    const { budgetMs: budget, durationS, warmupS } = cases[0].ide!;
    lines.push("", `IDE latency budget (open loop, seeded Poisson arrivals, ${f(durationS, 0)} s a rate, the arrivals of its first ${f(warmupS, 1)} s not measured; ` +
        `TTFT from each request's send; budget: TTFT p95 under ${budget} ms):`, "");
    lines.push(`| workload | server | achieved req/s | out tok/s | TTFT p50 ms | TTFT p95 ms | p95 vs ${reference} | TTFT p99 ms | within ${budget} ms | failed | notes |`);
    lines.push("|---|---|---|---|---|---|---|---|---|---|---|");
    for (const c of [...cases].sort((a, b) => a.ide!.targetRps - b.ide!.targetRps)) {
        const x = c.ide!;
        const ref = cases.find((d) => d.server === reference && d.ide!.targetRps === x.targetRps)?.ide;
        const notes = [
            ...(x.stopReason ? [`stopped at ${f(x.stoppedEarlyS!, 1)} s (${x.stopReason === "cap" ? `${x.maxInFlight} in flight: the cap` : "a request waited past the divergence limit"})`] : []),
            ...(x.unfinished > 0 ? [`${x.unfinished} unfinished, aborted`] : []),
            ...(x.ttftLowerBounds > 0 ? [`${x.ttftLowerBounds} TTFTs are lower bounds`] : []),
            `peak ${x.peakInFlight} in flight`,
        ];
        lines.push(`| ${c.label} | ${c.server} | ${f(x.achievedRps, 1)} | ${f(x.outputTokensPerS)} | ${f(x.ttftMs.p50)} | ${x.meetsBudget ? f(x.ttftMs.p95) : `**${f(x.ttftMs.p95)}**`} | ` +
            `${ratio(x.ttftMs.p95, ref?.ttftMs.p95)} | ${f(x.ttftMs.p99)} | ${f(100 * x.withinBudget)}% | ${x.failed} | ${notes.join("; ")} |`);
    }
    const knees = r.ideKnees ?? ideKnees(r.results);
    const refEntry = knees.find((k) => k.server === reference);
    const refKnee = refEntry?.kneeRps ?? undefined;
    lines.push("", `| server | knee: highest rate with TTFT p95 under ${budget} ms, req/s | vs ${reference} |`, "|---|---|---|");
    for (const k of knees) {
        const top = Math.max(...k.rates);
        const shown = k.kneeRps === null ? `below ${Math.min(...k.rates)}` : k.kneeRps === top ? `${k.kneeRps} (every rate run)` : String(k.kneeRps);
        // the reference missed its lowest rate: the ratio is more than against that rate
        const vs = k.kneeRps === null ? "" : refEntry && refEntry.kneeRps === null ? `> ${ratio(k.kneeRps, Math.min(...refEntry.rates))}` : ratio(k.kneeRps, refKnee);
        lines.push(`| ${k.server} | ${shown} | ${vs} |`);
    }
}

function longTable(r: Report, reference: string, lines: string[]): void {
    const cases = r.results.filter((c) => c.long);
    if (cases.length === 0) return;
    lines.push("", `Long prompt (one at a time, a fresh prompt each run; the first run a warm-up, not in the figures):`, "");
    lines.push(`| workload | server | context | prompt tokens | TTFT ms | vs ${reference} | prefill tok/s | vs ${reference} | warm-up TTFT ms | runs measured | failed |`);
    lines.push("|---|---|---|---|---|---|---|---|---|---|---|");
    for (const c of cases) {
        const x = c.long!;
        const ref = cases.find((d) => d.server === reference && d.label === c.label)?.long;
        lines.push(`| ${c.label} | ${c.server} | ${x.contextTokens} | ${x.promptTokens} | ${f(x.ttftMsMean)} | ${ratio(x.ttftMsMean, ref?.ttftMsMean)} | ` +
            `${f(x.prefillTokensPerS)} | ${ratio(x.prefillTokensPerS, ref?.prefillTokensPerS)} | ${f(x.warmupTtftMs)} | ${x.ttftMs.length} | ${x.failed} |`);
    }
}

const COLORS = ["#2b6cb0", "#c05621", "#718096", "#2f855a", "#6b46c1"];

/** Grouped bars: one group per workload label, one bar per server (and the bound, hatched grey). */
export function svg(report: Report): string {
    const r = { ...report, results: report.results.filter((c) => !OWN_TABLE.has(c.workload)) };
    const labels = [...new Set(r.results.map((c) => c.label))];
    const servers = [...new Set(r.results.map((c) => c.server))];
    const series = [...servers, "raw bound"];
    const value = (label: string, s: string) =>
        s === "raw bound" ? r.bounds.find((b) => b.label === label)?.outputTokensPerS ?? 0 : r.results.find((c) => c.label === label && c.server === s)?.stats.outputTokensPerS ?? 0;
    const max = Math.max(1, ...labels.flatMap((l) => series.map((s) => value(l, s))));
    const bw = 18, gap = 26, left = 70, top = 40, h = 260;
    const groupW = series.length * bw + gap;
    const width = left + labels.length * groupW + 160;
    const height = top + h + 150;
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`];
    out.push(`<text x="${left}" y="20" font-size="14">Output tokens/s, ${esc(r.model.shape)} on ${esc(r.device)}</text>`);
    for (let i = 0; i <= 4; i++) {
        const y = top + h - (h * i) / 4;
        out.push(`<line x1="${left - 4}" x2="${width - 10}" y1="${y}" y2="${y}" stroke="#e2e8f0"/>`);
        out.push(`<text x="${left - 8}" y="${y + 4}" text-anchor="end">${Math.round((max * i) / 4)}</text>`);
    }
    labels.forEach((l, gi) => {
        const x0 = left + gi * groupW + gap / 2;
        series.forEach((s, si) => {
            const v = value(l, s);
            const bh = (h * v) / max;
            const fill = s === "raw bound" ? "#cbd5e0" : COLORS[si % COLORS.length];
            out.push(`<rect x="${x0 + si * bw}" y="${top + h - bh}" width="${bw - 3}" height="${bh}" fill="${fill}"><title>${esc(s)}: ${Math.round(v)}</title></rect>`);
        });
        const short = l.length > 34 ? `${l.slice(0, 33)}…` : l;
        out.push(`<text transform="translate(${x0 + 4},${top + h + 12}) rotate(30)"><title>${esc(l)}</title>${esc(short)}</text>`);
    });
    series.forEach((s, si) => {
        const y = height - 14 - (series.length - 1 - si) * 0;
        const x = left + si * 170;
        out.push(`<rect x="${x}" y="${y - 9}" width="10" height="10" fill="${s === "raw bound" ? "#cbd5e0" : COLORS[si % COLORS.length]}"/>`);
        out.push(`<text x="${x + 14}" y="${y}">${esc(s)}</text>`);
    });
    out.push("</svg>");
    return out.join("\n") + "\n";
}
