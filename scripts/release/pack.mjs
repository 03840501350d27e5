#!/usr/bin/env node
// npm run release:pack: builds the prebuilt addon(s) and writes every package's tarball into release/ (git-ignored).
//
//   node scripts/release/pack.mjs [--cuda] [--only main,cpu,vocab,cuda] [--cpu-variants all|one] [--out dir]
//                                 [--prebuild-cache dir] [--no-prepare]
//
// Packages (each at batchwise's version):
//   main   batchwise itself (npm pack of this folder: dist/lib, the source-build scripts, native/, CMakeLists.txt)
//   cpu    @batchwise/linux-x64: the addon, its llama.cpp libraries and every x86 CPU variant of ggml's CPU backend
//   vocab  @batchwise/vocab: the vocab-only GGUF of the demo model, from the llama.cpp source
//   cuda   @batchwise/linux-x64-cuda: the cpu package's files plus libggml-cuda.so (CUDA 13), built where nvcc is
// By default main, cpu and vocab; --cuda adds cuda (BATCHWISE_PACK_CUDA=1 too); --only picks.
//
// --cpu-variants one builds a single CPU backend (ggml's default flags: AVX2, FMA, F16C) instead of the 13 x86
// variants: what CI's install test uses, a quarter of the build. A release is built with all (the default).
// CUDA architectures: BATCHWISE_CUDA_ARCHITECTURES, default "80-real;90a-real;90-virtual": sm_80 code, which every
// compute capability 8.x runs (A100/A30, A10/A40/RTX 30xx, L4/L40/RTX 40xx), sm_90a for H100/H200, and compute_90 PTX
// that newer GPUs (Blackwell) compile on their first run. Three compiler passes; "80-real;86-real;89-real;90a-real"
// adds code tuned for 8.6 and 8.9 at the cost of a longer build, "90a-real" alone is a quick check.
// --no-prepare packs batchwise without running its prepare script (tsc): dist/ must be current.
// --prebuild-cache dir keeps each prebuild under dir/<package>-<hash of its sources and settings>, and reuses it.
//
// The tarballs, their sizes and sha256 are listed in release/manifest.json. npm is what ran this script
// (npm_execpath), else the npm beside node (a Node install's lib/node_modules/npm), else npm on PATH.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { flag, npmCommand, optionValue, setting } from "../settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const log = (msg) => process.stderr.write(`[release] ${msg}\n`);
function fail(msg) {
    process.stderr.write(`[release] error: ${msg}\n`);
    process.exit(1);
}

const args = process.argv.slice(2);
const option = (name) => optionValue(args, name, fail);
const withCuda = args.includes("--cuda") || flag("PACK_CUDA");
const only = (option("--only") ?? ["main", "cpu", "vocab", ...(withCuda ? ["cuda"] : [])].join(",")).split(",").filter(Boolean);
for (const o of only) if (!["main", "cpu", "vocab", "cuda"].includes(o)) fail(`--only takes main, cpu, vocab, cuda; not ${o}`);
const cpuVariants = option("--cpu-variants") ?? "all";
const outDir = resolve(option("--out") ?? join(root, "release"));
const cacheDir = option("--prebuild-cache") !== undefined ? resolve(option("--prebuild-cache")) : undefined;
const cudaArchs = setting("CUDA_ARCHITECTURES") ?? "80-real;90a-real;90-virtual";
const platform = `${process.platform}-${process.arch}`;
if (platform !== "linux-x64" && (only.includes("cpu") || only.includes("cuda"))) fail(`prebuilt packages are made for linux-x64, not ${platform}`);

/** npm pack of dir into outDir: { filename, size, unpackedSize, entryCount, files }. */
function npmPack(dir, scripts = true) {
    const [cmd, ...pre] = npmCommand();
    const r = spawnSync(cmd, [...pre, "pack", dir, "--json", "--pack-destination", outDir, "--loglevel=error", ...(scripts ? [] : ["--ignore-scripts"])],
        { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 });
    if (r.error || r.status !== 0) fail(`npm pack ${dir} failed (${r.error?.message ?? `exit ${r.status}`})`);
    // npm prints the prepare script's output before the JSON
    const json = JSON.parse(r.stdout.slice(r.stdout.indexOf("[")));
    return json[0];
}

function hashTree(h, path) {
    if (!existsSync(path)) return;
    if (statSync(path).isDirectory()) {
        for (const e of readdirSync(path).sort()) hashTree(h, join(path, e));
    } else {
        h.update(relative(root, path)).update("\0").update(readFileSync(path)).update("\0");
    }
}

/** What a prebuild is made from: our native sources and build scripts, the llama.cpp pin and the settings. */
function prebuildKey(name, env) {
    const h = createHash("sha256");
    for (const p of ["native", "CMakeLists.txt", "scripts/build-native.mjs", "scripts/settings.mjs", "scripts/fetch-llama.mjs"]) hashTree(h, join(root, p));
    h.update(JSON.stringify({ llama: pkg.llama, name, cpuVariants, env, llamaDir: process.env.LLAMA_CPP_DIR ?? null }));
    return `${name.replace(/^@/, "").replace(/\//g, "+")}-${h.digest("hex").slice(0, 16)}`;
}

/** Builds (or takes from the cache) the prebuild folder of a platform package into dest. */
function prebuild(name, dest, cuda) {
    const env = { ...process.env };
    delete env.BATCHWISE_CUDA;
    delete env.npm_config_batchwise_cuda;
    if (cuda) Object.assign(env, { BATCHWISE_CUDA: "1", BATCHWISE_CUDA_ARCHITECTURES: cudaArchs });
    const cached = cacheDir ? join(cacheDir, prebuildKey(name, cuda ? { cudaArchs } : {})) : undefined;
    if (cached && existsSync(join(cached, "batchwise.napi.glibc.node"))) {
        log(`${name}: the prebuild in ${cached}`);
        cpSync(cached, dest, { recursive: true });
        return;
    }
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [join(root, "scripts", "build-native.mjs"), "--prebuild", dest, "--cpu-variants", cpuVariants],
        { cwd: root, env, stdio: "inherit" });
    if (r.status !== 0) fail(`${name}: the build failed`);
    log(`${name}: built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    if (cached) {
        rmSync(cached, { recursive: true, force: true });
        mkdirSync(dirname(cached), { recursive: true });
        cpSync(dest, cached, { recursive: true });
    }
}

/** A platform or vocab package: packages/<dir> copied to a stage, at batchwise's version, with the LICENSE. */
function stage(dir) {
    const src = join(root, "packages", dir);
    const dest = join(outDir, "stage", dir);
    rmSync(dest, { recursive: true, force: true });
    mkdirSync(dest, { recursive: true });
    for (const f of ["package.json", "README.md"]) cpSync(join(src, f), join(dest, f));
    const p = JSON.parse(readFileSync(join(dest, "package.json"), "utf8"));
    p.version = pkg.version;
    writeFileSync(join(dest, "package.json"), `${JSON.stringify(p, null, 2)}\n`);
    cpSync(join(root, "LICENSE"), join(dest, "LICENSE"));
    return dest;
}

mkdirSync(outDir, { recursive: true });
// the manifest keeps the other packages' entries of this version (the CUDA package is packed on another machine)
const manifestPath = join(outDir, "manifest.json");
const previous = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, "utf8")) : null;
const manifest = { version: pkg.version, packages: previous?.version === pkg.version ? previous.packages : [] };
const packed = [];
const t0 = Date.now();

if (only.includes("main")) {
    // the optional dependencies on the platform and vocab packages must name this very version
    for (const [name, range] of Object.entries(pkg.optionalDependencies ?? {})) {
        if (name.startsWith("@batchwise/") && range !== pkg.version) fail(`optionalDependencies.${name} is ${range}, not ${pkg.version}`);
    }
    const prepare = !args.includes("--no-prepare");
    if (!prepare && !existsSync(join(root, "dist", "lib", "index.js"))) fail("--no-prepare, but dist/lib is not built (npm run build)");
    log(`batchwise: npm pack${prepare ? " (runs prepare: tsc)" : ""}`);
    packed.push({ name: pkg.name, ...npmPack(root, prepare) });
}
if (only.includes("vocab")) {
    const dest = stage("vocab");
    const { ensureLlamaSource } = await import("../fetch-llama.mjs");
    const models = join(ensureLlamaSource(), "models");
    for (const v of ["qwen2"]) cpSync(join(models, `ggml-vocab-${v}.gguf`), join(dest, `ggml-vocab-${v}.gguf`));
    packed.push({ name: "@batchwise/vocab", ...npmPack(dest) });
}
for (const [key, dir, cuda] of [["cpu", "linux-x64", false], ["cuda", "linux-x64-cuda", true]]) {
    if (!only.includes(key)) continue;
    const dest = stage(dir);
    prebuild(`@batchwise/${dir}`, join(dest, "prebuilds", platform), cuda);
    packed.push({ name: `@batchwise/${dir}`, ...npmPack(dest) });
}

for (const p of packed) {
    const file = join(outDir, p.filename);
    manifest.packages = manifest.packages.filter((m) => m.name !== p.name);
    manifest.packages.push({
        name: p.name, date: new Date().toISOString(), cpuVariants: p.name === pkg.name || p.name.endsWith("/vocab") ? undefined : cpuVariants,
        file: p.filename, size: p.size, unpackedSize: p.unpackedSize, entryCount: p.entryCount,
        sha256: createHash("sha256").update(readFileSync(file)).digest("hex"),
        files: p.files.map((f) => ({ path: f.path, size: f.size })),
    });
    log(`${p.filename.padEnd(40)} ${(p.size / 1e6).toFixed(1).padStart(7)} MB packed, ${(p.unpackedSize / 1e6).toFixed(1).padStart(7)} MB unpacked, ${p.entryCount} files`);
}
writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${outDir}`);
