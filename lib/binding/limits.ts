// The limits the native addon enforces on values that requests carry (sampler parameters, grammars, JSON schemas)
// and on context options: one table, native/limits.h, read from the addon. The engine's intake and the server's
// schemas use these numbers, so that a value one layer takes the next takes too. Each is an inclusive maximum.
import { BatchwiseError, ErrorCode } from "./errors.js";
import { loadNative } from "./native.js";

export interface Limits {
    /** Top logprobs per sampled token (SamplerParams.logprobs; OpenAI's top_logprobs). */
    readonly maxLogprobs: number;
    /** Entries in one logitBias. */
    readonly maxLogitBias: number;
    /** Longest GBNF grammar, in UTF-8 bytes. */
    readonly maxGrammarBytes: number;
    /** Deepest nesting of parenthesized groups in a grammar (llama.cpp's parser recurses per level). */
    readonly maxGrammarNesting: number;
    /** Longest JSON schema, as JSON text in UTF-8 bytes. */
    readonly maxSchemaBytes: number;
    /** Deepest nesting of objects and arrays in a JSON schema's text. */
    readonly maxSchemaDepth: number;
    /**
     * Sum over a JSON schema's objects of (optional properties)^2: llama.cpp's converter takes time cubic in
     * them (1,000 in one object: 3.5 s on the JS thread), and this keeps it near 0.1 s.
     */
    readonly maxSchemaOptionalPropertiesSquared: number;
    /** Inputs of one ChatTemplates.apply, as JSON text in UTF-8 bytes (and a ChatParser's whole text). */
    readonly maxChatJsonBytes: number;
    /** Deepest nesting of objects and arrays in ChatTemplates.apply's inputs. */
    readonly maxChatJsonDepth: number;
    /** Longest chat template source. */
    readonly maxChatTemplateBytes: number;
    /** Entries in SamplerParams.grammarTriggers. */
    readonly maxGrammarTriggers: number;
    /** Longest trigger value (a word or a regex), in UTF-8 bytes. */
    readonly maxGrammarTriggerBytes: number;
    /** Longest grammarPrefill, reasoningBudget.prefill and reasoningBudget.message, in UTF-8 bytes. */
    readonly maxSamplerPrefillBytes: number;
    /** Longest reasoningBudget.startTag and endTags entry, in UTF-8 bytes. */
    readonly maxReasoningTagBytes: number;
    /** Entries in reasoningBudget.endTags. */
    readonly maxReasoningEndTags: number;
    /** CPU threads of a context (ContextOptions.threads, threadsBatch: ggml's GGML_MAX_N_THREADS). */
    readonly maxThreads: number;
    /** KV cells of a context (ContextOptions.contextSize). */
    readonly maxContextSize: number;
    /** Cells per block of a paged KV cache (ContextOptions.kvBlockSize). */
    readonly maxKvBlockSize: number;
}

const KEYS = [
    "maxLogprobs", "maxLogitBias", "maxGrammarBytes", "maxGrammarNesting", "maxSchemaBytes", "maxSchemaDepth",
    "maxSchemaOptionalPropertiesSquared", "maxChatJsonBytes", "maxChatJsonDepth", "maxChatTemplateBytes",
    "maxGrammarTriggers", "maxGrammarTriggerBytes", "maxSamplerPrefillBytes", "maxReasoningTagBytes", "maxReasoningEndTags",
    "maxThreads", "maxContextSize", "maxKvBlockSize",
] as const satisfies readonly (keyof Limits)[];

let table: Limits | undefined;

/** The addon's table, read once and checked (an addon built from older sources has none). */
function nativeLimits(): Limits {
    if (table) return table;
    const t = (loadNative() as { limits?: Partial<Record<keyof Limits, unknown>> }).limits;
    for (const k of KEYS) {
        if (typeof t?.[k] !== "number") {
            throw new BatchwiseError(ErrorCode.NativeNotBuilt,
                `the batchwise native addon has no limit '${k}': it was built from older sources (rebuild it with \`npm run build:native\`)`);
        }
    }
    return (table = t as Limits);
}

/**
 * The addon's limits, typed and frozen. Each is read from the addon on first use (importing this module does
 * not load the addon), so LIMITS can be imported where the addon may be missing.
 */
export const LIMITS: Limits = Object.freeze(
    Object.defineProperties({} as Limits, Object.fromEntries(KEYS.map((k) => [k, { enumerable: true, get: () => nativeLimits()[k] }]))),
);
