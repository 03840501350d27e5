#!/usr/bin/env node
// npm run test:fleet: the long fleet test (three `batchwise serve` replicas behind nginx, then HAProxy, through
// a kill, a drain, a rolling restart and a 90/10 split) and the prefix-affinity measurement, with a report:
// a readable table and then the JSON on stdout, progress on stderr.
//
//   node scripts/fleet.mjs [--short] [--balancers nginx,haproxy] [--phase-seconds N] [--clients N]
//                          [--no-fleet] [--no-affinity] [--affinity-seconds N] [--json FILE] [--keep]
//
// Needs dist/ (npm run build) and nginx / haproxy on the PATH or in /usr/sbin (Debian: nginx-light, haproxy);
// a balancer that is missing is skipped with a line saying so. Exits 1 when a non-streamed request failed
// in the kill, drain, rolling-restart or split phases, or a stream ended in a way a client could not tell.
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: a } = parseArgs({
    options: {
        short: { type: "boolean", default: false },
        balancers: { type: "string" },
        "phase-seconds": { type: "string" },
        clients: { type: "string" },
        "no-fleet": { type: "boolean", default: false },
        "no-affinity": { type: "boolean", default: false },
        "affinity-seconds": { type: "string" },
        json: { type: "string" },
        keep: { type: "boolean", default: false },
    },
});

const { runFleet, SHORT, LONG, failures } = await import(join(root, "dist/test/fleet/scenario.js"));
const { runAffinity, AFFINITY } = await import(join(root, "dist/test/fleet/affinity.js"));
const { fleetTable, affinityTable } = await import(join(root, "dist/test/fleet/report.js"));

const t0 = Date.now();
const log = (line) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
const balancers = a.balancers ? a.balancers.split(",") : ["nginx", "haproxy"];
const out = { command: `node scripts/fleet.mjs ${process.argv.slice(2).join(" ")}`.trim() };
let bad = false;

if (!a["no-fleet"]) {
    const base = a.short ? SHORT : LONG;
    const fleet = await runFleet({
        ...base, root, balancers, keepDir: a.keep, log,
        ...(a["phase-seconds"] && { phaseSeconds: Number(a["phase-seconds"]) }),
        ...(a.clients && { clients: Number(a.clients) }),
    });
    out.fleet = fleet;
    process.stdout.write(`${fleetTable(fleet)}\n\n`);
    for (const b of fleet.balancers) {
        for (const p of b.phases) {
            if (p.phase !== "steady" && failures(p.plain) > 0) {
                bad = true;
                log(`FAIL ${b.balancer} ${p.phase}: ${failures(p.plain)} non-streamed requests failed`);
            }
            if (p.streams.failed.bad) {
                bad = true;
                log(`FAIL ${b.balancer} ${p.phase}: ${p.streams.failed.bad} streams ended with [DONE] but incomplete, or with an error event`);
            }
        }
    }
}

if (!a["no-affinity"]) {
    const affinity = await runAffinity({
        ...AFFINITY, root, balancers, keepDir: a.keep, log,
        ...(a["affinity-seconds"] && { seconds: Number(a["affinity-seconds"]) }),
        ...(a.short && { seconds: 20 }),
    });
    out.affinity = affinity;
    process.stdout.write(`prefix affinity (${AFFINITY.users} users, ${AFFINITY.prefixTokens}-token prefixes + ${AFFINITY.freshTokens} fresh, ` +
        `KV ${AFFINITY.ctx} tokens per replica)\n${affinityTable(affinity)}\n\n`);
}

const json = JSON.stringify(out, null, 2);
if (a.json) writeFileSync(a.json, `${json}\n`);
process.stdout.write(`${json}\n`);
process.exit(bad ? 1 : 0);
