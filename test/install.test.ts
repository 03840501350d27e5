// The user's install, as npm does it from the registry: the tarballs `npm run release:pack` writes (batchwise, its
// CPU prebuild @batchwise/linux-x64 and @batchwise/vocab) installed into an empty project with cmake, the compilers and
// git off the PATH (a PATH holding only node, npm, npx and sh), then the README's first example, require("batchwise"),
// `npx batchwise serve` with its demo model and one request, the addon in worker threads, a CUDA package whose CUDA
// library cannot load, and a source build asked for without a toolchain. The install is timed and node_modules measured.
//
// The CPU prebuild is built once (release:pack --cpu-variants one: one CPU backend, a quarter of the all-variants
// build) and kept in the cache folder under a hash of its sources; BATCHWISE_TEST_CPU_VARIANTS=all tests the
// release's 13 variants. Skipped off linux-x64 (no prebuilt packages there), without npm on the PATH, or with
// BATCHWISE_TEST_INSTALL=0 (a checkout that runs the tests has built the addon, so it has the toolchain the prebuild needs).
import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cacheDir } from "../lib/index.js";

const root = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..", "..");
const variants = process.env.BATCHWISE_TEST_CPU_VARIANTS === "all" ? "all" : "one";

function skipReason(): string | undefined {
    if (process.env.BATCHWISE_TEST_INSTALL === "0") return "BATCHWISE_TEST_INSTALL=0";
    if (`${process.platform}-${process.arch}` !== "linux-x64") return `prebuilt packages are made for linux-x64, not ${process.platform}-${process.arch}`;
    const npm = spawnSync("npm", ["--version"], { encoding: "utf8" });
    if (npm.status !== 0) return "npm is not on PATH";
    return undefined;
}
const skip = skipReason();

function du(path: string): number {
    let total = 0;
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) return 0;
    if (!st.isDirectory()) return st.size;
    for (const e of readdirSync(path)) {
        const p = join(path, e);
        const s = statSync(p, { throwIfNoEntry: false });
        if (s?.isDirectory() && !s.isSymbolicLink()) total += du(p);
        else if (s) total += s.size;
    }
    return total;
}

function out(r: SpawnSyncReturns<string>): string {
    return `${r.stdout ?? ""}\n${r.stderr ?? ""}`.trim();
}

describe("install from the packed packages, no toolchain", { skip }, () => {
    let work: string;
    let app: string;
    let bin: string;
    let env: NodeJS.ProcessEnv;
    let installSeconds = 0;
    let installLog = "";
    const tarballs: string[] = [];

    /** Runs a command in the app with the bare PATH. */
    const inApp = (cmd: string, args: string[], extra: NodeJS.ProcessEnv = {}, timeout = 180_000) =>
        spawnSync(cmd, args, { cwd: app, env: { ...env, ...extra }, encoding: "utf8", timeout });

    before(async () => {
        work = mkdtempSync(join(tmpdir(), "bw-install-"));
        // the tarballs (the prebuild from the cache when its sources did not change)
        const t0 = Date.now();
        const pack = spawnSync(process.execPath, [join(root, "scripts", "release", "pack.mjs"), "--only", "main,cpu,vocab",
            "--cpu-variants", variants, "--out", join(work, "release"), "--prebuild-cache", join(cacheDir(), "release-prebuilds"), "--no-prepare"],
        { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
        assert.equal(pack.status, 0, `release:pack failed:\n${out(pack).split("\n").slice(-30).join("\n")}`);
        const manifest = JSON.parse(readFileSync(join(work, "release", "manifest.json"), "utf8"));
        for (const p of manifest.packages) tarballs.push(join(work, "release", p.file));
        console.log(`# packed in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${manifest.packages.map((p: any) => `${p.file} ${(p.size / 1e6).toFixed(1)} MB`).join(", ")}`);

        // a PATH with node, npm and npx alone, and sh (npm runs scripts with it)
        bin = join(work, "bin");
        mkdirSync(bin);
        symlinkSync(process.execPath, join(bin, "node"));
        symlinkSync("/bin/sh", join(bin, "sh"));
        for (const tool of ["npm", "npx"]) {
            const which = spawnSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
            symlinkSync(realpathSync(which), join(bin, tool));
        }
        app = join(work, "app");
        mkdirSync(app);
        writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
        env = { HOME: process.env.HOME, PATH: bin, XDG_CACHE_HOME: join(work, "cache"), TMPDIR: process.env.TMPDIR ?? tmpdir() };
        if (process.env.npm_config_cache) env.npm_config_cache = process.env.npm_config_cache;

        // the install: the registry's packages from npm's cache where it has them (CI's `npm install` filled it)
        const t1 = Date.now();
        const r = inApp("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--foreground-scripts", ...tarballs], {}, 300_000);
        installSeconds = (Date.now() - t1) / 1000;
        installLog = out(r);
        assert.equal(r.status, 0, `npm install failed:\n${installLog}`);
    });

    after(() => {
        if (work) rmSync(work, { recursive: true, force: true });
    });

    it("installs without cmake, a compiler or git, in under 60 s, in under 80 MB, building nothing", () => {
        const tools = inApp("sh", ["-c", "command -v cmake || command -v c++ || command -v g++ || command -v cc || command -v gcc || command -v clang || command -v git || command -v make"]);
        assert.notEqual(tools.status, 0, `the bare PATH still has a toolchain: ${tools.stdout}`);
        const size = du(join(app, "node_modules"));
        console.log(`# npm install: ${installSeconds.toFixed(1)} s; node_modules ${(size / 1e6).toFixed(1)} MB ` +
            `(@batchwise/linux-x64 ${(du(join(app, "node_modules", "@batchwise", "linux-x64")) / 1e6).toFixed(1)} MB)`);
        assert.match(installLog, /using the prebuilt binary of @batchwise\/linux-x64/);
        assert.doesNotMatch(installLog, /building from source/);
        const pkg = join(app, "node_modules", "batchwise");
        for (const d of ["build", "build-native", "deps"]) assert.ok(!existsSync(join(pkg, d)), `batchwise/${d} exists: something was built`);
        assert.ok(installSeconds < 60, `npm install took ${installSeconds.toFixed(1)} s`);
        assert.ok(size < 80e6, `node_modules is ${(size / 1e6).toFixed(1)} MB`);
        // a clean package: no tests, benchmarks, device scripts or maps without their sources
        const files = spawnSync("find", [pkg, "-type", "f"], { encoding: "utf8" }).stdout.split("\n").map((f) => f.slice(pkg.length + 1));
        assert.ok(!files.some((f) => /^(test|dist\/test|scripts\/device|scripts\/bench-)/.test(f)), "tests or bench/device scripts shipped");
        for (const map of files.filter((f) => f.endsWith(".js.map"))) {
            const m = JSON.parse(readFileSync(join(pkg, map), "utf8"));
            for (const s of m.sources) assert.ok(existsSync(join(pkg, dirname(map), s)), `${map} points at ${s}, not shipped`);
        }
        assert.ok(files.includes("LICENSE") && /ggml authors/.test(readFileSync(join(pkg, "LICENSE"), "utf8")));
    });

    it("runs the README's first example", () => {
        const readme = readFileSync(join(root, "README.md"), "utf8");
        const section = readme.slice(readme.indexOf("## A first look"));
        const code = /```js\n([\s\S]*?)```/.exec(section)![1].replaceAll("/tmp/tiny.gguf", join(work, "tiny.gguf"));
        writeFileSync(join(app, "first-look.mjs"), code);
        const r = inApp("node", ["first-look.mjs"]);
        assert.equal(r.status, 0, out(r));
        assert.match(r.stdout, /^\d+ /, out(r));
    });

    it("is require()-able (CommonJS) and picks a CPU variant that runs here", () => {
        const r = inApp("node", ["-e", `
            const b = require("batchwise");
            const s = b.systemInfo();
            console.log(JSON.stringify({ fn: typeof b.createRandomModel, dynamic: s.dynamicBackends, libs: s.backendLibraries, errors: s.backendErrors, backends: s.backends, vocab: b.resolveVocab("qwen2") }));`]);
        assert.equal(r.status, 0, out(r));
        const s = JSON.parse(r.stdout);
        console.log(`# CPU backend loaded: ${s.libs.join(", ")}`);
        assert.equal(s.fn, "function");
        assert.equal(s.dynamic, true);
        assert.deepEqual(s.backends, ["CPU"]);
        assert.equal(s.libs.length, 1);
        assert.match(s.libs[0], /^libggml-cpu(-[a-z0-9_]+)?\.so$/);
        assert.deepEqual(s.errors, []);
        assert.match(s.vocab, /node_modules\/@batchwise\/vocab\/ggml-vocab-qwen2\.gguf$/, "the vocab comes from its package");
    });

    it("serves the demo model: npx batchwise serve, one request", async () => {
        // its own process group: npx, the shell it runs and the server get the SIGTERM a terminal's Ctrl-C would send
        const proc = spawn("npx", ["batchwise", "serve", "--port", "0"], { cwd: app, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
        let stderr = "", stdout = "";
        proc.stderr.on("data", (d) => (stderr += d));
        proc.stdout.on("data", (d) => (stdout += d));
        const exited = new Promise<void>((r) => proc.on("close", () => r()));
        const group = (sig: NodeJS.Signals) => {
            try {
                process.kill(-proc.pid!, sig);
            } catch {
                // gone
            }
        };
        try {
            const deadline = Date.now() + 180_000;
            while (!/ready on (http:\/\/\S+)/.test(stderr)) {
                assert.ok(Date.now() < deadline && proc.exitCode === null && proc.signalCode === null, `the server did not start:\n${stderr}`);
                await new Promise((r) => setTimeout(r, 100));
            }
            const base = /ready on (http:\/\/\S+)/.exec(stderr)![1];
            const res = await fetch(`${base}/v1/chat/completions`, {
                method: "POST", headers: { "content-type": "application/json", connection: "close" },
                body: JSON.stringify({ messages: [{ role: "user", content: "Write a haiku about GPUs." }], max_tokens: 16 }),
            });
            const body = await res.json() as any;
            assert.equal(res.status, 200, JSON.stringify(body));
            assert.equal(body.model, "demo");
            assert.equal(typeof body.choices[0].message.content, "string");
            assert.ok(body.usage.completion_tokens > 0);
            group("SIGTERM");
            await Promise.race([exited, new Promise((r) => setTimeout(r, 60_000))]);
            assert.match(stdout, /"msg":"stopping/, `the server did not drain on SIGTERM:\n${stdout}\n${stderr}`);
        } finally {
            group("SIGKILL");
        }
    });

    it("loads the addon in worker threads (as an Electron utility process or worker would)", () => {
        writeFileSync(join(app, "worker.mjs"), `
            import { parentPort, workerData } from "node:worker_threads";
            import { LlamaModel, systemInfo } from "batchwise";
            const model = await LlamaModel.load(workerData, {});
            const tokens = await model.tokenize("Hello from a worker");
            parentPort.postMessage({ n: tokens.length, libs: systemInfo().backendLibraries });
            model.dispose();
        `);
        writeFileSync(join(app, "workers.mjs"), `
            import { Worker } from "node:worker_threads";
            import { createRandomModel, LlamaModel, systemInfo } from "batchwise";
            const { path } = await createRandomModel({ vocabFrom: "qwen2", out: ${JSON.stringify(join(work, "workers.gguf"))}, layers: 1, embeddingSize: 64, heads: 2, kvHeads: 1, feedForwardSize: 64 });
            const run = () => new Promise((resolve, reject) => {
                const w = new Worker(new URL("./worker.mjs", import.meta.url), { workerData: path });
                w.once("message", resolve);
                w.once("error", reject);
            });
            const results = await Promise.all([run(), run()]);
            const model = await LlamaModel.load(path, {});
            const main = (await model.tokenize("Hello from a worker")).length;
            model.dispose();
            console.log(JSON.stringify({ main, results, libs: systemInfo().backendLibraries }));
        `);
        const r = inApp("node", ["workers.mjs"]);
        assert.equal(r.status, 0, out(r));
        const res = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
        assert.equal(res.results.length, 2);
        for (const w of res.results) {
            assert.equal(w.n, res.main);
            assert.deepEqual(w.libs, res.libs, "one set of backends for the process");
        }
    });

    it("prefers an installed CUDA package; where CUDA cannot load, runs on the CPU with a warning (an error with BATCHWISE_GPU=cuda)", (t) => {
        const cc = spawnSync("sh", ["-c", "command -v cc"], { encoding: "utf8" }).stdout.trim();
        if (!cc) return t.skip("no C compiler to make the stand-in CUDA library");
        // a stand-in @batchwise/linux-x64-cuda: the CPU package's files and a libggml-cuda.so that needs a libcuda.so.1
        // this machine lacks (as on a machine without the NVIDIA driver)
        const scope = join(app, "node_modules", "@batchwise");
        const fake = join(scope, "linux-x64-cuda");
        cpSync(join(scope, "linux-x64"), fake, { recursive: true });
        const setVersion = (v: string) => writeFileSync(join(fake, "package.json"),
            JSON.stringify({ ...JSON.parse(readFileSync(join(scope, "linux-x64", "package.json"), "utf8")), name: "@batchwise/linux-x64-cuda", version: v }));
        setVersion(JSON.parse(readFileSync(join(app, "node_modules", "batchwise", "package.json"), "utf8")).version);
        const stub = join(work, "stub");
        mkdirSync(stub);
        writeFileSync(join(stub, "cuda.c"), "int cuInit(unsigned int flags) { return flags ? 1 : 0; }\n");
        writeFileSync(join(stub, "backend.c"), "int cuInit(unsigned int); int batchwise_fake(void) { return cuInit(0); }\n");
        const mk = (args: string[]) => spawnSync(cc, args, { cwd: stub, encoding: "utf8" });
        let r = mk(["-shared", "-fPIC", "-o", "libcuda.so.1", "-Wl,-soname,libcuda.so.1", "cuda.c"]);
        assert.equal(r.status, 0, out(r));
        r = mk(["-shared", "-fPIC", "-o", join(fake, "prebuilds", "linux-x64", "libggml-cuda.so"), "backend.c", join(stub, "libcuda.so.1")]);
        assert.equal(r.status, 0, out(r));
        rmSync(join(stub, "libcuda.so.1"));
        const probe = `
            const warnings = [];
            process.on("warning", (w) => warnings.push(w.code + " " + w.message));
            (async () => {
                const b = require("batchwise");
                const { addonLocation } = await import(require.resolve("batchwise/package.json").replace(/package\\.json$/, "dist/lib/binding/native.js"));
                const s = b.systemInfo();
                const { path } = await b.createRandomModel({ vocabFrom: "qwen2", out: ${JSON.stringify(join(work, "fallback.gguf"))}, layers: 1, embeddingSize: 64, heads: 2, kvHeads: 1, feedForwardSize: 64 });
                const model = await b.LlamaModel.load(path, { gpuLayers: -1 });
                const n = (await model.tokenize("still runs")).length;
                model.dispose();
                await new Promise((r) => setImmediate(r));
                const loc = addonLocation();
                console.log(JSON.stringify({ pkg: loc.packageName, skipped: loc.skipped, cuda: s.cuda, errors: s.backendErrors, backends: s.backends, n, warnings }));
            })().catch((e) => { console.log(JSON.stringify({ error: e.code + " " + e.message })); });`;
        const run = (extra: NodeJS.ProcessEnv = {}) => {
            const p = inApp("node", ["-e", probe], extra);
            assert.equal(p.status, 0, out(p));
            return JSON.parse(p.stdout.trim().split("\n").at(-1)!);
        };
        try {
            let s = run();
            assert.equal(s.pkg, "@batchwise/linux-x64-cuda", JSON.stringify(s));
            assert.equal(s.cuda, false);
            assert.deepEqual(s.backends, ["CPU"]);
            assert.ok(s.n > 0);
            assert.equal(s.errors.length, 1);
            assert.match(s.errors[0], /^libggml-cuda\.so: (.*libcuda\.so\.1|loaded, but)/);
            assert.equal(s.warnings.length, 1, JSON.stringify(s.warnings));
            assert.match(s.warnings[0], /^BATCHWISE_CUDA_UNAVAILABLE @batchwise\/linux-x64-cuda: CUDA is not usable here .*running on the CPU\. Set BATCHWISE_GPU=cpu/);
            s = run({ BATCHWISE_GPU: "cpu" });
            assert.equal(s.pkg, "@batchwise/linux-x64");
            assert.deepEqual(s.warnings, []);
            assert.deepEqual(s.errors, []);
            assert.match(run({ BATCHWISE_GPU: "cuda" }).error, /^ERR_NATIVE_NOT_BUILT BATCHWISE_GPU=cuda, but .*CUDA is not usable here/);
            setVersion("0.0.1");
            s = run();
            assert.equal(s.pkg, "@batchwise/linux-x64", "a CUDA package of another version is passed over");
            assert.ok(s.skipped.some((k: string) => /^@batchwise\/linux-x64-cuda: version 0\.0\.1, batchwise is /.test(k)), JSON.stringify(s.skipped));
            assert.deepEqual(s.warnings, []);
        } finally {
            rmSync(fake, { recursive: true, force: true });
        }
    });

    it("asked to build from source without a toolchain: one message saying what to install, no stack", () => {
        const r = inApp("npm", ["rebuild", "batchwise", "--foreground-scripts"], { BATCHWISE_BUILD_FROM_SOURCE: "1" });
        assert.notEqual(r.status, 0);
        const text = out(r);
        assert.match(text, /\[batchwise\] error: building batchwise from source needs cmake \(3\.18 or newer\), a C\+\+ compiler \(g\+\+ or clang\+\+\), a C compiler \(gcc or clang\), make \(or ninja\), git, which are not installed/);
        assert.match(text, /apt-get install cmake g\+\+ make git/);
        assert.doesNotMatch(text, /^\s+at .+\(.+:\d+:\d+\)$/m, "a stack trace");
        // the prebuild still loads afterwards: a failed rebuild leaves the install as it was
        const again = inApp("node", ["-e", "console.log(require('batchwise').systemInfo().llamaTag)"]);
        assert.equal(again.status, 0, out(again));
    });
});
