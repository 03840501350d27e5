#!/usr/bin/env node
// Builds the batchwise addon with cmake-js.
//
//   node scripts/build-native.mjs [--out path/to/batchwise.node] [--debug]
//       a source build: llama.cpp and ggml linked statically into one batchwise.node (build/Release by default)
//   node scripts/build-native.mjs --prebuild <dir> [--cpu-variants all|one]
//       the layout of a prebuilt package: <dir> gets batchwise.napi.glibc.node, the shared llama.cpp libraries it
//       links (libbatchwise-*.so) and ggml's backends as libraries it loads at run time from its own folder: every
//       x86 CPU variant (all, the default) or one CPU backend with ggml's default flags (one: faster to build);
//       with BATCHWISE_CUDA=1, libggml-cuda.so too. See CMakeLists.txt and docs/building.md.
//
// Environment (npm config works too: `npm install --batchwise-cuda=1` sets npm_config_batchwise_cuda):
//   BATCHWISE_CUDA=1                  build the CUDA backend (needs nvcc and cuBLAS)
//   BATCHWISE_CUDA_ARCHITECTURES=...  CMAKE_CUDA_ARCHITECTURES, default "90a" (H100/H200); e.g. "80;86;90a"
//   BATCHWISE_NATIVE=1                tune for this machine's CPU (never for prebuilds)
//   BATCHWISE_JOBS=N                  parallel compile jobs (default: all cores)
//   LLAMA_CPP_DIR=path                use this llama.cpp tree instead of the pinned bundle
//
// Each configuration keeps its own build folder under build-native/ (cpu, cuda-<archs>, prebuild-cpu-all, ...), so
// switching between them does not rebuild llama.cpp, and after a change in native/ only the addon is recompiled.
//
// What it needs: cmake, a C/C++ compiler, make, git (and nvcc for CUDA): a missing one is one message saying what to
// install. cmake-js and node-addon-api are this package's devDependencies; where they are not installed (batchwise
// installed from the registry, building because no prebuilt binary fits), they are installed once, privately, into
// build-native/tools with npm.
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildFlavour, cudaFlavour, flag, missingToolchain, npmCommand, onPath, optionValue, setting } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

function fail(msg) {
    process.stderr.write(`[batchwise] error: ${msg}\n`);
    process.exit(1);
}

const args = process.argv.slice(2);
const option = (name) => optionValue(args, name, fail);
const prebuildDir = option("--prebuild") !== undefined ? resolve(option("--prebuild")) : undefined;
const cpuVariants = option("--cpu-variants") ?? "all";
if (!["all", "one"].includes(cpuVariants)) fail(`--cpu-variants is all or one, not ${cpuVariants}`);
const out = option("--out") !== undefined ? resolve(option("--out")) : join(root, "build", "Release", "batchwise.node");
const debug = args.includes("--debug");

const cuda = flag("CUDA");
const cudaArchs = setting("CUDA_ARCHITECTURES") ?? "90a";
const native = flag("NATIVE") && !prebuildDir;
const jobs = Number(setting("JOBS") ?? cpus().length);

// the toolchain first: nothing is fetched for a build that cannot run
const lacking = missingToolchain({ cuda, git: !existsSync(join(process.env.LLAMA_CPP_DIR ?? join(root, "deps", "llama.cpp"), ".batchwise-patches")) });
if (lacking) fail(lacking);

/** cmake-js and node-addon-api: resolved from this package (the dev checkout, or the user's project), else a private copy. */
function buildTools() {
    const find = (from) => {
        try {
            const req = createRequire(from);
            const cmakeJs = join(dirname(req.resolve("cmake-js/package.json")), "bin", "cmake-js");
            // node-addon-api's headers sit in its package folder (its include_dir is relative to the cwd)
            return { cmakeJs, napiInclude: dirname(req.resolve("node-addon-api/package.json")) };
        } catch {
            return null;
        }
    };
    const own = find(join(root, "package.json"));
    if (own) return own;
    const toolsDir = join(root, "build-native", "tools");
    const ready = find(join(toolsDir, "package.json"));
    if (ready) return ready;
    const specs = ["cmake-js", "node-addon-api"].map((n) => `${n}@${pkg.devDependencies?.[n] ?? "latest"}`);
    process.stderr.write(`[batchwise] installing the build tools ${specs.join(" ")} into ${toolsDir}\n`);
    mkdirSync(toolsDir, { recursive: true });
    writeFileSync(join(toolsDir, "package.json"), '{ "private": true, "description": "batchwise source-build tools" }\n');
    const npm = npmCommand();
    const r = spawnSync(npm[0], [...npm.slice(1), "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
        "--ignore-scripts", "--loglevel=error", ...specs], { cwd: toolsDir, stdio: ["ignore", "inherit", "inherit"] });
    if (r.error || r.status !== 0) {
        fail(`could not install ${specs.join(" ")} (${r.error?.message ?? `npm exited with ${r.status}`}): ` +
            `install them in your project (npm install -D ${specs.join(" ")}) and run \`npm rebuild batchwise\``);
    }
    const installed = find(join(toolsDir, "package.json"));
    if (!installed) fail(`${specs.join(" ")} installed into ${toolsDir}, but cannot be resolved from there`);
    return installed;
}

const { ensureLlamaSource } = await import("./fetch-llama.mjs");
const llamaDir = ensureLlamaSource();
const tools = buildTools();
const flavour = prebuildDir
    ? `prebuild-${cuda ? cudaFlavour(cudaArchs) : "cpu"}-${cpuVariants}`
    : buildFlavour();
const buildDir = join(root, "build-native", flavour);
mkdirSync(buildDir, { recursive: true });

const defs = {
    LLAMA_CPP_DIR: llamaDir,
    BATCHWISE_LLAMA_TAG: pkg.llama.tag,
    NODE_ADDON_API_DIR: tools.napiInclude,
    GGML_CUDA: cuda ? "ON" : "OFF",
    GGML_NATIVE: native ? "ON" : "OFF",
};
if (cuda) defs.CMAKE_CUDA_ARCHITECTURES = cudaArchs;
if (prebuildDir) {
    defs.BATCHWISE_PREBUILD = "ON";
    defs.BATCHWISE_CPU_VARIANTS = cpuVariants === "all" ? "ON" : "OFF";
}

const cmdArgs = [tools.cmakeJs, "compile", "-d", root, "-O", buildDir, "-p", String(jobs)];
if (debug) cmdArgs.push("-D");
for (const [k, v] of Object.entries(defs)) cmdArgs.push(`--CD${k}=${v}`);

process.stderr.write(`[batchwise] building the addon (${flavour}${debug ? ", debug" : ""}) in ${buildDir} with ${jobs} jobs\n`);
const t0 = Date.now();
try {
    execFileSync(process.execPath, cmdArgs, { stdio: "inherit", cwd: root });
} catch {
    fail("the native build failed (see the compiler output above)");
}
const seconds = () => ((Date.now() - t0) / 1000).toFixed(1);

if (prebuildDir) {
    // the addon, the libraries it links (one file each: no versions, no links) and the backend libraries
    const built = join(buildDir, "bin");
    const files = readdirSync(built).filter((f) => f === "batchwise.node" || /^lib(batchwise|ggml)-[^/]*\.so$/.test(f));
    if (!files.includes("batchwise.node")) fail(`the build finished but ${join(built, "batchwise.node")} is missing`);
    if (!files.some((f) => f.startsWith("libggml-cpu"))) fail(`the build finished but ${built} has no CPU backend (libggml-cpu*.so)`);
    if (cuda && !files.includes("libggml-cuda.so")) fail(`the build finished but ${built} has no libggml-cuda.so`);
    rmSync(prebuildDir, { recursive: true, force: true });
    mkdirSync(prebuildDir, { recursive: true });
    const strip = onPath("strip");
    for (const f of files) {
        if (!statSync(join(built, f)).isFile()) continue;
        const dest = join(prebuildDir, f === "batchwise.node" ? "batchwise.napi.glibc.node" : f);
        copyFileSync(join(built, f), dest);
        // the symbol tables only (about 15% of the size): what the libraries export stays
        if (strip) spawnSync(strip, ["--strip-unneeded", dest], { stdio: "inherit" });
    }
    process.stderr.write(`[batchwise] prebuild of ${files.length} files in ${prebuildDir} (${seconds()} s)\n`);
} else {
    const built = join(buildDir, debug ? "Debug" : "Release", "batchwise.node");
    if (!existsSync(built)) fail(`the build finished but ${built} is missing`);
    mkdirSync(dirname(out), { recursive: true });
    // copy, then rename over the old file: a process that has the old addon loaded keeps its (unlinked) file
    // instead of seeing it rewritten under it
    copyFileSync(built, `${out}.tmp-${process.pid}`);
    renameSync(`${out}.tmp-${process.pid}`, out);
    process.stderr.write(`[batchwise] built ${out} in ${seconds()} s\n`);
}
