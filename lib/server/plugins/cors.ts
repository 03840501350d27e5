// CORS, when `corsOrigins` is set: an allowed Origin gets Access-Control-Allow-Origin on every
// response, and its preflight (OPTIONS with Access-Control-Request-Method) a 204 with the methods and
// headers allowed. A preflight is answered before the API key is checked (registered before auth):
// browsers never send credentials on one.
import type { FastifyReply, FastifyRequest } from "fastify";
import { BatchwiseError, ErrorCode } from "../../index.js";
import { shared } from "../context.js";
import { ApiError } from "../errors.js";

export const cors = shared("batchwise-cors", async (app, { ctx }) => {
    const allow = ctx.settings.cors;
    if (!allow) return;
    app.addHook("onRequest", async (req, reply) => {
        if (corsHeaders(allow, req, reply)) return reply; // a preflight, answered
    });
});

/** Sets the CORS headers of a response; returns true when it answered a preflight. */
function corsHeaders(allow: Set<string> | "*", req: FastifyRequest, reply: FastifyReply): boolean {
    const origin = req.headers.origin;
    const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
    if (allow !== "*") reply.header("vary", "Origin");
    const allowed = typeof origin === "string" && (allow === "*" || allow.has(canonicalOrigin(origin) ?? ""));
    if (allowed) {
        reply.header("access-control-allow-origin", allow === "*" ? "*" : origin);
        reply.header("access-control-expose-headers", "x-request-id, retry-after");
    }
    if (!preflight || typeof origin !== "string") return false;
    if (!allowed) {
        throw new ApiError(403, `origin '${origin.slice(0, 200)}' is not allowed to call this server (allowed: --cors-origin)`, "invalid_request_error", null, "origin_not_allowed");
    }
    // the headers it asked for (the openai SDK sends x-stainless-* ones), and ours
    const asked = String(req.headers["access-control-request-headers"] ?? "").split(",").map((h) => h.trim().toLowerCase()).filter((h) => /^[!#$%&'*+.^_`|~0-9a-z-]{1,100}$/.test(h));
    const headers = [...new Set(["authorization", "content-type", "x-request-id", ...asked])];
    void reply.code(204)
        .header("access-control-allow-methods", "GET, POST, OPTIONS")
        .header("access-control-allow-headers", headers.join(", "))
        .header("access-control-max-age", "600")
        .send();
    return true;
}

/** An origin as browsers send it (scheme://host[:port], no default port), or undefined for what is not one. */
function canonicalOrigin(s: string): string | undefined {
    let u: URL;
    try {
        u = new URL(s);
    } catch {
        return undefined;
    }
    if (!u.host || (u.pathname !== "" && u.pathname !== "/") || u.search || u.hash || u.username || u.password) return undefined;
    // URL.origin is "null" for schemes it does not know (chrome-extension://, vscode-webview://)
    return u.origin !== "null" ? u.origin : `${u.protocol}//${u.host}`;
}

/** A `corsOrigins` entry: "*", or an origin such as http://localhost:3000 (a trailing slash is dropped). */
export function parseOrigin(s: string): string {
    const t = typeof s === "string" ? s.trim() : "";
    if (t === "*") return t;
    const o = canonicalOrigin(t);
    if (!o) throw new BatchwiseError(ErrorCode.InvalidArgument, `'${s}' is not an origin: expected '*' or scheme://host[:port], such as http://localhost:3000`);
    return o;
}
