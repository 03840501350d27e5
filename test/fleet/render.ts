// The template step: deploy/nginx/nginx.conf and deploy/haproxy/haproxy.cfg, as shipped, with the
// replicas' addresses and weights, the listening port and the file paths replaced, and nothing else.
// `sameApartFromSites` checks that: both texts are brought to one form where those are placeholders.

export interface Replica {
    /** HAProxy's server name (r1, r2, ...); nginx has none. */
    name: string;
    host: string;
    port: number;
    weight: number;
}

export interface RenderOptions {
    replicas: Replica[];
    /** The balancer's port on 127.0.0.1. */
    port: number;
    /** Folder for the pid, temp files, logs and sockets. */
    dir: string;
}

// nginx: a replica is a `server ADDR:PORT ...;` line inside an upstream block
const NGINX_SERVER = /^(\s*)server\s+(\S+):(\d+)((?:\s+[^;#]*)?);(.*)$/;
const NGINX_PATHS: [RegExp, string][] = [
    [/\/run\/nginx-batchwise\.pid/, "nginx.pid"],
    [/\/var\/lib\/nginx\/batchwise-body/, "body"],
    [/\/var\/lib\/nginx\/batchwise-proxy/, "proxy"],
    [/\/var\/log\/nginx\/batchwise\.log/, "access.log"],
];

export function renderNginx(shipped: string, o: RenderOptions): string {
    const out: string[] = [];
    let inUpstream = false;
    let emitted = false;
    for (const line of shipped.split("\n")) {
        if (/^\s*upstream\s+\S+\s*\{/.test(line)) {
            inUpstream = true;
            emitted = false;
        } else if (inUpstream && /^\s*\}/.test(line)) {
            inUpstream = false;
        }
        const m = inUpstream ? NGINX_SERVER.exec(line) : null;
        if (m) {
            // the first replica line is the pattern for all; the others go
            if (!emitted) {
                for (const r of o.replicas) {
                    const params = m[4].replace(/\bweight=\d+/, `weight=${r.weight}`);
                    out.push(`${m[1]}server ${r.host}:${r.port}${params};${m[5]}`);
                }
                emitted = true;
            }
            continue;
        }
        let l = line.replace(/^(\s*)listen\s+\d+;/, `$1listen 127.0.0.1:${o.port};`);
        for (const [re, file] of NGINX_PATHS) l = l.replace(re, `${o.dir}/${file}`);
        out.push(l);
    }
    return out.join("\n");
}

// haproxy: a replica is a `server NAME ADDR:PORT ...` line; in a backend whose servers `track` others the
// tracked name follows the replica's
const HAPROXY_SERVER = /^(\s*)server\s+(\S+)\s+(\S+):(\d+)(.*)$/;

export function renderHaproxy(shipped: string, o: RenderOptions): string {
    const out: string[] = [];
    let emitted = false;
    for (const line of shipped.split("\n")) {
        if (/^\s*(backend|frontend|listen|defaults|global)\b/.test(line)) emitted = false;
        const m = HAPROXY_SERVER.exec(line);
        if (m) {
            if (!emitted) {
                for (const r of o.replicas) {
                    const params = m[5].replace(/\bweight\s+\d+/, `weight ${r.weight}`).replace(/\btrack\s+([^/\s]+)\/\S+/, `track $1/${r.name}`);
                    out.push(`${m[1]}server ${r.name} ${r.host}:${r.port}${params}`);
                }
                emitted = true;
            }
            continue;
        }
        out.push(line
            .replace(/^(\s*)bind\s+:\d+/, `$1bind 127.0.0.1:${o.port}`)
            .replace(/\/run\/haproxy-batchwise\.sock/, `${o.dir}/haproxy.sock`));
    }
    return out.join("\n");
}

/**
 * The text with what a site changes made placeholders: replica lines (a run of them one line),
 * listen/bind ports, and the paths and sockets. Two texts equal under it differ in nothing else.
 */
export function sitePlaceholders(text: string): string {
    const out: string[] = [];
    for (const line of text.split("\n")) {
        let l = line;
        if (NGINX_SERVER.test(l) && !/^\s*#/.test(l)) l = l.replace(NGINX_SERVER, (_a, ind: string, _h, _p, params: string, rest: string) => `${ind}server <replica>${params.replace(/\bweight=\d+/, "weight=<w>")};${rest}`);
        else if (HAPROXY_SERVER.test(l) && !/^\s*#/.test(l)) l = l.replace(HAPROXY_SERVER, (_a, ind: string, _n, _h, _p, params: string) => `${ind}server <replica>${params.replace(/\bweight\s+\d+/, "weight <w>").replace(/\btrack\s+([^/\s]+)\/\S+/, "track $1/<replica>")}`);
        l = l.replace(/^(\s*)listen\s+\S+;/, "$1listen <port>;").replace(/^(\s*)bind\s+\S+/, "$1bind <port>");
        l = l.replace(/\/\S*?(?:nginx-batchwise\.pid|batchwise-body|batchwise-proxy|batchwise\.log|haproxy-batchwise\.sock|nginx\.pid|body|proxy|access\.log|haproxy\.sock)(?=[;\s]|$)/g, "<path>");
        if (out.length > 0 && l === out[out.length - 1] && /server <replica>/.test(l)) continue;
        out.push(l);
    }
    return out.join("\n");
}

export function sameApartFromSites(shipped: string, rendered: string): { same: boolean; firstDifference?: { shipped: string; rendered: string } } {
    const a = sitePlaceholders(shipped).split("\n");
    const b = sitePlaceholders(rendered).split("\n");
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
        if (a[i] !== b[i]) return { same: false, firstDifference: { shipped: a[i] ?? "<end>", rendered: b[i] ?? "<end>" } };
    }
    return { same: true };
}
