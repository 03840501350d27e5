// GET /v1/models and /v1/models/:id: the served models, with their context length once loaded.
import type { ServerPlugin } from "../context.js";
import type { ModelEntry } from "../models.js";

const card = (e: ModelEntry) => ({ id: e.name, object: "model", created: e.created, owned_by: "batchwise", max_model_len: e.engine?.maxContext ?? null });

export const modelsRoutes: ServerPlugin = async (app, { ctx }) => {
    app.get("/v1/models", async () => ({ object: "list", data: ctx.models.list().map(card) }));
    app.get<{ Params: { id: string } }>("/v1/models/:id", async (req) => card(ctx.models.get(req.params.id)));
};
