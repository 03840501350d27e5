// Prometheus metrics (prom-client). The vllm: names are the ones vLLM exposes, so that dashboards,
// autoscalers (KEDA, HPA on custom metrics) and the Gateway API Inference Extension's endpoint picker
// read batchwise as they read vLLM; batchwise_ metrics add what vLLM has no name for. Every metric of
// a model carries model_name. Engine counters are read at scrape time, less what warm-up did.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { heapStats, type Engine, type EngineStats, type GenerateResult } from "../index.js";
import { engineTrouble } from "./lifecycle.js";

export interface MetricsModel {
    name: string;
    engine: Engine | undefined;
}

const LATENCY = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const TOKENS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 131072];

export class ServerMetrics {
    readonly registry = new Registry();
    /** Each model's stats when warm-up ended: its counters count from there. */
    private readonly baselines = new Map<string, EngineStats>();
    /** Stats read once per scrape, shared by every metric's collect. */
    private snapshot: Map<string, EngineStats> | null = null;
    private readonly ttft: Histogram<"model_name">;
    private readonly itl: Histogram<"model_name">;
    private readonly e2e: Histogram<"model_name">;
    private readonly queue: Histogram<"model_name">;
    private readonly promptHist: Histogram<"model_name">;
    private readonly genHist: Histogram<"model_name">;
    private readonly success: Counter<"model_name" | "finished_reason">;
    private readonly http: Counter<"route" | "status">;
    private readonly rejected: Counter<"model_name" | "reason">;
    private readonly disconnects: Counter<"model_name">;
    readonly warmupSeconds: Gauge<"model_name">;

    constructor(private readonly models: () => MetricsModel[], private readonly isReady: () => boolean, livenessTimeoutMs = 120_000) {
        const r = this.registry;
        collectDefaultMetrics({ register: r });
        const self = this;
        const each = (fn: (name: string, s: EngineStats, base: EngineStats) => void, counting = false) => {
            for (const m of self.models()) {
                const base = self.baselines.get(m.name);
                // a counter starts once warm-up is over: shown earlier, it would fall back when the baseline is set
                if (!m.engine || (counting && !base)) continue;
                const s = self.snapshot?.get(m.name) ?? m.engine.stats();
                fn(m.name, s, base ?? s);
            }
        };
        const gauge = (name: string, help: string, read: (s: EngineStats) => number) =>
            new Gauge({
                name, help, labelNames: ["model_name"], registers: [r],
                collect() {
                    this.reset();
                    each((model, s) => this.set({ model_name: model }, read(s)));
                },
            });
        const counter = (name: string, help: string, read: (s: EngineStats, base: EngineStats) => number) =>
            new Counter({
                name, help, labelNames: ["model_name"], registers: [r],
                collect() {
                    this.reset();
                    each((model, s, base) => this.inc({ model_name: model }, Math.max(0, read(s, base))), true);
                },
            });
        gauge("vllm:num_requests_running", "Requests in the running batch.", (s) => s.running);
        gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", (s) => s.waiting);
        gauge("vllm:num_requests_swapped", "Requests preempted to host memory.", (s) => s.swapped);
        gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = 100%).", (s) => s.kv.usage);
        const since = (k: Exclude<keyof EngineStats["totals"], "finished">) => (s: EngineStats, b: EngineStats) => s.totals[k] - b.totals[k];
        counter("vllm:num_preemptions_total", "Preemptions since start.", (s, b) => s.preemptions - b.preemptions);
        counter("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", since("promptTokens"));
        counter("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", since("cachedTokens"));
        counter("vllm:prompt_tokens_total", "Prompt tokens of finished and running requests.", since("promptTokens"));
        counter("vllm:generation_tokens_total", "Tokens generated.", since("generatedTokens"));
        counter("batchwise_prompt_tokens_computed_total", "Prompt tokens computed (cache misses and recomputation after preemption).", since("computedPromptTokens"));
        counter("batchwise_engine_steps_total", "Engine steps (one decode of the batch each).", (s, b) => s.steps - b.steps);
        counter("batchwise_engine_step_seconds_total", "Time the engine loop spent in steps (planning, decode, taking tokens back); over wall time, how busy the engine is.",
            (s, b) => (s.time.stepMs - b.time.stepMs) / 1000);
        counter("batchwise_engine_decode_seconds_total", "Time in the native decode and sampling (the model on the GPU, and the wait for it).",
            (s, b) => (s.time.decodeMs - b.time.decodeMs) / 1000);
        counter("batchwise_engine_graph_reuses_total", "Micro-batches that reused llama.cpp's previous compute graph as it was (no graph built).",
            (s, b) => s.graphs.reuses - b.graphs.reuses);
        counter("batchwise_engine_allocation_plans_total", "Allocation plans llama.cpp made for micro-batches' graphs; on a GPU each first waits for the step before to finish.",
            (s, b) => s.graphs.allocationPlans - b.graphs.allocationPlans);
        gauge("batchwise_kv_blocks", "KV-cache blocks in the pool.", (s) => s.kv.blocks);
        gauge("batchwise_kv_blocks_used", "KV-cache blocks held by running requests.", (s) => s.kv.used);
        gauge("batchwise_kv_blocks_cached", "Free KV-cache blocks that still hold a reusable prefix.", (s) => s.kv.cachedFree);
        gauge("batchwise_generation_tokens_per_second", "Tokens generated per second over the last 10 s.", (s) => s.tokensPerSecond);
        gauge("batchwise_prompt_tokens_per_second", "Prompt tokens computed per second over the last 10 s.", (s) => s.promptTokensPerSecond);
        gauge("batchwise_engine_healthy", "1 while the model's engine can serve: its loop alive, and a step finished within the liveness timeout while it had work.",
            (s) => (engineTrouble(s, livenessTimeoutMs) === null ? 1 : 0));
        new Gauge({
            name: "batchwise_heap_bytes",
            help: "The process heap under glibc's malloc: in_use (allocated, not freed) and held (taken from the system; held - in_use is free memory malloc keeps).",
            labelNames: ["state"], registers: [r],
            collect() {
                this.reset();
                const h = heapStats();
                if (h === null) return;
                this.set({ state: "in_use" }, h.inUseBytes);
                this.set({ state: "held" }, h.heldBytes);
            },
        });
        counter("batchwise_heap_trims_total", "Times the engine gave malloc's free pages back to the system (EngineOptions.trimHeapMs).", (s, b) => s.heap.trims - b.heap.trims);
        new Gauge({
            name: "batchwise_ready", help: "1 when the server is ready for traffic (models loaded and warmed up, not draining).", registers: [r],
            collect() {
                this.set(self.isReady() ? 1 : 0);
            },
        });
        const hist = (name: string, help: string, buckets: number[]) => new Histogram({ name, help, labelNames: ["model_name"], buckets, registers: [r] });
        this.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", LATENCY);
        this.itl = hist("vllm:inter_token_latency_seconds", "Time between successive output tokens.", LATENCY);
        this.e2e = hist("vllm:e2e_request_latency_seconds", "Request latency, arrival to last token.", LATENCY);
        this.queue = hist("vllm:request_queue_time_seconds", "Time a request waited before its first step.", LATENCY);
        this.promptHist = hist("vllm:request_prompt_tokens", "Prompt tokens per request.", TOKENS);
        this.genHist = hist("vllm:request_generation_tokens", "Generated tokens per request.", TOKENS);
        this.success = new Counter({ name: "vllm:request_success_total", help: "Finished requests by finish reason.", labelNames: ["model_name", "finished_reason"], registers: [r] });
        this.http = new Counter({ name: "batchwise_http_requests_total", help: "HTTP requests by route and status.", labelNames: ["route", "status"], registers: [r] });
        this.rejected = new Counter({ name: "batchwise_requests_rejected_total", help: "Generation requests refused (queue full, draining, not ready, invalid).", labelNames: ["model_name", "reason"], registers: [r] });
        this.disconnects = new Counter({ name: "batchwise_client_disconnects_total", help: "Requests aborted because the client went away.", labelNames: ["model_name"], registers: [r] });
        this.warmupSeconds = new Gauge({ name: "batchwise_warmup_seconds", help: "Time the model's warm-up took.", labelNames: ["model_name"], registers: [r] });
    }

    /** From now on the engine's counters count from here (called after warm-up). */
    resetBaseline(name: string, engine: Engine): void {
        this.baselines.set(name, engine.stats());
    }

    /** The exposition text: every model's stats are read once for all the metrics of this scrape. */
    async text(): Promise<string> {
        this.snapshot = new Map(this.models().flatMap((m) => (m.engine ? [[m.name, m.engine.stats()] as const] : [])));
        try {
            return await this.registry.metrics();
        } finally {
            this.snapshot = null;
        }
    }

    observe(model: string, r: GenerateResult): void {
        const l = { model_name: model };
        if (r.timings.ttftMs >= 0) this.ttft.observe(l, r.timings.ttftMs / 1000);
        for (const ms of r.timings.interTokenMs) this.itl.observe(l, ms / 1000);
        this.e2e.observe(l, r.timings.e2eMs / 1000);
        this.queue.observe(l, r.timings.queueMs / 1000);
        this.promptHist.observe(l, r.usage.promptTokens);
        this.genHist.observe(l, r.usage.completionTokens);
        for (const c of r.choices) this.success.inc({ model_name: model, finished_reason: c.finishReason });
    }

    httpRequest(route: string, status: number): void {
        this.http.inc({ route, status: String(status) });
    }

    reject(model: string, reason: string): void {
        this.rejected.inc({ model_name: model, reason });
    }

    disconnect(model: string): void {
        this.disconnects.inc({ model_name: model });
    }
}
