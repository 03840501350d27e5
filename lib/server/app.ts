// The fastify app: its options (limits, timeouts, the request id, Ajv), the shared plugins in the order
// their hooks run (request log, raw HTTP checks, CORS, auth, errors), then one plugin per route family.
// A new route family is a file in routes/ registered here; see docs/server.md ("How the server is built").
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import Fastify, { LogController, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import type { ServerContext } from "./context.js";
import { auth } from "./plugins/auth.js";
import { cors } from "./plugins/cors.js";
import { errorHandling, frameworkErrors } from "./plugins/errors.js";
import { RawHttp, rawHttp } from "./plugins/raw-http.js";
import { requestId, requestLog } from "./plugins/request-log.js";
import { chatRoutes } from "./routes/chat.js";
import { completionsRoutes } from "./routes/completions.js";
import { messagesRoutes } from "./routes/messages.js";
import { modelsRoutes } from "./routes/models.js";
import { probeRoutes } from "./routes/probes.js";
import { responsesRoutes } from "./routes/responses.js";
import { tokenizeRoutes } from "./routes/tokenize.js";

export function buildApp(ctx: ServerContext, logger: Logger | boolean | undefined): FastifyInstance {
    const { headersTimeoutMs, bodyLimit } = ctx.settings;
    const log = () => (logger === false ? undefined : (app.log as unknown as Logger));
    const raw = new RawHttp(ctx, log);
    const app = Fastify({
        loggerInstance: typeof logger === "object" ? logger : undefined,
        logger: typeof logger === "object" ? undefined : logger === false ? false : { level: "info" },
        logController: new LogController({ disableRequestLogging: true }), // one line a request, from the request-log plugin
        bodyLimit,
        requestIdHeader: false,
        genReqId: (req: IncomingMessage) => requestId(req.headers["x-request-id"]),
        ajv: { customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, verbose: true } },
        return503OnClosing: false,
        http: {
            // node's own clock for the headers (it also cuts a connection that sends nothing); the body's
            // is ours (RawHttp.watchBody), as node's requestTimeout is one fixed bound that a slow link would hit
            headersTimeout: headersTimeoutMs,
            requestTimeout: 0,
            // how often node looks for expired headers: the cut comes at most this late
            connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor((headersTimeoutMs || 10_000) / 10))),
            // node answers a missing Host with a bare 400; the raw-http plugin answers it in our shape
            requireHostHeader: false,
        },
        // what node's HTTP parser refuses (bad Content-Length, CR/LF or NUL in a header, chunked plus
        // Content-Length, headers too large, a headers timeout) never reaches a route: answer it here
        clientErrorHandler: (err: Error, socket: Duplex) => raw.onClientError(err, socket),
        // a URL that does not decode, or too long a path segment
        frameworkErrors: frameworkErrors(ctx),
    } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

    // only JSON bodies (fastify's parser, which also refuses __proto__ keys): a form or text/plain body
    // is what any web page can make a browser post here cross-site, with no preflight; those get 415
    app.removeContentTypeParser("text/plain");

    const opts = { ctx };
    // shared: their hooks run on every request, in this order
    void app.register(requestLog, opts);
    void app.register(rawHttp(raw), opts);
    void app.register(cors, opts); // before auth: a preflight is answered without a key
    void app.register(auth, opts);
    void app.register(errorHandling, opts);
    // the routes, each family in its own encapsulated context
    void app.register(probeRoutes, opts);
    void app.register(modelsRoutes, opts);
    void app.register(completionsRoutes, opts);
    void app.register(chatRoutes, opts);
    void app.register(responsesRoutes, opts);
    void app.register(tokenizeRoutes, opts);
    void app.register(messagesRoutes, opts);
    return app;
}
