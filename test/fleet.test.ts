// The fleet test, short version (the long one, with the prefix-affinity measurement: npm run test:fleet).
// Three `batchwise serve` replicas (the demo model) on loopback behind nginx and then HAProxy, both started
// from the shipped configs in deploy/ (rendered with loopback ports), under a closed loop of streamed and
// non-streamed requests through a SIGKILL, a SIGTERM drain, a rolling restart and a 90/10 split.
// Also: the shipped configs differ from the tested ones only in addresses, ports, weights and paths, carry
// the settings the fleet depends on, and deploy/envoy/envoy.yaml (not run: no envoy here) has them too.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { after, before, describe, it } from "node:test";
import { parse } from "yaml";
import type { Balancer } from "./fleet/balancers.js";
import { startFake, type Fake, type FakeKind } from "./fleet/fakes.js";
import { send, type RequestRecord } from "./fleet/load.js";
import { sleep } from "./fleet/proc.js";
import { renderHaproxy, renderNginx, sameApartFromSites } from "./fleet/render.js";
import { fleetTable } from "./fleet/report.js";
import { failures, makeBalancer, runFleet, SHORT, type BalancerFigures, type FleetReport, type PhaseFigures } from "./fleet/scenario.js";

const root = join(import.meta.dirname, "..", "..");
const deploy = (p: string) => readFileSync(join(root, "deploy", p), "utf8");
const replicas = [1, 2, 3].map((i) => ({ name: `r${i}`, host: "127.0.0.1", port: 40000 + i, weight: i === 3 ? 9 : 1 }));
const nginxBin = makeBalancer("nginx", root, "/nonexistent").binary;
const haproxyBin = makeBalancer("haproxy", root, "/nonexistent").binary;

/** A directive's value(s): the text after `name` on the lines that start with it (comments dropped). */
function directives(text: string, name: string): string[] {
    return text.split("\n").map((l) => l.replace(/#.*$/, "").trim().replace(/;$/, "")).filter((l) => l === name || l.startsWith(`${name} `)).map((l) => l.slice(name.length).trim());
}

/** The text without its comments. */
function code(text: string): string {
    return text.split("\n").map((l) => l.replace(/#.*$/, "")).join("\n");
}

function seconds(v: string): number {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
    assert.ok(m, `a duration: ${v}`);
    const n = Number(m[1]);
    return m[2] === "ms" ? n / 1000 : m[2] === "m" ? n * 60 : m[2] === "h" ? n * 3600 : n;
}

describe("deploy: balancer configs", () => {
    it("nginx.conf as the test runs it is the shipped text apart from replicas, weights, port and paths", () => {
        const shipped = deploy("nginx/nginx.conf");
        const rendered = renderNginx(shipped, { replicas, port: 48080, dir: "/tmp/x" });
        assert.deepEqual(sameApartFromSites(shipped, rendered), { same: true });
        assert.match(rendered, /server 127\.0\.0\.1:40003 weight=9 max_fails=1 fail_timeout=\d+s;/);
        assert.doesNotMatch(code(rendered), /10\.0\.0\.|\/var\/|\/run\//, "every site value replaced");
        // and the check catches a change elsewhere
        assert.equal(sameApartFromSites(shipped, rendered.replace("proxy_buffering off", "proxy_buffering on")).same, false);
    });

    it("haproxy.cfg as the test runs it is the shipped text apart from replicas, weights, port and paths", () => {
        const shipped = deploy("haproxy/haproxy.cfg");
        const rendered = renderHaproxy(shipped, { replicas, port: 48080, dir: "/tmp/x" });
        assert.deepEqual(sameApartFromSites(shipped, rendered), { same: true });
        assert.match(rendered, /server r3 127\.0\.0\.1:40003 weight 9 track batchwise\/r3/);
        assert.doesNotMatch(code(rendered), /10\.0\.0\.|\/run\//, "every site value replaced");
        assert.equal(sameApartFromSites(shipped, rendered.replace("retry-on conn-failure", "retry-on none")).same, false);
    });

    it("nginx.conf: retries on errors and 503 for any method, passive checks, no response buffering, long read timeouts, keep-alive, affinity by session", () => {
        const c = deploy("nginx/nginx.conf");
        const next = directives(c, "proxy_next_upstream")[0].split(/\s+/);
        for (const w of ["error", "timeout", "http_503", "non_idempotent"]) assert.ok(next.includes(w), `proxy_next_upstream has ${w}`);
        assert.ok(!next.includes("http_429"), "a full queue (429) is not retried");
        assert.ok(Number(directives(c, "proxy_next_upstream_tries")[0]) >= 3);
        assert.deepEqual(directives(c, "proxy_buffering"), ["off"]);
        assert.deepEqual(directives(c, "proxy_request_buffering"), ["on"], "a retry resends the body: it must be buffered");
        assert.ok(seconds(directives(c, "proxy_read_timeout")[0]) >= 600);
        assert.ok(seconds(directives(c, "proxy_connect_timeout")[0]) <= 5);
        assert.deepEqual(directives(c, "proxy_http_version"), ["1.1"]);
        assert.ok(directives(c, "proxy_set_header").includes('Connection ""'));
        for (const k of directives(c, "keepalive_timeout")) assert.ok(seconds(k) < 72, "upstream idle connections close before the server's 72 s");
        assert.deepEqual(directives(c, "hash"), ["$http_x_session_id consistent"]);
        // round robin (no method directive in the default pool): weights split requests as they say
        assert.deepEqual(directives(c, "least_conn"), []);
        for (const s of directives(c, "server").filter((s) => /:\d+/.test(s))) assert.match(s, /max_fails=\d+ fail_timeout=\d+s/);
        assert.deepEqual(directives(c, "client_max_body_size"), ["16m"], "the server's --body-limit");
    });

    it("haproxy.cfg: checks on /ready, L7 retries with redispatch, buffered requests, long timeouts, no Nagle delay on streams, affinity by session", () => {
        const c = deploy("haproxy/haproxy.cfg");
        assert.deepEqual(directives(c, "option httpchk"), ["GET /ready"]);
        assert.deepEqual(directives(c, "http-check expect"), ["status 200"]);
        const retryOn = directives(c, "retry-on")[0].split(/\s+/);
        for (const w of ["conn-failure", "empty-response", "503"]) assert.ok(retryOn.includes(w), `retry-on has ${w}`);
        assert.ok(Number(directives(c, "retries")[0]) >= 2);
        assert.deepEqual(directives(c, "option redispatch"), ["1"], "every retry on another replica");
        assert.deepEqual(directives(c, "option http-buffer-request"), [""], "L7 retries replay a buffered request");
        assert.ok(Number(directives(c, "tune.bufsize")[0]) >= 16384);
        assert.deepEqual(directives(c, "option http-no-delay"), [""]);
        for (const t of ["timeout server", "timeout client"]) assert.ok(seconds(directives(c, t)[0]) >= 600, t);
        assert.ok(seconds(directives(c, "timeout connect")[0]) <= 5);
        assert.deepEqual(directives(c, "balance"), ["roundrobin", "hdr(x-session-id)"]);
        assert.deepEqual(directives(c, "hash-type"), ["consistent"]);
        assert.match(directives(c, "default-server")[0], /\bcheck\b.*\binter 1s\b.*\bfall 2\b/);
    });

    it("envoy.yaml (not run here: no envoy binary): checks on /ready, retries on connect-failure, reset and 503, ring hash on the session header, no request timeout", () => {
        const doc = parse(deploy("envoy/envoy.yaml")) as any;
        const hcm = doc.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
        assert.equal(hcm["@type"], "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
        assert.ok(seconds(hcm.stream_idle_timeout) >= 600);
        assert.equal(hcm.http_filters.at(-1).name, "envoy.filters.http.router");
        const vh = hcm.route_config.virtual_hosts[0];
        const retry = vh.retry_policy;
        assert.deepEqual(retry.retry_on.split(",").sort(), ["connect-failure", "reset", "retriable-status-codes"]);
        assert.deepEqual(retry.retriable_status_codes, [503]);
        assert.ok(retry.num_retries >= 2);
        assert.equal(retry.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts");
        const [byHeader, rest] = vh.routes;
        assert.deepEqual(byHeader.match.headers, [{ name: "x-session-id", present_match: true }]);
        assert.equal(byHeader.route.cluster, "batchwise_affinity");
        assert.deepEqual(byHeader.route.hash_policy, [{ header: { header_name: "x-session-id" } }]);
        assert.equal(rest.route.cluster, "batchwise");
        for (const r of vh.routes) {
            assert.equal(seconds(r.route.timeout), 0, "no bound on a whole request: a stream lasts its generation");
            assert.ok(seconds(r.route.idle_timeout) >= 600);
        }
        const clusters = Object.fromEntries(doc.static_resources.clusters.map((c: any) => [c.name, c]));
        assert.equal(clusters.batchwise.lb_policy, "LEAST_REQUEST");
        assert.equal(clusters.batchwise_affinity.lb_policy, "RING_HASH");
        const endpoints = (c: any) => c.load_assignment.endpoints[0].lb_endpoints.map((e: any) => e.endpoint.address.socket_address);
        assert.deepEqual(endpoints(clusters.batchwise_affinity), endpoints(clusters.batchwise), "both clusters list the same replicas");
        for (const c of Object.values(clusters) as any[]) {
            assert.equal(c.load_assignment.cluster_name, c.name);
            const hc = c.health_checks[0];
            assert.equal(hc.http_health_check.path, "/ready");
            assert.ok(seconds(hc.interval) <= 2 && hc.unhealthy_threshold <= 3);
            assert.ok(seconds(c.connect_timeout) <= 5);
            const http = c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            assert.ok(seconds(http.common_http_protocol_options.idle_timeout) < 72, "idle upstream connections close before the server's 72 s");
            assert.ok(http.explicit_http_config.http_protocol_options, "HTTP/1.1 to the replicas");
        }
        // every typed config names a v3 type
        const types: string[] = [];
        JSON.stringify(doc, (k, v) => (k === "@type" && types.push(v), v));
        for (const t of types) assert.match(t, /^type\.googleapis\.com\/envoy\.[a-z0-9_.]+\.v3\.[A-Za-z]+$/);
    });
});

/** POSTs a stream request and the delay of each event: when it arrived minus when the fake sent it. */
function streamDelays(url: string): Promise<{ delays: number[]; done: boolean }> {
    return new Promise((resolve, reject) => {
        const req = request(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
            const delays: number[] = [];
            let buf = "";
            let done = false;
            res.setEncoding("utf8");
            res.on("data", (d: string) => {
                buf += d;
                let i: number;
                while ((i = buf.indexOf("\n\n")) >= 0) {
                    const ev = buf.slice(0, i).replace(/^data: /, "");
                    buf = buf.slice(i + 2);
                    if (ev === "[DONE]") done = true;
                    else delays.push(Date.now() - (JSON.parse(ev) as { sent: number }).sent);
                }
            });
            res.on("end", () => resolve({ delays, done }));
            res.on("error", reject);
        });
        req.on("error", reject);
        req.end(JSON.stringify({ prompt: "x", stream: true }));
    });
}

for (const [name, bin, pkg] of [["nginx", nginxBin, "nginx-light"], ["haproxy", haproxyBin, "haproxy"]] as const) {
    describe(`${name} with fake replicas: retries and streaming`, { skip: !bin && `${name} is not installed (apt-get install ${pkg})` }, () => {
        let tmp = "";
        let n = 0;
        before(() => {
            tmp = mkdtempSync(join(tmpdir(), `batchwise-${name}-fakes-`));
        });
        after(() => rmSync(tmp, { recursive: true, force: true }));

        const withBalancer = async (kinds: FakeKind[], body: (b: Balancer, fakes: Fake[]) => Promise<void>) => {
            const fakes = await Promise.all(kinds.map((k) => startFake(k)));
            const b = makeBalancer(name, root, join(tmp, String(n++)));
            try {
                await b.start(fakes.map((f, i) => ({ name: `r${i + 1}`, host: "127.0.0.1", port: f.port, weight: 1 })));
                await body(b, fakes);
            } finally {
                await b.stop();
                await Promise.all(fakes.map((f) => f.close()));
            }
        };
        const post = async (b: Balancer, count: number, padding = 0) => {
            const agent = new Agent({ keepAlive: true });
            const out: RequestRecord[] = [];
            for (let i = 0; i < count; i++) {
                out.push(await send(b.url, { path: "/v1/completions", stream: false, body: { prompt: "x", max_tokens: 1 }, padding }, { agent, id: `fake-${n}-${i}`, timeoutMs: 10_000 }));
            }
            agent.destroy();
            return out;
        };

        for (const kind of ["draining", "hangup", "dead"] as const) {
            it(`a POST that meets a ${kind === "draining" ? "503 (a draining replica)" : kind === "hangup" ? "connection closed without an answer (a replica killed mid-request)" : "refused connection (a dead replica)"} is retried on another replica`, async () => {
                await withBalancer(["ok", kind], async (b, fakes) => {
                    const rs = await post(b, 12);
                    assert.deepEqual(rs.filter((r) => r.outcome !== "ok").map((r) => r.error), []);
                    if (kind !== "dead") assert.ok(fakes[1].posts > 0, "the bad replica was tried");
                    await sleep(200);
                    assert.ok(b.entries().some((e) => e.retries > 0), "the balancer's log shows retries");
                });
            });
        }

        it(`a 40 KB request body is retried off a draining replica${name === "haproxy" ? "; one over tune.bufsize (100 KB) is not" : ", and so is a 100 KB one"}`, async () => {
            await withBalancer(["ok", "draining"], async (b) => {
                const small = await post(b, 8, 40_000);
                assert.deepEqual(small.filter((r) => r.outcome !== "ok").map((r) => r.error), []);
                const big = await post(b, 8, 100_000);
                const refused = big.filter((r) => r.status === 503).length;
                if (name === "nginx") assert.equal(refused, 0, "nginx resends a buffered body of any size");
                // the limit the config's comment states: L7 retries replay a copy of the request that must fit one buffer
                else assert.ok(refused > 0 && big.every((r) => r.outcome === "ok" || r.status === 503), `HAProxy retried all ${big.length} big requests`);
            });
        });

        it("server-sent events pass through as they are written, not when the response ends", async (t) => {
            await withBalancer(["slow-stream"], async (b) => {
                const { delays, done } = await streamDelays(b.url);
                t.diagnostic(`event delays through ${name}: ${delays.join(", ")} ms`);
                assert.ok(done);
                assert.equal(delays.length, 4);
                // the fake writes an event every 500 ms: a buffered response would hold the first one 1.5 s, and
                // HAProxy without http-no-delay holds each but the last ~200 ms (the kernel coalescing small writes)
                assert.ok(Math.max(...delays) < 1000, `delays ${delays.join(", ")} ms`);
                assert.ok(delays.filter((d) => d < 100).length >= 3, `delays ${delays.join(", ")} ms`);
            });
        });
    });
}

const none = !nginxBin && !haproxyBin;
const fleetSkip = process.env.BATCHWISE_TEST_FLEET === "0" ? "BATCHWISE_TEST_FLEET=0"
    : none ? "neither nginx nor haproxy is installed (apt-get install nginx-light haproxy)" : false;
describe("fleet: 3 replicas behind nginx, then HAProxy (short)", { skip: fleetSkip }, () => {
    let report: FleetReport;
    before(async () => {
        report = await runFleet({ ...SHORT, phaseSeconds: 2, root, balancers: [...(nginxBin ? ["nginx" as const] : []), ...(haproxyBin ? ["haproxy" as const] : [])] });
    });

    it("figures", (t) => {
        for (const line of fleetTable(report).split("\n")) t.diagnostic(line);
    });

    for (const [name, bin, pkg] of [["nginx", nginxBin, "nginx-light"], ["haproxy", haproxyBin, "haproxy"]] as const) {
        describe(name, { skip: !bin && `${name} is not installed (apt-get install ${pkg})` }, () => {
            const fig = (): BalancerFigures => report.balancers.find((b) => b.balancer === name)!;
            const phase = (p: string): PhaseFigures => fig().phases.find((x) => x.phase === p)!;

            it("no non-streamed request fails through the kill, the drain, the rolling restart and the reload to the split", () => {
                for (const p of ["kill", "drain", "rolling", "split"]) {
                    const f = phase(p);
                    assert.ok(f.plain.sent > 0, `${p}: requests were sent`);
                    assert.equal(failures(f.plain), 0, `${p}: ${JSON.stringify(f.plain.failed)}`);
                    // the client's one resend after a reset kept-alive connection hides nothing in (a)-(c): the
                    // balancer closes a client's connection only on its own reload (the split's)
                    if (p !== "split") assert.equal(f.clientRetries, 0, `${p}: requests resent by the client`);
                }
            });

            it("streams: only those on the killed replica are cut, each without [DONE]; a drain cuts none", () => {
                for (const f of fig().phases) {
                    // a stream that ended with [DONE] had its finish_reason and no error event
                    assert.equal(f.streams.failed.bad ?? 0, 0, `${f.phase}: incomplete streams ending in [DONE]`);
                    for (const k of Object.keys(f.streams.failed)) assert.equal(k, "cut", `${f.phase}: streams failed by ${k}`);
                    if (f.phase !== "kill") assert.equal(f.cut.count, 0, `${f.phase}: ${JSON.stringify(f.cut)}`);
                }
                const k = phase("kill");
                assert.equal(k.cut.unattributed, 0);
                assert.deepEqual(Object.keys(k.cut.byReplica).filter((r) => r !== k.events[0].replica), [], "cut streams were on the killed replica");
                assert.equal(k.streamsDone + k.cut.count, k.streams.sent, "every stream ended with [DONE] or was cut");
            });

            it("a killed or draining replica is out of rotation within 5 s", () => {
                for (const p of ["kill", "drain", "rolling"]) {
                    for (const e of phase(p).events) {
                        if (name === "haproxy") assert.notEqual(e.outOfRotationMs, null, `${p} ${e.replica}: HAProxy never showed it DOWN`);
                        assert.ok((e.outOfRotationMs ?? 0) < 5000, `${p} ${e.replica}: ${e.outOfRotationMs} ms`);
                        assert.ok(e.readyAgainMs !== undefined, `${p} ${e.replica}: back after the restart`);
                    }
                }
            });

            it("one replica per session id; requests without one spread over the replicas", () => {
                const a = fig().affinityCheck;
                assert.equal(a.failed, 0);
                for (const [s, served] of Object.entries(a.sessions)) assert.equal(new Set(served).size, 1, `${s}: ${served.join(",")}`);
                assert.ok(new Set(a.noHeader).size >= 2, `no header: ${a.noHeader.join(",")}`);
            });

            it("the 90/10 split sends about 10% of requests to the second version", () => {
                const s = phase("split").split!;
                const n = Object.values(s.byModel).reduce((x, y) => x + y, 0);
                assert.ok(n >= 30, `${n} requests in the split`);
                // weighted round robin: 1 in 10 in steady state; a short run, retries and the reload's edge blur it
                assert.ok(s.greenShare >= 0.04 && s.greenShare <= 0.2, `${(s.greenShare * 100).toFixed(1)}% of ${n} to the second version: ${JSON.stringify(s.byModel)}`);
                assert.equal(s.byReplica.g1 ?? 0, s.byModel["demo-v2"] ?? 0, "the balancer's log and the answers' model agree");
            });

            it("every request the client sent is in the balancer's log", () => {
                assert.equal(fig().unlogged, 0, JSON.stringify(fig().unloggedSample));
            });
        });
    }
});
