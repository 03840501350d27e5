#!/usr/bin/env node
// Writes deploy/k8s/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yaml: the same groups,
// as a PrometheusRule for the Prometheus Operator. Run it after editing alerts.yaml;
// test/deploy.test.ts fails while the two differ.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";

const deploy = join(dirname(fileURLToPath(import.meta.url)), "..");
const rules = parse(readFileSync(join(deploy, "prometheus", "alerts.yaml"), "utf8"));
const manifest = {
    apiVersion: "monitoring.coreos.com/v1",
    kind: "PrometheusRule",
    metadata: { name: "batchwise", labels: { "app.kubernetes.io/name": "batchwise" } },
    spec: { groups: rules.groups },
};
const header = [
    "# Generated from deploy/prometheus/alerts.yaml by deploy/prometheus/sync-prometheusrule.mjs: edit that",
    "# file and run the script (test/deploy.test.ts fails while the two differ). Your Prometheus must select",
    "# this rule (kube-prometheus-stack: ruleSelector, by default the label release=<its release name>).",
    "",
].join("\n");
writeFileSync(join(deploy, "k8s", "monitoring", "prometheusrule.yaml"), header + stringify(manifest, { lineWidth: 0 }));
