#!/usr/bin/env node
// npm install hook.
//
// Installed from the registry: the prebuilt binary of @batchwise/<platform>-<arch> (an optional dependency; the CUDA
// package @batchwise/<platform>-<arch>-cuda when installed) is used as it is: the addon is loaded once, in a child
// process, to check it runs here, and nothing is built. A source build (scripts/build-native.mjs) happens only when
// no prebuilt binary fits this platform or loads here, or when asked: BATCHWISE_BUILD_FROM_SOURCE=1, or
// BATCHWISE_CUDA=1 (`npm install --batchwise-build-from-source=1` / `--batchwise-cuda=1` work too). A missing cmake,
// compiler or git is then one message saying what to install.
//
// In a checkout of the repository (tsconfig.json present): a source build, unless build/Release already holds one that loads.
import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { flag } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
// a checkout of the repository (tsconfig.json is not in the published package)
const checkout = existsSync(join(root, "tsconfig.json"));
const log = (msg) => process.stderr.write(`[batchwise] ${msg}\n`);

function build() {
    const r = spawnSync(process.execPath, [join(root, "scripts", "build-native.mjs")], { stdio: "inherit", cwd: root });
    if (r.status !== 0) process.exit(r.status ?? 1);
    if (!checkout && !flag("KEEP_BUILD")) {
        // an installed package keeps the addon (build/Release), not the llama.cpp source and objects (hundreds of MB):
        // `npm rebuild batchwise` fetches and builds again
        rmSync(join(root, "deps"), { recursive: true, force: true });
        rmSync(join(root, "build-native"), { recursive: true, force: true });
    }
    process.exit(0);
}

if (flag("BUILD_FROM_SOURCE") || flag("CUDA")) {
    log(`building from source (${flag("CUDA") ? "BATCHWISE_CUDA" : "BATCHWISE_BUILD_FROM_SOURCE"} is set)`);
    build();
}

if (checkout) {
    try {
        const addon = createRequire(import.meta.url)("node-gyp-build")(root);
        const sys = addon.systemInfo();
        log(`native addon ready (llama.cpp ${sys.llamaTag}, ${sys.cuda ? "CUDA" : "CPU"})`);
        process.exit(0);
    } catch {
        log("no addon built in this checkout yet: building from source");
        build();
    }
}

// An installed package: load the addon the way the library will (lib/binding/native.ts), in a child process, so that
// whatever goes wrong while loading it is reported here instead of ending the install.
const probe = `
import(${JSON.stringify(pathToFileURL(join(root, "dist", "lib", "binding", "native.js")).href)}).then((m) => {
    const sys = m.loadNative().systemInfo();
    process.stdout.write(JSON.stringify({ location: m.addonLocation(), sys }));
}).catch((e) => { process.stdout.write(JSON.stringify({ error: String(e && e.message || e) })); });`;
// BATCHWISE_GPU is a run-time choice: an install on a machine with no GPU (a container build) must not read "cuda" as
// "nothing fits" and build a CPU addon from source that would then be loaded before the CUDA package
const { BATCHWISE_GPU: _gpu, ...env } = process.env;
const r = spawnSync(process.execPath, ["--input-type=module", "-e", probe], { encoding: "utf8", cwd: root, env: { ...env, NODE_NO_WARNINGS: "1" }, timeout: 120_000 });
let result;
try {
    result = JSON.parse(r.stdout);
} catch {
    const how = r.error?.code === "ETIMEDOUT" ? "did not finish in 120 s" : `ended the process (${r.signal ?? `exit code ${r.status}`})`;
    result = { error: `loading the addon ${how}: ${(r.stderr ?? "").trim().split("\n").slice(-2).join(" ")}` };
}
if (result.location) {
    const { location, sys } = result;
    const what = location.source === "package" ? `the prebuilt binary of ${location.packageName}` : `${location.path}`;
    const backends = sys.backendLibraries?.length ? sys.backendLibraries.join(", ") : sys.cuda ? "CUDA" : "CPU";
    log(`using ${what} (llama.cpp ${sys.llamaTag}; ${backends})`);
    for (const e of sys.backendErrors ?? []) log(`note: ${e}`);
    for (const e of location.skipped ?? []) log(`passed over: ${e}`);
    process.exit(0);
}
log(`no prebuilt binary fits this machine (${process.platform}-${process.arch}): ${result.error}`);
log("building from source instead");
build();
