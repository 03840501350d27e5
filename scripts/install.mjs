#!/usr/bin/env node
// npm install hook: use a prebuild (prebuilds/<platform>-<arch>) or an existing build when one loads,
// otherwise build from source with cmake-js (scripts/build-native.mjs). Unlike `node-gyp rebuild`,
// this needs no Node headers download: cmake-js builds against the node-api-headers package.
// BATCHWISE_CUDA=1 (or `npm install --batchwise-cuda=1`) always builds, for CUDA.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { flag } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
if (!flag("CUDA")) {
    try {
        const addon = require("node-gyp-build")(root);
        process.stderr.write(`[batchwise] native addon ready (llama.cpp ${addon.systemInfo().llamaTag}, ${addon.systemInfo().cuda ? "CUDA" : "CPU"})\n`);
        process.exit(0);
    } catch {
        process.stderr.write("[batchwise] no prebuilt addon for this platform: building from source\n");
    }
}
try {
    execFileSync(process.execPath, [join(root, "scripts", "build-native.mjs")], { stdio: "inherit", cwd: root });
} catch {
    process.exit(1);
}
