// deploy/ checked: every Kubernetes manifest against its API schema (kubernetes-models, with unknown
// fields refused), the Deployment's probes, ports, args, grace period, selectors and GPUs against the
// server they run, the autoscalers against each other, the alert rules with promtool (check and unit
// tests) and against their PrometheusRule copy, the Grafana dashboard's structure, the Dockerfile's
// essentials, and every metric and label name that a dashboard, rule, rule test or autoscaler queries
// against the /metrics of a live server (in-process, tiny model, after real requests).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parse as parseYaml } from "yaml";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { kustomizationDirs, kustomizationFiles, readYamlDocs, rel, validateManifest, type Manifest, type Obj } from "./deploy-manifests.js";
import { adapterToPromql, exportedSeries, grafanaToPromql, queryNames, type Exported } from "./deploy-promql.js";
import { gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const root = join(import.meta.dirname, "..", "..");
const deploy = join(root, "deploy");
const k8s = join(deploy, "k8s");
const cli = join(root, "dist", "lib", "cli", "main.js");

function yamlFilesUnder(dir: string): string[] {
    const out: string[] = [];
    for (const e of readdirSync(dir)) {
        const p = join(dir, e);
        if (statSync(p).isDirectory()) out.push(...yamlFilesUnder(p));
        else if (/\.ya?ml$/.test(e)) out.push(p);
    }
    return out.sort();
}

function has(cmd: string, args: string[]): boolean {
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    return !r.error && r.status === 0;
}

/** Every object of every manifest file under deploy/k8s (kustomization.yaml files aside). */
function manifests(): Manifest[] {
    return yamlFilesUnder(k8s)
        .filter((f) => !f.endsWith("kustomization.yaml"))
        .flatMap((file) => readYamlDocs(file).map((obj) => ({ file, obj })));
}

function only(list: Manifest[], kind: string, name?: string): Obj {
    const found = list.filter((m) => m.obj.kind === kind && (name === undefined || m.obj.metadata?.name === name));
    assert.equal(found.length, 1, `exactly one ${kind}${name ? ` ${name}` : ""} (found ${found.map((m) => rel(root, m.file)).join(", ") || "none"})`);
    return found[0].obj;
}

/** a's every key and value is in b. */
function subset(a: Record<string, string>, b: Record<string, string>): boolean {
    return Object.entries(a).every(([k, v]) => b?.[k] === v);
}

/** A flag's value in an argument list ("--x v" or "--x=v"). */
function argValue(args: string[], flag: string): string | undefined {
    for (let i = 0; i < args.length; i++) {
        if (args[i] === flag) return args[i + 1];
        if (args[i].startsWith(flag + "=")) return args[i].slice(flag.length + 1);
    }
    return undefined;
}

/** The seconds a preStop hook waits: an exec `sleep N` or the sleep action. */
function preStopSeconds(container: Obj): number {
    const h = container.lifecycle?.preStop;
    assert.ok(h, "the container has a preStop hook");
    if (h.sleep) return Number(h.sleep.seconds);
    const cmd: string[] = h.exec?.command ?? [];
    const i = cmd.findIndex((c) => /(^|\/)sleep$/.test(c));
    assert.ok(i >= 0 && /^\d+$/.test(cmd[i + 1] ?? ""), `preStop is a sleep of whole seconds: ${JSON.stringify(cmd)}`);
    return Number(cmd[i + 1]);
}

// ---------------------------------------------------------------------------------------------------

describe("deploy: Kubernetes manifests", () => {
    const all = manifests();
    const deployment = () => only(all, "Deployment", "batchwise");
    const container = () => {
        const cs = deployment().spec.template.spec.containers;
        assert.equal(cs.length, 1);
        return cs[0] as Obj;
    };

    it("every manifest validates against the schema of its apiVersion and kind, with no field the schema does not know", async () => {
        assert.ok(all.length >= 10, `manifests found: ${all.length}`);
        const problems: string[] = [];
        for (const m of all) {
            try {
                for (const p of await validateManifest(m.obj)) problems.push(`${rel(root, m.file)} ${m.obj.kind}/${m.obj.metadata?.name}: ${p}`);
            } catch (e) {
                problems.push(`${rel(root, m.file)}: ${(e as Error).message}`);
            }
        }
        assert.deepEqual(problems, []);
        const kinds = new Set(all.map((m) => `${m.obj.apiVersion} ${m.obj.kind}`));
        for (const k of ["apps/v1 Deployment", "v1 Service", "policy/v1 PodDisruptionBudget", "keda.sh/v1alpha1 ScaledObject",
            "autoscaling/v2 HorizontalPodAutoscaler", "monitoring.coreos.com/v1 PodMonitor", "monitoring.coreos.com/v1 PrometheusRule", "v1 ConfigMap"]) {
            assert.ok(kinds.has(k), `a ${k} is among the manifests`);
        }
    });

    it("the validator refuses what it should: an unknown kind, a wrong type, a misspelt field", async () => {
        await assert.rejects(validateManifest({ apiVersion: "example.com/v1", kind: "Widget", metadata: { name: "w" } }), /unknown kinds are refused/);
        await assert.rejects(validateManifest({ apiVersion: "apps/v1", kind: "Widget", metadata: { name: "w" } }), /unknown kinds are refused/);
        const d = structuredClone(deployment());
        d.spec.replicas = "3";
        assert.match((await validateManifest(d)).join("\n"), /\/spec\/replicas/);
        const typo = structuredClone(deployment());
        const c = typo.spec.template.spec.containers[0];
        c.readinesProbe = c.readinessProbe;
        delete c.readinessProbe;
        assert.deepEqual(await validateManifest(typo), ["/spec/template/spec/containers/0/readinesProbe is not a field of apps/v1 Deployment"]);
        const so = structuredClone(only(all, "ScaledObject"));
        so.spec.triggers[0].metadata.threshold = 4;
        assert.match((await validateManifest(so)).join("\n"), /threshold/);
    });

    it("every kustomization lists files that exist, and kubectl kustomize renders each into valid objects", async (t) => {
        const dirs = kustomizationDirs(yamlFilesUnder(k8s));
        assert.ok(dirs.length >= 5);
        const listed = new Set(dirs.flatMap((d) => kustomizationFiles(d)));
        // the default install holds the workload, monitoring and one autoscaler
        const main = kustomizationFiles(k8s).map((f) => rel(root, f));
        for (const f of ["deploy/k8s/app/deployment.yaml", "deploy/k8s/monitoring/podmonitor.yaml", "deploy/k8s/monitoring/prometheusrule.yaml"]) assert.ok(main.includes(f), f);
        assert.equal(main.filter((f) => f.includes("/autoscaling/")).length, 1, `one autoscaler in the default install: ${main.join(", ")}`);
        // every manifest is in a kustomization, but the ones applied on their own (named so in their comments)
        const standalone = ["deploy/k8s/model-volume.example.yaml", "deploy/k8s/autoscaling/hpa/prometheus-adapter-config.yaml"];
        for (const m of all) assert.ok(listed.has(m.file) || standalone.includes(rel(root, m.file)), `${rel(root, m.file)} is in no kustomization`);
        if (!has("kubectl", ["version", "--client"])) {
            t.diagnostic("kubectl not found: the kustomizations were read, not rendered");
            return;
        }
        const ns = (readYamlDocs(join(k8s, "kustomization.yaml"))[0] as Obj).namespace;
        for (const dir of dirs) {
            const r = spawnSync("kubectl", ["kustomize", dir], { encoding: "utf8" });
            assert.equal(r.status, 0, `kubectl kustomize ${rel(root, dir)}: ${r.stderr}`);
            for (const obj of r.stdout.split(/^---$/m).map((s) => parseYaml(s)).filter(Boolean) as Obj[]) {
                assert.deepEqual(await validateManifest(obj), [], `${rel(root, dir)}: ${obj.kind}/${obj.metadata?.name}`);
                if (dir === k8s && obj.kind !== "Namespace") assert.equal(obj.metadata.namespace, ns, `${obj.kind} in namespace ${ns}`);
            }
            if (dir.endsWith("rollout/green")) {
                // the second track: its own names, and selectors that take only its own pods
                const objs = r.stdout.split(/^---$/m).map((s) => parseYaml(s)).filter(Boolean) as Obj[];
                const d = objs.find((o) => o.kind === "Deployment")!;
                assert.equal(d.metadata.name, "batchwise-green");
                const pods = d.spec.template.metadata.labels;
                assert.equal(pods["batchwise.dev/track"], "green");
                assert.ok(subset(d.spec.selector.matchLabels, pods) && d.spec.selector.matchLabels["batchwise.dev/track"] === "green");
                for (const s of objs.filter((o) => o.kind === "Service")) assert.equal(s.spec.selector["batchwise.dev/track"], "green", s.metadata.name);
                const pdb = objs.find((o) => o.kind === "PodDisruptionBudget")!;
                assert.equal(pdb.spec.selector.matchLabels["batchwise.dev/track"], "green");
            }
        }
    });

    it("the probes ask the container's port for the server's paths: startup and readiness /ready, liveness /health", () => {
        const c = container();
        const ports = new Map((c.ports as Obj[]).map((p) => [p.name, p.containerPort]));
        const port = (p: string | number) => (typeof p === "number" ? p : ports.get(p));
        const args: string[] = c.args;
        const served = Number(argValue(args, "--port") ?? 8000);
        assert.equal(argValue(args, "--host"), "0.0.0.0", "the server listens on every address in the pod");
        assert.equal(c.startupProbe?.httpGet?.path, "/ready", "startup covers load and warm-up");
        assert.equal(c.readinessProbe?.httpGet?.path, "/ready");
        assert.equal(c.livenessProbe?.httpGet?.path, "/health");
        for (const p of [c.startupProbe, c.readinessProbe, c.livenessProbe]) assert.equal(port(p.httpGet.port), served, `a probe on port ${p.httpGet.port}`);
        // the startup budget covers a long load; liveness cannot kill a loading pod (it starts after startup)
        assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 600, "the startup probe allows 10 minutes or more");
        // a dead or stopped replica is out of rotation within 30 s
        assert.ok(c.readinessProbe.periodSeconds * c.readinessProbe.failureThreshold <= 10);
        assert.ok(c.livenessProbe.periodSeconds * c.livenessProbe.failureThreshold + c.livenessProbe.timeoutSeconds <= 30);
        for (const s of all.filter((m) => m.obj.kind === "Service")) {
            for (const sp of s.obj.spec.ports) assert.equal(port(sp.targetPort), served, `Service ${s.obj.metadata.name} targets the served port`);
        }
        const pm = only(all, "PodMonitor");
        for (const e of pm.spec.podMetricsEndpoints) {
            assert.equal(port(e.port), served);
            assert.equal(e.path, "/metrics");
        }
    });

    it("the args are options that `batchwise serve` takes, with values it accepts", () => {
        const args: string[] = container().args;
        assert.equal(args[0], "serve");
        const help = spawnSync(process.execPath, [cli, "serve", "--help"], { encoding: "utf8" });
        assert.equal(help.status, 0, help.stderr);
        const known = new Set(help.stdout.match(/--[a-z][a-z0-9-]*/g));
        for (const a of args.filter((x) => x.startsWith("--"))) assert.ok(known.has(a.split("=")[0]), `batchwise serve has no option ${a}`);
        // the CLI parses the values (choices, integers) before it answers --help
        const parsed = spawnSync(process.execPath, [cli, ...args, "--help"], { encoding: "utf8" });
        assert.equal(parsed.status, 0, parsed.stderr);
        // the model is on a mounted volume
        const model = argValue(args, "--model")!.replace(/^[^=/]+=/, "");
        const mounts: Obj[] = container().volumeMounts;
        const mount = mounts.find((m) => model.startsWith(m.mountPath + "/"));
        assert.ok(mount, `${model} is under a volume mount`);
        const volumes: Obj[] = deployment().spec.template.spec.volumes;
        for (const m of mounts) assert.ok(volumes.some((v) => v.name === m.name), `volume ${m.name} exists`);
        const claim = volumes.find((v) => v.name === mount.name)!.persistentVolumeClaim?.claimName;
        assert.equal(claim, only(all, "PersistentVolumeClaim").metadata.name, "the example claim is the one mounted");
    });

    it("terminationGracePeriodSeconds outlasts preStop + --drain-timeout + the CLI's hard-exit margin", () => {
        const c = container();
        const drain = Number(argValue(c.args, "--drain-timeout") ?? 30);
        // the CLI exits by itself this long after the drain timeout, if the drain has not finished
        const src = readFileSync(join(root, "lib", "cli", "main.ts"), "utf8");
        const m = /drainTimeout \* 1000 \+ ([\d_]+)/.exec(src);
        assert.ok(m, "lib/cli/main.ts still has its hard-exit margin after the drain timeout");
        const margin = Number(m[1].replace(/_/g, "")) / 1000;
        const grace = deployment().spec.template.spec.terminationGracePeriodSeconds;
        const pre = preStopSeconds(c);
        assert.ok(pre >= 5, `preStop ${pre} s leaves time for endpoint removal to spread`);
        assert.ok(grace > pre + drain + margin, `grace ${grace} s > preStop ${pre} + drain ${drain} + margin ${margin}`);
    });

    it("selectors: the Deployment, its Services, PDB, spread and PodMonitor select the pods it makes", () => {
        const d = deployment();
        const pods: Record<string, string> = d.spec.template.metadata.labels;
        const sel: Record<string, string> = d.spec.selector.matchLabels;
        assert.ok(subset(sel, pods), "the Deployment's selector matches its template");
        for (const s of all.filter((m) => m.obj.kind === "Service").map((m) => m.obj)) {
            assert.deepEqual(s.spec.selector, sel, `Service ${s.metadata.name} selects the Deployment's pods, no other track`);
        }
        assert.deepEqual(only(all, "PodDisruptionBudget").spec.selector.matchLabels, sel);
        for (const c of d.spec.template.spec.topologySpreadConstraints ?? []) assert.ok(subset(c.labelSelector.matchLabels, pods));
        const pm = only(all, "PodMonitor");
        assert.ok(subset(pm.spec.selector.matchLabels, pods), "the PodMonitor scrapes the pods");
        assert.equal(pods[pm.spec.jobLabel], "batchwise", "the job label the rules and dashboard select (job=\"batchwise\")");
        for (const l of pm.spec.podTargetLabels ?? []) assert.ok(l in pods, `pod label ${l} exists`);
        const headless = all.map((m) => m.obj).filter((o) => o.kind === "Service" && o.spec.clusterIP === "None");
        assert.equal(headless.length, 1, "a headless Service for balancers that resolve pods");
        assert.notEqual(headless[0].spec.publishNotReadyAddresses, true, "not-ready pods stay out of DNS");
    });

    it("each replica asks for 2 GPUs and splits the model over them", () => {
        const c = container();
        assert.equal(Number(c.resources.limits["nvidia.com/gpu"]), 2);
        if (c.resources.requests?.["nvidia.com/gpu"] !== undefined) assert.equal(Number(c.resources.requests["nvidia.com/gpu"]), 2);
        assert.ok(c.resources.limits.memory, "a memory limit");
        assert.equal(argValue(c.args, "--gpu-layers"), "-1");
        assert.equal(argValue(c.args, "--tensor-split")?.split(",").length, 2);
        assert.ok(["layer", "tensor", "row"].includes(argValue(c.args, "--split-mode")!));
        const ctx = Number(argValue(c.args, "--ctx-size"));
        assert.ok(ctx >= 131072, `--ctx-size ${ctx} holds a 128K-token request`);
        const sc = deployment().spec.template.spec.securityContext;
        assert.ok(sc.runAsNonRoot && sc.runAsUser > 0);
    });

    it("the autoscalers: KEDA and the HPA scale the Deployment on the same queue metric and target", () => {
        const so = only(all, "ScaledObject");
        const hpa = only(all, "HorizontalPodAutoscaler");
        const d = deployment();
        assert.equal(so.spec.scaleTargetRef.name, d.metadata.name);
        assert.equal(hpa.spec.scaleTargetRef.name, d.metadata.name);
        assert.equal(hpa.spec.scaleTargetRef.kind, "Deployment");
        assert.equal(so.spec.minReplicaCount, hpa.spec.minReplicas);
        assert.equal(so.spec.maxReplicaCount, hpa.spec.maxReplicas);
        assert.ok(so.spec.minReplicaCount >= 2, "never below 2 replicas (nor to zero)");
        const trigger = so.spec.triggers[0];
        assert.equal(trigger.type, "prometheus");
        // the schema takes any key in a trigger's metadata: a misspelt one would be dropped by KEDA's scaler
        const promKeys = ["serverAddress", "query", "threshold", "activationThreshold", "ignoreNullValues", "namespace", "customHeaders", "queryParameters", "unsafeSsl", "timeout", "authModes"];
        for (const k of Object.keys(trigger.metadata)) assert.ok(promKeys.includes(k), `KEDA's prometheus scaler has no metadata key ${k}`);
        assert.ok(trigger.metadata.serverAddress && trigger.metadata.query && trigger.metadata.threshold);
        assert.deepEqual(queryNames(trigger.metadata.query).selectors.map((s) => s.metric), ["vllm:num_requests_waiting"]);
        const ns = (readYamlDocs(join(k8s, "kustomization.yaml"))[0] as Obj).namespace;
        assert.match(trigger.metadata.query, new RegExp(`namespace="${ns}"`), "the KEDA query selects the namespace the manifests go to");
        const metric = hpa.spec.metrics[0];
        assert.equal(metric.type, "Pods");
        assert.equal(Number(metric.pods.target.averageValue), Number(trigger.metadata.threshold));
        const adapter = parseYaml(only(all, "ConfigMap", "adapter-config").data["config.yaml"]);
        const rule = adapter.rules.find((r: Obj) => r.name?.as === metric.pods.metric.name);
        assert.ok(rule, `prometheus-adapter serves ${metric.pods.metric.name}`);
        assert.deepEqual(queryNames(rule.seriesQuery).selectors.map((s) => s.metric), ["vllm:num_requests_waiting"]);
        assert.ok(new RegExp(rule.name.matches).test("vllm:num_requests_waiting"));
        assert.deepEqual(Object.keys(rule.resources.overrides).sort(), ["namespace", "pod"]);
        // the adapter's query is the KEDA query's, per pod
        assert.match(rule.metricsQuery, /avg_over_time\(<<\.Series>>\{<<\.LabelMatchers>>\}\[1m\]\)/);
        assert.match(trigger.metadata.query, /avg_over_time\(vllm:num_requests_waiting\{[^}]*\}\[1m\]\)/);
        assert.deepEqual(so.spec.advanced.horizontalPodAutoscalerConfig.behavior, hpa.spec.behavior, "the same scaling behaviour");
    });
});

// ---------------------------------------------------------------------------------------------------

const alertsFile = join(deploy, "prometheus", "alerts.yaml");
const alertsTestFile = join(deploy, "prometheus", "alerts.test.yaml");

describe("deploy: Prometheus rules", () => {
    const promtool = has("promtool", ["--version"]);

    it("the PrometheusRule holds exactly the groups of alerts.yaml", () => {
        const rules = parseYaml(readFileSync(alertsFile, "utf8"));
        const pr = readYamlDocs(join(k8s, "monitoring", "prometheusrule.yaml"))[0];
        assert.deepEqual(pr.spec.groups, rules.groups, "run node deploy/prometheus/sync-prometheusrule.mjs after editing alerts.yaml");
    });

    it("the alerts the deployment needs are there, each with a severity and a summary", () => {
        const rules: Obj[] = parseYaml(readFileSync(alertsFile, "utf8")).groups.flatMap((g: Obj) => g.rules);
        const names = rules.map((r) => r.alert);
        for (const a of ["BatchwiseHigh5xxRatio", "BatchwiseTTFTHigh", "BatchwiseQueueBacklog", "BatchwiseReplicaNotReady", "BatchwiseEngineStopped", "BatchwiseTargetDown"]) {
            assert.ok(names.includes(a), a);
        }
        for (const r of rules) {
            assert.ok(["warning", "critical"].includes(r.labels?.severity), `${r.alert} severity`);
            assert.ok(r.annotations?.summary, `${r.alert} summary`);
        }
        const ttft = rules.find((r) => r.alert === "BatchwiseTTFTHigh")!;
        assert.match(ttft.expr, /histogram_quantile\(0\.95,[\s\S]*vllm:time_to_first_token_seconds_bucket[\s\S]*\) > 0\.5\s*$/);
    });

    it("promtool check rules accepts the rules file", (t) => {
        if (!promtool) {
            t.skip("promtool not found (Debian package prometheus): the rules were not checked by Prometheus");
            return;
        }
        const r = spawnSync("promtool", ["check", "rules", alertsFile], { encoding: "utf8" });
        assert.equal(r.status, 0, r.stdout + r.stderr);
        assert.match(r.stdout, /SUCCESS: \d+ rules found/);
    });

    it("promtool test rules: the 5xx, TTFT and replica alerts fire and stay silent when they should", (t) => {
        if (!promtool) {
            t.skip("promtool not found (Debian package prometheus): the rule unit tests did not run");
            return;
        }
        const tests = parseYaml(readFileSync(alertsTestFile, "utf8"));
        const tested = (alert: string, firing: boolean) =>
            tests.tests.some((c: Obj) => (c.alert_rule_test ?? []).some((a: Obj) => a.alertname === alert && (a.exp_alerts?.length > 0) === firing));
        for (const a of ["BatchwiseHigh5xxRatio", "BatchwiseTTFTHigh"]) {
            assert.ok(tested(a, true) && tested(a, false), `${a} is tested firing and silent`);
        }
        const r = spawnSync("promtool", ["test", "rules", alertsTestFile], { encoding: "utf8", cwd: join(deploy, "prometheus") });
        assert.equal(r.status, 0, r.stdout + r.stderr);
        assert.match(r.stdout, /SUCCESS/);
    });
});

// ---------------------------------------------------------------------------------------------------

const dashboardFile = join(deploy, "grafana", "dashboard.json");

describe("deploy: Grafana dashboard", () => {
    it("is what deploy/grafana/build-dashboard.mjs writes", () => {
        const dir = mkdtempSync(join(tmpdir(), "batchwise-dashboard-"));
        try {
            const out = join(dir, "dashboard.json");
            const r = spawnSync(process.execPath, [join(deploy, "grafana", "build-dashboard.mjs"), out], { encoding: "utf8" });
            assert.equal(r.status, 0, r.stderr);
            assert.equal(readFileSync(dashboardFile, "utf8"), readFileSync(out, "utf8"), "run node deploy/grafana/build-dashboard.mjs after editing it");
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it("is a dashboard: unique panel ids, panels in 24 columns without overlap, every query on the Prometheus variable", () => {
        const d = JSON.parse(readFileSync(dashboardFile, "utf8"));
        assert.equal(typeof d.title, "string");
        assert.equal(typeof d.uid, "string");
        assert.ok(d.schemaVersion >= 36);
        const vars = new Map((d.templating.list as Obj[]).map((v) => [v.name, v]));
        assert.equal(vars.get("datasource")?.type, "datasource");
        assert.equal(vars.get("datasource")?.query, "prometheus");
        const ids = new Set<number>();
        const cells = new Set<string>();
        for (const p of d.panels as Obj[]) {
            assert.ok(!ids.has(p.id), `panel id ${p.id} is unique`);
            ids.add(p.id);
            const g = p.gridPos;
            assert.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24, `${p.title}: within 24 columns`);
            for (let x = g.x; x < g.x + g.w; x++) {
                for (let y = g.y; y < g.y + g.h; y++) {
                    assert.ok(!cells.has(`${x},${y}`), `${p.title}: overlaps another panel at ${x},${y}`);
                    cells.add(`${x},${y}`);
                }
            }
            if (p.type === "row") continue;
            assert.ok(p.targets?.length > 0, `${p.title} has queries`);
            assert.equal(p.datasource?.uid, "${datasource}");
            const refIds = new Set<string>();
            for (const tg of p.targets as Obj[]) {
                assert.equal(tg.datasource?.uid, "${datasource}");
                assert.ok(!refIds.has(tg.refId), `${p.title}: refId ${tg.refId} unique`);
                refIds.add(tg.refId);
                for (const v of tg.expr.matchAll(/\$\{?([a-zA-Z_]\w*)/g)) {
                    if (!v[1].startsWith("__")) assert.ok(vars.has(v[1]), `${p.title}: variable $${v[1]} is defined`);
                }
            }
        }
        const titles = (d.panels as Obj[]).map((p) => p.title.toLowerCase()).join("\n");
        for (const w of ["tokens/s", "time to first token", "inter-token", "end-to-end", "waiting", "running", "kv cache", "prefix cache", "5xx", "rejections", "ready"]) {
            assert.ok(titles.includes(w), `a panel on ${w}`);
        }
    });
});

// ---------------------------------------------------------------------------------------------------

/** A query to check and where it comes from. */
interface Query {
    where: string;
    expr: string;
    legend?: string;
}

function dashboardQueries(): Query[] {
    const d = JSON.parse(readFileSync(dashboardFile, "utf8"));
    const out: Query[] = [];
    for (const p of d.panels as Obj[]) {
        for (const t of p.targets ?? []) out.push({ where: `dashboard panel '${p.title}' ${t.refId}`, expr: grafanaToPromql(t.expr), legend: t.legendFormat });
    }
    for (const v of d.templating.list as Obj[]) {
        if (v.type !== "query") continue;
        const q = typeof v.query === "string" ? v.query : v.query.query;
        const m = /^label_values\((.*),\s*([a-zA-Z_]\w*)\)$/.exec(q);
        assert.ok(m, `variable ${v.name}: a label_values(query, label) query`);
        out.push({ where: `dashboard variable ${v.name}`, expr: m[1], legend: `{{${m[2]}}}` });
    }
    return out;
}

function ruleQueries(): Query[] {
    const rules: Obj[] = parseYaml(readFileSync(alertsFile, "utf8")).groups.flatMap((g: Obj) => g.rules);
    return rules.map((r) => ({
        where: `alert ${r.alert}`, expr: r.expr,
        // the annotations' {{ $labels.x }} are labels of the result
        legend: Object.values(r.annotations ?? {}).join(" ").replace(/\{\{\s*\$labels\.(\w+)\s*\}\}/g, "{{$1}}").replace(/\{\{[^}]*\$value[^}]*\}\}/g, ""),
    }));
}

function autoscalingQueries(all: Manifest[]): Query[] {
    const out: Query[] = [];
    for (const m of all) {
        if (m.obj.kind === "ScaledObject") for (const t of m.obj.spec.triggers) out.push({ where: `KEDA ${m.obj.metadata.name}`, expr: t.metadata.query });
        if (m.obj.kind === "ConfigMap" && m.obj.metadata.name === "adapter-config") {
            for (const r of parseYaml(m.obj.data["config.yaml"]).rules as Obj[]) {
                out.push({ where: "prometheus-adapter seriesQuery", expr: r.seriesQuery });
                const series = queryNames(r.seriesQuery).selectors[0].metric;
                out.push({ where: "prometheus-adapter metricsQuery", expr: adapterToPromql(r.metricsQuery, series) });
            }
        }
    }
    return out;
}

/** The labels Prometheus gives every series of a target scraped through the PodMonitor. */
function targetLabels(all: Manifest[]): Set<string> {
    const pm = only(all, "PodMonitor");
    const sanitized = (pm.spec.podTargetLabels ?? []).map((l: string) => l.replace(/[^a-zA-Z0-9_]/g, "_"));
    return new Set(["job", "instance", "namespace", "pod", "container", "endpoint", ...sanitized]);
}

/** The problems of one query against what the server exports (empty: all names exported). */
function checkQuery(q: Query, series: Map<string, Exported>, declaredOnly: Set<string>, target: Set<string>): string[] {
    const problems: string[] = [];
    let names;
    try {
        names = queryNames(q.expr);
    } catch (e) {
        return [`${q.where}: ${(e as Error).message}`];
    }
    if (names.selectors.length === 0) problems.push(`${q.where}: queries no metric`);
    const universe = new Set(target);
    for (const s of names.selectors) {
        // up is Prometheus's own series for every target, with the target's labels alone
        const e = s.metric === "up" ? { labels: new Set<string>() } : series.get(s.metric);
        if (!e) {
            problems.push(declaredOnly.has(s.metric)
                ? `${q.where}: ${s.metric} is declared but had no series after the test's requests`
                : `${q.where}: ${s.metric} is not a series the server exports`);
            continue;
        }
        for (const l of e.labels) universe.add(l);
        for (const l of s.labels) if (!e.labels.has(l) && !target.has(l)) problems.push(`${q.where}: ${s.metric} has no label ${l}`);
    }
    for (const l of names.grouping) if (!universe.has(l)) problems.push(`${q.where}: groups by ${l}, a label none of its series has`);
    for (const m of (q.legend ?? "").matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        if (!universe.has(m[1])) problems.push(`${q.where}: names the label ${m[1]}, which none of its series has`);
    }
    return problems;
}

describe("deploy: every metric queried is one the server exports", () => {
    let server: BatchwiseServer;
    let text = "";

    before(async () => {
        server = await createServer({
            models: [{ name: "coder", path: await modelPath(tinyQwen), options: { gpuLayers, contextSize: 2048, maxRunning: 4, batchTokens: 256 } }],
            // no warm-up: it changes no metric name (its counters are left out), and takes seconds here
            port: 0, logger: false, warmup: false,
        });
        await server.ready();
        const post = (path: string, body: unknown, signal?: AbortSignal) =>
            fetch(server.url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });
        // a completion, a streamed chat, a request for a model the server does not have (a rejection),
        // and a stream whose client goes away (a disconnect): every labelled series then exists
        assert.equal((await post("/v1/completions", { model: "coder", prompt: "def f(x):", max_tokens: 4, temperature: 0 })).status, 200);
        const chat = await post("/v1/chat/completions", { model: "coder", messages: [{ role: "user", content: "hi" }], max_tokens: 4, stream: true });
        assert.equal(chat.status, 200);
        await chat.text();
        assert.equal((await post("/v1/completions", { model: "nope", prompt: "x", max_tokens: 1 })).status, 404);
        const ac = new AbortController();
        const gone = await post("/v1/completions", { model: "coder", prompt: "x", max_tokens: 1500, ignore_eos: true, stream: true }, ac.signal);
        const reader = gone.body!.getReader();
        await reader.read();
        ac.abort();
        await reader.read().catch(() => undefined);
        const t0 = Date.now();
        for (;;) {
            text = await (await fetch(server.url + "/metrics")).text();
            if (/^batchwise_client_disconnects_total\{/m.test(text)) break;
            assert.ok(Date.now() - t0 < 10_000, "the disconnect was counted");
            await new Promise((r) => setTimeout(r, 20));
        }
    });
    after(async () => {
        await server?.close();
    });

    it("reads the exposition: histograms as _bucket/_sum/_count with their bounds, labelled series present", () => {
        const { series } = exportedSeries(text);
        const ttft = series.get("vllm:time_to_first_token_seconds_bucket");
        assert.ok(ttft && ttft.type === "histogram" && ttft.le.has("0.5") && ttft.le.has("+Inf"));
        assert.ok(series.has("vllm:time_to_first_token_seconds_count") && !series.has("vllm:time_to_first_token_seconds"));
        assert.deepEqual([...series.get("batchwise_http_requests_total")!.labels].sort(), ["route", "status"]);
        assert.ok(series.get("batchwise_requests_rejected_total")!.labels.has("reason"));
    });

    it("the dashboard, the alert rules and the autoscalers query only exported metrics, by labels they have", () => {
        const { series, declaredOnly } = exportedSeries(text);
        const all = manifests();
        const target = targetLabels(all);
        const queries = [...dashboardQueries(), ...ruleQueries(), ...autoscalingQueries(all)];
        assert.ok(queries.length >= 40, `queries found: ${queries.length}`);
        const problems = queries.flatMap((q) => checkQuery(q, series, declaredOnly, target));
        assert.deepEqual(problems, []);
        // and the check can fail: a name the server does not export, a label a series lacks
        const bad = checkQuery({ where: "probe", expr: 'sum by (pod) (vllm:num_requests_queued{job="batchwise"}) + rate(vllm:prompt_tokens_total{reason="x"}[5m])' }, series, declaredOnly, target);
        assert.deepEqual(bad, ["probe: vllm:num_requests_queued is not a series the server exports", "probe: vllm:prompt_tokens_total has no label reason"]);
    });

    it("the rule unit tests feed series the server exports, with its histogram bounds", () => {
        const { series, declaredOnly } = exportedSeries(text);
        const target = targetLabels(manifests());
        const tests = parseYaml(readFileSync(alertsTestFile, "utf8"));
        const problems: string[] = [];
        let n = 0;
        for (const c of tests.tests as Obj[]) {
            for (const s of c.input_series as Obj[]) {
                n++;
                problems.push(...checkQuery({ where: `alerts.test.yaml series ${s.series}`, expr: s.series }, series, declaredOnly, target));
                const le = /le="([^"]*)"/.exec(s.series)?.[1];
                const name = queryNames(s.series).selectors[0].metric;
                if (le !== undefined && !series.get(name)?.le.has(le)) problems.push(`alerts.test.yaml: ${name} has no bucket le="${le}"`);
            }
        }
        assert.ok(n >= 10);
        assert.deepEqual(problems, []);
    });
});

// ---------------------------------------------------------------------------------------------------

interface Instruction {
    op: string;
    args: string;
}

/** A Dockerfile's stages: each FROM and the instructions after it (continuations joined, comments out). */
function dockerStages(text: string): { globals: Map<string, string>; stages: { from: string; name?: string; body: Instruction[] }[] } {
    const lines: string[] = [];
    let cur = "";
    for (const raw of text.split("\n")) {
        const line = raw.trim();
        if (line.startsWith("#") || (line === "" && cur === "")) continue;
        if (line.endsWith("\\")) {
            cur += line.slice(0, -1) + " ";
            continue;
        }
        lines.push(cur + line);
        cur = "";
    }
    const globals = new Map<string, string>();
    const stages: { from: string; name?: string; body: Instruction[] }[] = [];
    for (const l of lines.filter((x) => x !== "")) {
        const sp = l.indexOf(" ");
        const op = l.slice(0, sp).toUpperCase(), args = l.slice(sp + 1).trim();
        if (op === "FROM") {
            const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)!;
            const image = m[1].replace(/\$\{(\w+)\}/g, (_, v) => globals.get(v) ?? `\${${v}}`);
            stages.push({ from: image, name: m[2], body: [] });
        } else if (stages.length === 0) {
            if (op === "ARG") {
                const [k, v] = args.split("=");
                globals.set(k, v ?? "");
            }
        } else {
            stages.at(-1)!.body.push({ op, args });
        }
    }
    return { globals, stages };
}

describe("deploy: Dockerfile", () => {
    const file = join(deploy, "docker", "Dockerfile");
    const { globals, stages } = dockerStages(readFileSync(file, "utf8"));
    const build = stages.find((s) => s.name === "build")!;
    const runtime = stages.at(-1)!;
    const ops = (s: typeof runtime, op: string) => s.body.filter((i) => i.op === op).map((i) => i.args);
    const json = (s: string) => JSON.parse(s) as string[];

    it("builds the CUDA addon in a devel image of the CUDA major the project builds with, and prunes dev dependencies", () => {
        assert.ok(build, "a stage named build");
        const major = /CUDA (\d+)\.\d+, sm_/.exec(readFileSync(join(root, "docs", "building.md"), "utf8"))?.[1];
        assert.ok(major, "docs/building.md names the CUDA version of its builds");
        assert.equal(globals.get("CUDA_VERSION")?.split(".")[0], major);
        assert.match(build.from, new RegExp(`^nvidia/cuda:${major}\\.[\\d.]+-devel-`));
        const run = ops(build, "RUN").join("\n");
        assert.match(run, /BATCHWISE_CUDA=1 .*npm ci/);
        assert.match(run, /npm prune --omit=dev/);
        // Node from the image's build satisfies package.json's engines
        const engines = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).engines.node as string;
        const have = globals.get("NODE_VERSION")!.split(".").map(Number);
        const atLeast = (v: number[]) => have[0] > v[0] || (have[0] === v[0] && (have[1] > v[1] || (have[1] === v[1] && have[2] >= v[2])));
        // each alternative of the range: "^a.b.c" (the same major, at least a.b.c) or ">=a.b.c"
        const ok = engines.split("||").map((r) => r.trim()).some((r) => {
            const m = /^(\^|>=)(\d+)\.(\d+)\.(\d+)$/.exec(r);
            assert.ok(m, `an engines range this test reads: ${r}`);
            const v = m.slice(2).map(Number);
            return atLeast(v) && (m[1] === ">=" || have[0] === v[0]);
        });
        assert.ok(ok, `Node ${have.join(".")} for ${engines}`);
        // what the build copies from the context gets through the .dockerignore, and exists
        const ignore = readFileSync(join(deploy, "docker", "Dockerfile.dockerignore"), "utf8").split("\n").filter((l) => l && !l.startsWith("#"));
        assert.equal(ignore[0], "*", "the context is an allowlist");
        for (const c of ops(build, "COPY").filter((a) => !a.startsWith("--from"))) {
            for (const src of c.split(/\s+/).slice(0, -1)) {
                assert.ok(existsSync(join(root, src)), `${src} exists`);
                assert.ok(ignore.includes(`!${src}`) || ignore.includes(`!${src}/`), `${src} is let through the .dockerignore`);
            }
        }
    });

    it("runs as a non-root user on the CUDA runtime image: serve --host 0.0.0.0 on the port it exposes and the Deployment uses", () => {
        assert.match(runtime.from, /^nvidia\/cuda:[\d.]+-runtime-/, "the runtime image has cuBLAS (the base image does not)");
        assert.equal(runtime.from.split(":")[1].split("-")[0], build.from.split(":")[1].split("-")[0], "build and runtime on the same CUDA version");
        const user = ops(runtime, "USER").at(-1);
        assert.ok(user && !/^(root|0)(:|$)/.test(user), `USER ${user}`);
        const deployment = readYamlDocs(join(k8s, "app", "deployment.yaml"))[0];
        assert.equal(Number(user.split(":")[0]), deployment.spec.template.spec.securityContext.runAsUser, "the Deployment runs as the image's user");
        const exposed = Number(ops(runtime, "EXPOSE").at(-1));
        const cmd = json(ops(runtime, "CMD").at(-1)!);
        const entry = json(ops(runtime, "ENTRYPOINT").at(-1)!);
        assert.deepEqual(cmd.slice(0, 1), ["serve"]);
        assert.equal(argValue(cmd, "--host"), "0.0.0.0");
        assert.equal(Number(argValue(cmd, "--port")), exposed);
        assert.equal(deployment.spec.template.spec.containers[0].ports[0].containerPort, exposed);
        const bin = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).bin.batchwise as string;
        assert.deepEqual(entry, ["node", `/app/${bin}`]);
        const copied = ops(runtime, "COPY").join("\n");
        for (const p of ["build/Release/batchwise.node", "dist/lib", "node_modules", "package.json"]) assert.ok(copied.includes(`/src/${p}`), `the runtime gets ${p}`);
        const hc = ops(runtime, "HEALTHCHECK").at(-1);
        if (hc) assert.match(hc, new RegExp(`127\\.0\\.0\\.1:${exposed}/health`), "a HEALTHCHECK asks /health (liveness) on the exposed port");
    });

    it("docker build --check, where a Docker daemon answers", (t) => {
        if (!has("docker", ["info"])) {
            t.skip("no Docker daemon reachable: the Dockerfile was checked by this test's reading only, not built or linted by BuildKit");
            return;
        }
        const r = spawnSync("docker", ["build", "--check", "-f", file, root], { encoding: "utf8" });
        assert.equal(r.status, 0, r.stdout + r.stderr);
    });
});
