// Build settings shared by the install and build scripts: BATCHWISE_<NAME> in the environment, else
// npm config (`npm install --batchwise-<name>=...` sets npm_config_batchwise_<name>).
import { spawnSync } from "node:child_process";
import * as fsSync from "node:fs";
import { dirname, join } from "node:path";

export function setting(name) {
    const env = process.env[`BATCHWISE_${name}`];
    if (env !== undefined && env !== "") return env;
    const npm = process.env[`npm_config_batchwise_${name.toLowerCase()}`];
    return npm !== undefined && npm !== "" ? npm : undefined;
}

export function flag(name) {
    const v = setting(name);
    return v !== undefined && !["0", "false", "off", "no"].includes(String(v).toLowerCase());
}

/** A CUDA build's part of a build folder's name: cuda-<architectures> ("80-real;90a-real" -> cuda-80_real_90a_real). */
export function cudaFlavour(cudaArchs) {
    return `cuda-${cudaArchs.replace(/[^0-9a-z]+/gi, "_")}`;
}

/** The build configuration's name and folder (build-native/<flavour>): one per CPU/CUDA setting, kept between builds. */
export function buildFlavour() {
    return flag("CUDA") ? cudaFlavour(setting("CUDA_ARCHITECTURES") ?? "90a") : flag("NATIVE") ? "cpu-native" : "cpu";
}

/** The executable `name` on PATH, or null. */
export function onPath(name) {
    const { accessSync, statSync, constants } = fsSync;
    if (name.includes("/")) {
        try {
            accessSync(name, constants.X_OK);
            return statSync(name).isFile() ? name : null;
        } catch {
            return null;
        }
    }
    for (const dir of (process.env.PATH ?? "").split(":")) {
        if (!dir) continue;
        const p = `${dir}/${name}`;
        try {
            accessSync(p, constants.X_OK);
            if (statSync(p).isFile()) return p;
        } catch {
            // not here
        }
    }
    return null;
}

/**
 * What a source build needs and this machine lacks (cmake, a C and C++ compiler, make or ninja, git, and nvcc for
 * CUDA), as one message saying what to install; null when nothing is missing.
 */
export function missingToolchain({ cuda = false, git = true } = {}) {
    const missing = [];
    const cmake = onPath("cmake");
    if (!cmake) {
        missing.push("cmake (3.18 or newer)");
    } else {
        const v = /version (\d+)\.(\d+)/.exec(spawnSync(cmake, ["--version"], { encoding: "utf8" }).stdout ?? "");
        if (v && (Number(v[1]) < 3 || (Number(v[1]) === 3 && Number(v[2]) < 18))) missing.push(`cmake 3.18 or newer (found ${v[1]}.${v[2]})`);
    }
    const first = (cmd) => cmd?.trim().split(/\s+/).filter((w) => !/^(ccache|sccache)$/.test(w))[0];
    const cxx = process.env.CXX ? onPath(first(process.env.CXX)) : ["c++", "g++", "clang++"].map(onPath).find(Boolean);
    if (!cxx) missing.push(process.env.CXX ? `the C++ compiler CXX names (${process.env.CXX})` : "a C++ compiler (g++ or clang++)");
    const cc = process.env.CC ? onPath(first(process.env.CC)) : ["cc", "gcc", "clang"].map(onPath).find(Boolean);
    if (!cc) missing.push(process.env.CC ? `the C compiler CC names (${process.env.CC})` : "a C compiler (gcc or clang)");
    // cmake-js generates for ninja when it is installed, else for make
    if (!onPath("ninja") && !onPath("make") && !onPath("gmake")) missing.push("make (or ninja)");
    if (git && !onPath("git")) missing.push("git");
    if (cuda && !process.env.CUDACXX && !onPath("nvcc") && !fsSync.existsSync("/usr/local/cuda/bin/nvcc")) {
        missing.push("nvcc, from the CUDA toolkit (on PATH, in /usr/local/cuda/bin, or named by CUDACXX)");
    }
    if (missing.length === 0) return null;
    return (
        `building batchwise from source needs ${missing.join(", ")}, which ${missing.length === 1 ? "is" : "are"} not installed (or not on PATH).\n` +
        "  Debian/Ubuntu: sudo apt-get install cmake g++ make git    Fedora/RHEL: sudo dnf install cmake gcc-c++ make git\n" +
        "  Alpine: apk add cmake g++ make git    macOS: xcode-select --install && brew install cmake"
    );
}

/** The value after `name` in `args` (undefined when absent); `fail(message)` when the value is missing. */
export function optionValue(args, name, fail) {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    if (i + 1 >= args.length || args[i + 1].startsWith("--")) fail(`${name} needs a value`);
    return args[i + 1];
}

/**
 * How to run npm: the npm that runs this script (npm_execpath, under npm install or npm run), else the npm beside
 * this node (a Node install's lib/node_modules/npm), else npm on the PATH. [command, ...leading arguments].
 */
export function npmCommand() {
    const own = process.env.npm_execpath;
    if (own && /\.c?js$/.test(own)) return [process.execPath, own];
    const beside = join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "bin", "npm-cli.js");
    if (fsSync.existsSync(beside)) return [process.execPath, beside];
    return ["npm"];
}
