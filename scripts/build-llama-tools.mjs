#!/usr/bin/env node
// Builds llama.cpp's own llama-server and llama-batched-bench for the side-by-side benchmark: from the
// same pinned (and patched) source as the addon, in the addon's build folder, so they share its ggml and
// llama objects and a CUDA build compiles the kernels once. CUDA with BATCHWISE_CUDA=1, as the addon.
// Prints the two binaries' folder on stdout.
//
//   node scripts/build-llama-tools.mjs
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
execFileSync("cmake", ["--build", buildDir, "--config", "Release", "--target", "llama-server", "llama-batched-bench", "-j", String(setting("JOBS") ?? cpus().length)],
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
const server = find(buildDir, "llama-server");
const bench = find(buildDir, "llama-batched-bench");
if (!server || !bench || dirname(server) !== dirname(bench)) {
    process.stderr.write(`[batchwise] error: built, but did not find both binaries under ${buildDir} (${server}, ${bench})\n`);
    process.exit(1);
}
process.stderr.write(`[batchwise] llama-server and llama-batched-bench ready in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
process.stdout.write(dirname(server) + "\n");
