// Helpers of test/deploy.test.ts for PromQL and the Prometheus exposition format: the metric and label
// names a query uses, read with Prometheus's own grammar (@prometheus-io/lezer-promql), and the series
// a /metrics page exports. No side effects at import.
import { parser } from "@prometheus-io/lezer-promql";

/** One vector selector of a query: its metric name and the label names it matches on. */
export interface Selector {
    metric: string;
    labels: string[];
}

export interface QueryNames {
    selectors: Selector[];
    /** Label names in by (...), without (...), on (...), ignoring (...). */
    grouping: string[];
}

/**
 * Grafana's interval variables as a duration, so that a dashboard's query parses as PromQL. Other
 * variables may stand only inside strings (label values such as "$model"), where PromQL takes anything.
 */
export function grafanaToPromql(expr: string): string {
    return expr.replace(/\$\{?__(rate_interval|interval|range)\}?/g, "5m");
}

/** prometheus-adapter's Go template (<<.Series>> and the rest) rendered as the adapter renders it. */
export function adapterToPromql(template: string, series: string): string {
    return template
        .replace(/<<\s*\.Series\s*>>/g, series)
        .replace(/<<\s*\.LabelMatchers\s*>>/g, 'namespace="batchwise",pod=~"batchwise-a|batchwise-b"')
        .replace(/<<\s*\.GroupBy\s*>>/g, "pod");
}

/** The names a PromQL expression uses; a syntax error throws with its position. */
export function queryNames(expr: string): QueryNames {
    const tree = parser.parse(expr);
    const selectors: Selector[] = [];
    const grouping: string[] = [];
    let error: number | undefined;
    tree.iterate({
        enter(n) {
            if (n.type.isError && error === undefined) error = n.from;
            if (n.name === "VectorSelector") {
                const id = n.node.getChild("Identifier");
                const labels: string[] = [];
                const matchers = n.node.getChild("LabelMatchers");
                if (matchers) {
                    const c = matchers.cursor();
                    c.iterate((m) => {
                        if (m.name === "LabelName") labels.push(expr.slice(m.from, m.to));
                    });
                }
                if (!id) throw new Error(`a selector without a metric name in '${expr}': name the metric, so it can be checked`);
                if (labels.includes("__name__")) throw new Error(`a __name__ matcher in '${expr}': name the metric, so it can be checked`);
                selectors.push({ metric: expr.slice(id.from, id.to), labels });
            }
            if (n.name === "GroupingLabels") {
                const c = n.node.cursor();
                c.iterate((m) => {
                    if (m.name === "LabelName") grouping.push(expr.slice(m.from, m.to));
                });
            }
        },
    });
    if (error !== undefined) throw new Error(`PromQL syntax error at ${error} in '${expr}': ...${expr.slice(Math.max(0, error - 20), error + 20)}...`);
    return { selectors, grouping };
}

/** A series a /metrics page exports: its sample name, its family's type, its label names, and its `le` bounds. */
export interface Exported {
    family: string;
    type: string;
    labels: Set<string>;
    le: Set<string>;
}

function parseLabels(s: string): Map<string, string> {
    const out = new Map<string, string>();
    const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/y;
    let m: RegExpExecArray | null;
    while ((m = re.exec(s)) !== null) out.set(m[1], m[2]);
    if (re.lastIndex !== s.length && s.trim() !== "" && out.size === 0) throw new Error(`cannot read labels {${s}}`);
    return out;
}

/**
 * The series of a Prometheus text exposition, by sample name (a histogram's _bucket, _sum and _count
 * each), from its sample lines: a family declared with no sample yet is in `declaredOnly`.
 */
export function exportedSeries(text: string): { series: Map<string, Exported>; declaredOnly: Set<string> } {
    const types = new Map<string, string>();
    const series = new Map<string, Exported>();
    for (const line of text.split("\n")) {
        if (line.startsWith("# TYPE ")) {
            const [, , name, type] = line.split(" ");
            types.set(name, type);
            continue;
        }
        if (line.startsWith("#") || line.trim() === "") continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+/.exec(line);
        if (!m) throw new Error(`cannot read the sample line '${line}'`);
        const name = m[1];
        const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "");
        const type = types.get(family);
        if (!type) throw new Error(`the sample ${name} has no # TYPE line`);
        const e = series.get(name) ?? { family, type, labels: new Set<string>(), le: new Set<string>() };
        const labels = parseLabels(m[3] ?? "");
        for (const [k, v] of labels) {
            e.labels.add(k);
            if (k === "le") e.le.add(v);
        }
        series.set(name, e);
    }
    const declaredOnly = new Set([...types.keys()].filter((f) => ![...series.values()].some((s) => s.family === f)));
    return { series, declaredOnly };
}
