#!/usr/bin/env node
// Builds llama.cpp's own llama-server and llama-batched-bench for the side-by-side benchmark: from the
// same pinned (and patched) source as the addon, in the addon's build folder, so they share its ggml and
// llama objects and a CUDA build compiles the kernels once. CUDA with BATCHWISE_CUDA=1, as the addon.
// Prints the binaries' folder on stdout. Other llama.cpp targets can be named instead (the benchmark's two
// are the default), e.g. test-backend-ops, which checks our ggml patches on CUDA against the CPU.
//
//   node scripts/build-llama-tools.mjs [target ...]
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildFlavour, setting } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const buildDir = join(root, "build-native", buildFlavour());
const t0 = Date.now();
// the addon's build (a no-op when it is current), then the same build folder reconfigured with the tools on
execFileSync(process.execPath, [join(root, "scripts", "build-native.mjs")], { stdio: ["ignore", process.stderr, "inherit"] });
execFileSync("cmake", ["-DBATCHWISE_LLAMA_TOOLS=ON", buildDir], { stdio: ["ignore", "ignore", "inherit"] });
const targets = process.argv.length > 2 ? process.argv.slice(2) : ["llama-server", "llama-batched-bench"];
execFileSync("cmake", ["--build", buildDir, "--config", "Release", "--target", ...targets, "-j", String(setting("JOBS") ?? cpus().length)],
    { stdio: ["ignore", process.stderr, "inherit"] });

function find(dir, name) {
    for (const e of readdirSync(dir)) {
        const p = join(dir, e);
        if (e === name && statSync(p).isFile()) return p;
        if (statSync(p).isDirectory()) {
            const r = find(p, name);
            if (r) return r;
        }
    }
    return null;
}
// llama.cpp puts executables in <build>/bin
const found = targets.map((t) => find(buildDir, t));
if (found.some((f) => !f) || new Set(found.map((f) => dirname(f))).size !== 1) {
    process.stderr.write(`[batchwise] error: built, but did not find every binary under ${buildDir} (${found.join(", ")})\n`);
    process.exit(1);
}
process.stderr.write(`[batchwise] ${targets.join(" and ")} ready in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
process.stdout.write(dirname(found[0]) + "\n");
