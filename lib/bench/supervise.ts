// Starts a node program (here, `batchwise serve`) under a small supervisor process that kills it when the
// process that asked for it goes away, however it goes (a crash, SIGKILL, a test runner's timeout): the
// supervisor's stdin is a pipe from us, and its end means we are gone. Without this, a soak or a fuzz run
// that dies leaves a server running with nobody to stop it.
import { spawn, type ChildProcess } from "node:child_process";

const SUPERVISOR = `
const { spawn } = require("node:child_process");
const { constants } = require("node:os");
const child = spawn(process.execPath, JSON.parse(process.argv[1]), { stdio: ["ignore", "inherit", "inherit"] });
process.stderr.write("[supervised pid " + child.pid + "]\\n");
const kill = (s) => { try { child.kill(s); } catch {} };
process.stdin.on("end", () => kill("SIGKILL"));
process.stdin.on("error", () => kill("SIGKILL"));
process.stdin.resume();
for (const s of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(s, () => kill(s));
child.on("error", (e) => { process.stderr.write("[supervised error " + e.message + "]\\n"); process.exit(1); });
child.on("exit", (code, signal) => {
    if (signal) {
        process.stderr.write("[supervised exit signal " + signal + "]\\n");
        process.exit(128 + (constants.signals[signal] ?? 0));
    }
    process.exit(code ?? 1);
});
`;

export interface Supervised {
    /** The supervisor: signals sent to it reach the program; its exit code is the program's (128 + n for signal n). */
    proc: ChildProcess;
    /** The program's own pid (for /proc/PID/status), once it is known. */
    pid: Promise<number>;
    /** SIGKILLs the program (the supervisor then exits with 137). */
    kill: () => void;
}

/** Runs `node ...args` supervised; stdout and stderr are the program's. */
export function spawnSupervised(args: string[]): Supervised {
    // a process group of its own: a Ctrl-C in the terminal reaches us, and we decide what the program gets
    const proc = spawn(process.execPath, ["-e", SUPERVISOR, JSON.stringify(args)], { stdio: ["pipe", "pipe", "pipe"], detached: true });
    const pid = new Promise<number>((resolve, reject) => {
        let head = "";
        const onData = (d: Buffer) => {
            head += d.toString();
            const m = /\[supervised pid (\d+)\]/.exec(head);
            if (m) {
                proc.stderr!.off("data", onData);
                resolve(Number(m[1]));
            } else if (head.length > 65536) {
                proc.stderr!.off("data", onData);
                reject(new Error("the supervisor did not report the program's pid"));
            }
        };
        proc.stderr!.on("data", onData);
        proc.once("exit", () => reject(new Error("the supervisor exited before the program started")));
    });
    pid.catch(() => {});
    // our end of the pipe closes when we exit, however we exit: that is the supervisor's signal
    return { proc, pid, kill: () => proc.stdin!.end() };
}
