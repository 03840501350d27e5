// The limits on what a request may carry: one table for the engine's intake and the server's schemas. The
// addon's own (logprobs, logit bias, grammars, schemas) come from its table (lib/binding/limits.ts, read from
// native/limits.h), so that a value the intake takes the addon takes too; the rest are the engine's.
import { LIMITS } from "../binding/limits.js";

export interface RequestLimits {
    /** Choices per prompt (n). */
    readonly maxChoices: number;
    /** Stop strings and stop token ids together. */
    readonly maxStops: number;
    /** Characters of one stop string. */
    readonly maxStopLength: number;
    /** Top logprobs per token (the addon's). */
    readonly maxLogprobs: number;
    /** Entries of a logit bias (the addon's). */
    readonly maxLogitBias: number;
    /** Characters of a cache salt. */
    readonly maxCacheSalt: number;
    /** Prompts in one completion request (a list of prompts). */
    readonly maxPrompts: number;
}

let table: RequestLimits | undefined;

/** The table, read once (on first use: the addon is loaded then, not when this module is imported). */
export function requestLimits(): RequestLimits {
    table ??= Object.freeze({
        maxChoices: 128, maxStops: 16, maxStopLength: 256, maxCacheSalt: 256, maxPrompts: 256,
        maxLogprobs: LIMITS.maxLogprobs, maxLogitBias: LIMITS.maxLogitBias,
    });
    return table;
}
