// API keys: with `apiKeys` set, every request needs 'Authorization: Bearer KEY' (or 'x-api-key: KEY', as
// Anthropic's clients send it; taken on every route) except the routes
// registered as probes (/health, /ready, /metrics, for the kubelet and Prometheus). A request for a
// route that does not exist needs one too, so that a client without a key learns nothing of the routes.
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyRequest } from "fastify";
import { shared } from "../context.js";
import { ApiError } from "../errors.js";

export const auth = shared("batchwise-auth", async (app, { ctx }) => {
    const keys = ctx.settings.keyDigests;
    if (keys.length === 0) return;
    app.addHook("onRequest", async (req) => {
        if (!req.routeOptions.config?.probe) authorize(req, keys);
    });
});

function authorize(req: FastifyRequest, keys: Buffer[]): void {
    const h = req.headers.authorization;
    const m = typeof h === "string" ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
    const x = req.headers["x-api-key"];
    // the Bearer key when there is one, else Anthropic's header
    const key = m ? m[1] : typeof x === "string" && x.trim().length > 0 ? x.trim() : undefined;
    let ok = false;
    if (key !== undefined) {
        const d = createHash("sha256").update(key).digest();
        // compare against every key, always, so the time taken says nothing about which matched
        for (const k of keys) ok = timingSafeEqual(d, k) || ok;
    }
    if (!ok) {
        throw new ApiError(401, key !== undefined ? "Incorrect API key provided." : "You didn't provide an API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.",
            "authentication_error", null, "invalid_api_key");
    }
}
