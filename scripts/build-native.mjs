#!/usr/bin/env node
// Builds the batchwise addon (llama.cpp + ggml linked statically) with cmake-js.
//
//   node scripts/build-native.mjs [--out path/to/batchwise.node] [--debug]
//
// Environment (npm config works too: `npm install --batchwise-cuda=1` sets npm_config_batchwise_cuda):
//   BATCHWISE_CUDA=1                  build the CUDA backend (needs nvcc and cuBLAS)
//   BATCHWISE_CUDA_ARCHITECTURES=...  CMAKE_CUDA_ARCHITECTURES, default "90a" (H100/H200); e.g. "80;86;90a"
//   BATCHWISE_NATIVE=1                tune for this machine's CPU (never for prebuilds)
//   BATCHWISE_JOBS=N                  parallel compile jobs (default: all cores)
//   LLAMA_CPP_DIR=path                use this llama.cpp tree instead of the pinned bundle
//
// Each configuration keeps its own build folder under build-native/ (cpu, cuda-<archs>), so switching
// between CPU and CUDA does not rebuild llama.cpp, and after a change in native/ only the addon is recompiled.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureLlamaSource } from "./fetch-llama.mjs";
import { buildFlavour, flag, setting } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

const args = process.argv.slice(2);
const outIdx = args.indexOf("--out");
const out = outIdx >= 0 ? resolve(args[outIdx + 1]) : join(root, "build", "Release", "batchwise.node");
const debug = args.includes("--debug");

const cuda = flag("CUDA");
const cudaArchs = setting("CUDA_ARCHITECTURES") ?? "90a";
const native = flag("NATIVE");
const jobs = Number(setting("JOBS") ?? cpus().length);

const llamaDir = ensureLlamaSource();
const flavour = buildFlavour();
const buildDir = join(root, "build-native", flavour);
mkdirSync(buildDir, { recursive: true });

const cmakeJs = join(dirname(fileURLToPath(import.meta.resolve("cmake-js/package.json"))), "bin", "cmake-js");
const defs = {
    LLAMA_CPP_DIR: llamaDir,
    BATCHWISE_LLAMA_TAG: pkg.llama.tag,
    GGML_CUDA: cuda ? "ON" : "OFF",
    GGML_NATIVE: native ? "ON" : "OFF",
};
if (cuda) defs.CMAKE_CUDA_ARCHITECTURES = cudaArchs;

const cmdArgs = [cmakeJs, "compile", "-d", root, "-O", buildDir, "-p", String(jobs)];
if (debug) cmdArgs.push("-D");
for (const [k, v] of Object.entries(defs)) cmdArgs.push(`--CD${k}=${v}`);

process.stderr.write(`[batchwise] building the addon (${flavour}${debug ? ", debug" : ""}) in ${buildDir} with ${jobs} jobs\n`);
const t0 = Date.now();
try {
    execFileSync(process.execPath, cmdArgs, { stdio: "inherit", cwd: root });
} catch {
    process.stderr.write("[batchwise] error: the native build failed (see the compiler output above)\n");
    process.exit(1);
}
const built = join(buildDir, debug ? "Debug" : "Release", "batchwise.node");
if (!existsSync(built)) {
    process.stderr.write(`[batchwise] error: the build finished but ${built} is missing\n`);
    process.exit(1);
}
mkdirSync(dirname(out), { recursive: true });
// copy, then rename over the old file: a process that has the old addon loaded keeps its (unlinked) file
// instead of seeing it rewritten under it
copyFileSync(built, `${out}.tmp-${process.pid}`);
renameSync(`${out}.tmp-${process.pid}`, out);
process.stderr.write(`[batchwise] built ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
