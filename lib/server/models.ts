// The served models: one engine per name, looked up by a request's "model". Loading is the
// lifecycle's (lifecycle.ts); this file only knows names, engines and what a lookup answers.
import { basename } from "node:path";
import { BatchwiseError, Engine, ErrorCode } from "../index.js";
import { ApiError, badRequest } from "./errors.js";
import type { ServedModel } from "./options.js";

export interface ModelEntry {
    name: string;
    spec: ServedModel;
    /** Undefined while the model loads. */
    engine: Engine | undefined;
    created: number;
    warmupMs: number;
}

export class ModelRegistry {
    private readonly entries = new Map<string, ModelEntry>();

    constructor(specs: ServedModel[], private readonly retryAfter: number) {
        for (const spec of specs) {
            const name = spec.name ?? (spec.path ? basename(spec.path).replace(/\.gguf$/i, "") : undefined);
            if (!name) throw new BatchwiseError(ErrorCode.InvalidArgument, "a served model needs a name or a path");
            if (this.entries.has(name)) throw new BatchwiseError(ErrorCode.InvalidArgument, `two models are named '${name}': give them distinct names`);
            if (!spec.engine && !spec.path) throw new BatchwiseError(ErrorCode.InvalidArgument, `model '${name}' needs a path or an engine`);
            this.entries.set(name, { name, spec, engine: spec.engine, created: Math.floor(Date.now() / 1000), warmupMs: 0 });
        }
        if (this.entries.size === 0) throw new BatchwiseError(ErrorCode.InvalidArgument, "the server needs at least one model");
    }

    get names(): string[] {
        return [...this.entries.keys()];
    }

    list(): ModelEntry[] {
        return [...this.entries.values()];
    }

    has(name: string): boolean {
        return this.entries.has(name);
    }

    /** The entry named `name`, or a 404 in OpenAI's shape. */
    get(name: string): ModelEntry {
        const e = this.entries.get(name);
        if (!e) throw modelNotFound(name, this.names);
        return e;
    }

    /** The loaded engine for a request's "model" (the only one when it is left out); 503 while it loads. */
    lookup(model: string | undefined): { name: string; engine: Engine } {
        let e: ModelEntry;
        if (model === undefined) {
            if (this.entries.size > 1) throw badRequest(`'model' is required: this server has ${this.names.join(", ")}`, "model");
            e = this.entries.values().next().value!;
        } else {
            e = this.get(model);
        }
        if (!e.engine) throw new ApiError(503, `model '${e.name}' is still loading`, "service_unavailable_error", null, "not_ready", this.retryAfter);
        return { name: e.name, engine: e.engine };
    }

    async closeAll(): Promise<void> {
        await Promise.all(this.list().map((e) => e.engine?.close()));
    }
}

function modelNotFound(model: string, served: string[]): ApiError {
    return new ApiError(404, `The model '${model}' does not exist (this server has: ${served.join(", ")})`, "not_found_error", "model", "model_not_found");
}
