#!/usr/bin/env node
// Writes deploy/grafana/dashboard.json (or the file named as the first argument): the batchwise fleet
// dashboard, its panels made from the metric names here. Edit this and run it rather than the JSON;
// test/deploy.test.ts fails while the two differ, and checks every query against a live /metrics.
// A panel edited in Grafana's UI can be exported over the JSON, then carried back here.
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ds = { type: "prometheus", uid: "${datasource}" };
const J = 'job="batchwise", batchwise_dev_track=~"$track"';
const M = `${J}, model_name=~"$model"`;
const RI = "$__rate_interval";
const q = (h, expr) => `histogram_quantile(${h}, sum by (le) (rate(${expr}_bucket{${M}}[${RI}])))`;
let id = 1, y = 0, x = 0;
const panels = [];
function row(title) {
    if (x !== 0) { y += 8; x = 0; }
    panels.push({ id: id++, type: "row", title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
    y += 1;
}
function panel(type, title, description, targets, { unit = "short", w = 8, h = 8, min, max, extra = {} } = {}) {
    if (x + w > 24) { y += h; x = 0; }
    const defaults = { unit };
    if (min !== undefined) defaults.min = min;
    if (max !== undefined) defaults.max = max;
    const p = {
        id: id++, type, title, description, datasource: ds,
        gridPos: { h, w, x, y },
        fieldConfig: { defaults: { ...defaults, ...(type === "timeseries" ? { custom: { drawStyle: "line", lineWidth: 1, fillOpacity: 10, showPoints: "never" } } : {}) }, overrides: [] },
        options: type === "stat"
            ? { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, colorMode: "value", graphMode: "area", textMode: "auto", justifyMode: "auto", orientation: "auto" }
            : { legend: { displayMode: "list", placement: "bottom", showLegend: true }, tooltip: { mode: "multi", sort: "desc" } },
        targets: targets.map(([expr, legendFormat], i) => ({ datasource: ds, expr, legendFormat, refId: String.fromCharCode(65 + i), range: true })),
        ...extra,
    };
    panels.push(p);
    x += w;
    if (x >= 24) { x = 0; y += h; }
}
const stat = (title, d, targets, o = {}) => panel("stat", title, d, targets, { w: 4, h: 4, ...o });
const ts = (title, d, targets, o = {}) => panel("timeseries", title, d, targets, o);
const quantiles = (metric) => [[q(0.5, metric), "p50"], [q(0.95, metric), "p95"], [q(0.99, metric), "p99"]];
const apiRate = (extra = "") => `sum(rate(batchwise_http_requests_total{${J}, route=~"/v1/.+"${extra}}[${RI}]))`;
const ratio5xx = `(${apiRate(', status=~"5.."')} - (sum(rate(batchwise_requests_rejected_total{${J}, reason=~"draining|not_ready"}[${RI}])) or vector(0))) / ${apiRate()}`;

row("Overview");
stat("Ready replicas", "Replicas whose /ready is 200 (loaded, warmed up, not draining).", [[`sum(batchwise_ready{${J}})`, "ready"]]);
stat("Targets up", "Replicas Prometheus scrapes successfully.", [[`sum(up{${J}})`, "up"]]);
stat("API requests/s", "Requests to the /v1 routes, all statuses.", [[apiRate(), "req/s"]], { unit: "reqps" });
stat("5xx ratio", "Server errors over /v1 requests, drain and loading 503s left out (the alert BatchwiseHigh5xxRatio).", [[ratio5xx, "5xx"]], { unit: "percentunit" });
stat("TTFT p95", "Time to first token, 95th percentile, over the selected models (alert: above 500 ms).", [[q(0.95, "vllm:time_to_first_token_seconds"), "p95"]], { unit: "s" });
stat("Waiting", "Requests waiting for a place in a running batch, whole fleet (the autoscaling signal).", [[`sum(vllm:num_requests_waiting{${M}})`, "waiting"]]);

row("Throughput");
ts("Requests/s by route and status", "HTTP requests to the /v1 routes.", [[`sum by (route, status) (rate(batchwise_http_requests_total{${J}, route=~"/v1/.+"}[${RI}]))`, "{{route}} {{status}}"]], { unit: "reqps" });
ts("Tokens/s", "Tokens generated, prompt tokens taken, and prompt tokens computed (the rest came from the prefix cache).", [
    [`sum(rate(vllm:generation_tokens_total{${M}}[${RI}]))`, "generated"],
    [`sum(rate(vllm:prompt_tokens_total{${M}}[${RI}]))`, "prompt"],
    [`sum(rate(batchwise_prompt_tokens_computed_total{${M}}[${RI}]))`, "prompt computed"],
]);
ts("Finished requests/s by reason", "Generations finished, by finish reason (stop, length, abort, ...).", [[`sum by (finished_reason) (rate(vllm:request_success_total{${M}}[${RI}]))`, "{{finished_reason}}"]], { unit: "reqps" });

row("Latency");
ts("Time to first token", "TTFT quantiles over the selected models.", quantiles("vllm:time_to_first_token_seconds"), { unit: "s", w: 12 });
ts("Inter-token latency", "Gap between successive output tokens.", quantiles("vllm:inter_token_latency_seconds"), { unit: "s", w: 12 });
ts("End-to-end latency", "Request arrival to last token.", quantiles("vllm:e2e_request_latency_seconds"), { unit: "s", w: 12 });
ts("Queue time", "Time a request waited before its first step.", quantiles("vllm:request_queue_time_seconds"), { unit: "s", w: 12 });

row("Load");
ts("Waiting by replica", "vllm:num_requests_waiting per replica.", [[`sum by (instance) (vllm:num_requests_waiting{${M}})`, "{{instance}}"]]);
ts("Running by replica", "Sequences in the running batch per replica (at most --max-running).", [[`sum by (instance) (vllm:num_requests_running{${M}})`, "{{instance}}"]]);
ts("KV cache usage by replica", "Share of KV blocks held by running requests (1 = full: preemptions follow).", [[`max by (instance) (vllm:kv_cache_usage_perc{${M}})`, "{{instance}}"]], { unit: "percentunit", min: 0, max: 1 });
ts("Prefix cache hit rate", "Prompt tokens found in the prefix cache over prompt tokens looked up.", [
    [`sum(rate(vllm:prefix_cache_hits_total{${M}}[${RI}])) / sum(rate(vllm:prefix_cache_queries_total{${M}}[${RI}]))`, "fleet"],
    [`sum by (instance) (rate(vllm:prefix_cache_hits_total{${M}}[${RI}])) / sum by (instance) (rate(vllm:prefix_cache_queries_total{${M}}[${RI}]))`, "{{instance}}"],
], { unit: "percentunit", min: 0, max: 1 });
ts("Preemptions/s", "Requests preempted because the KV cache was full.", [[`sum by (instance) (rate(vllm:num_preemptions_total{${M}}[${RI}]))`, "{{instance}}"]]);
ts("Engine busy", "Share of wall time the engine loop spent in steps (1 = never idle).", [[`sum by (instance) (rate(batchwise_engine_step_seconds_total{${M}}[${RI}]))`, "{{instance}}"]], { unit: "percentunit", min: 0 });

row("Errors");
ts("5xx by route and status", "Server errors of the /v1 routes by route and status (503s of draining or loading replicas included here; probe 503s are not).", [[`sum by (route, status) (rate(batchwise_http_requests_total{${J}, route=~"/v1/.+", status=~"5.."}[${RI}]))`, "{{route}} {{status}}"]], { unit: "reqps" });
ts("Rejections by reason", "Generation requests refused: queue_full (429), draining and not_ready (503), context_length_exceeded and other 400s, model_not_found.", [[`sum by (reason) (rate(batchwise_requests_rejected_total{${M}}[${RI}]))`, "{{reason}}"]], { unit: "reqps" });
ts("Client disconnects/s", "Generations aborted because the client went away.", [[`sum by (instance) (rate(batchwise_client_disconnects_total{${M}}[${RI}]))`, "{{instance}}"]], { unit: "reqps" });

row("Replicas");
ts("Ready by replica", "batchwise_ready per replica: 0 while loading, warming up or draining.", [[`batchwise_ready{${J}}`, "{{instance}} {{batchwise_dev_track}}"]], { min: 0, max: 1 });
ts("Engine healthy by replica", "0: the engine loop stopped or is stuck past --liveness-timeout (/health 503, liveness restarts the container).", [[`min by (instance) (batchwise_engine_healthy{${M}})`, "{{instance}}"]], { min: 0, max: 1 });
ts("Restarts (1 h)", "Process starts per replica over the last hour.", [[`changes(process_start_time_seconds{${J}}[1h])`, "{{instance}}"]]);

const dashboard = {
    annotations: { list: [{ builtIn: 1, datasource: { type: "grafana", uid: "-- Grafana --" }, enable: true, hide: true, iconColor: "rgba(0, 211, 255, 1)", name: "Annotations & Alerts", type: "dashboard" }] },
    description: "A batchwise fleet: throughput, latency, queue, KV cache, prefix cache, errors and replicas, from the metrics the server exports (docs/server.md#metrics). Scraped with job=\"batchwise\" (deploy/k8s/monitoring/podmonitor.yaml).",
    editable: true,
    graphTooltip: 1,
    links: [],
    panels,
    refresh: "30s",
    schemaVersion: 39,
    tags: ["batchwise", "llm", "vllm"],
    templating: {
        list: [
            { name: "datasource", label: "Prometheus", type: "datasource", query: "prometheus", current: {}, hide: 0, refresh: 1, regex: "", options: [] },
            {
                name: "track", label: "Track", type: "query", datasource: ds, definition: 'label_values(batchwise_ready{job="batchwise"}, batchwise_dev_track)',
                query: { query: 'label_values(batchwise_ready{job="batchwise"}, batchwise_dev_track)', refId: "track" },
                description: "Rollout track (blue, green) from the pods' batchwise.dev/track label; All also takes series without it.",
                includeAll: true, multi: true, allValue: ".*", current: {}, hide: 0, refresh: 2, regex: "", sort: 1, options: [],
            },
            {
                name: "model", label: "Model", type: "query", datasource: ds, definition: `label_values(vllm:num_requests_running{${J}}, model_name)`,
                query: { query: `label_values(vllm:num_requests_running{${J}}, model_name)`, refId: "model" },
                includeAll: true, multi: true, allValue: ".*", current: {}, hide: 0, refresh: 2, regex: "", sort: 1, options: [],
            },
        ],
    },
    time: { from: "now-6h", to: "now" },
    timepicker: {},
    timezone: "",
    title: "batchwise fleet",
    uid: "batchwise-fleet",
    version: 1,
};
writeFileSync(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), "dashboard.json"), JSON.stringify(dashboard, null, 2) + "\n");
