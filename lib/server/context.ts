// What the server's plugins and routes share: the pieces they are handed at registration (fastify
// plugin options), and what a route declares about itself in its route config.
import type { FastifyPluginAsync } from "fastify";
import type { RouteApi } from "./errors.js";
import type { Lifecycle } from "./lifecycle.js";
import type { ServerMetrics } from "./metrics.js";
import type { ModelRegistry } from "./models.js";
import type { ServerSettings } from "./options.js";
import type { RequestLog } from "./plugins/request-log.js";

export interface ServerContext {
    settings: ServerSettings;
    models: ModelRegistry;
    lifecycle: Lifecycle;
    metrics: ServerMetrics;
    requests: RequestLog;
}

/** Every plugin and route family is registered with `{ ctx }`. */
export interface ContextOptions {
    ctx: ServerContext;
}

export type ServerPlugin = FastifyPluginAsync<ContextOptions>;

declare module "fastify" {
    interface FastifyContextConfig {
        /**
         * The API a route speaks (its request's names for the engine's fields, and the field a prompt
         * error points at), read by the error handler: a route knows its kind from its registration.
         */
        api?: RouteApi;
        /** An infrastructure endpoint (/health, /ready, /metrics): no API key needed, logged at debug level. */
        probe?: boolean;
    }
}

/**
 * A plugin whose hooks and handlers apply to the whole server rather than to its own encapsulated
 * context (what the fastify-plugin package does, by the same symbol): auth, errors, logging, CORS.
 */
export function shared(name: string, plugin: ServerPlugin): ServerPlugin {
    return Object.assign(plugin, { [Symbol.for("skip-override")]: true, [Symbol.for("fastify.display-name")]: name });
}
