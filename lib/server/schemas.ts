// JSON schemas of the request bodies, checked by fastify (Ajv) before a handler runs. Fields follow
// OpenAI's API; the extras (top_k, min_p, ignore_eos, priority, cache_salt, ...) follow vLLM's names.
// Unknown fields are let through, as OpenAI-compatible servers do, except the known ones that would change
// the output and are not supported: structured.ts refuses those (REFUSED), each with a 400 naming it. A
// `description` is what a validation error says a field must be, where the schema alone would say it badly
// (the alternatives of a prompt).

import { requestLimits, type RequestLimits } from "../engine/limits.js";

// the engine's own limits, so that a field the schema lets through is one the engine takes
const nullable = (s: Record<string, unknown>) => ({ anyOf: [s, { type: "null" }] });
const int = (min?: number, max?: number) => nullable({ type: "integer", ...(min !== undefined && { minimum: min }), ...(max !== undefined && { maximum: max }) });
const num = (extra: Record<string, unknown>) => nullable({ type: "number", ...extra });

/** The request bodies' schemas, built once from the limits table (on first use: the addon is loaded by then). */
export interface BodySchemas {
    completionBody: object;
    chatBody: object;
    tokenizeBody: object;
    detokenizeBody: object;
}

let schemas: BodySchemas | undefined;

export function bodySchemas(): BodySchemas {
    schemas ??= build(requestLimits());
    return schemas;
}

function build(limits: RequestLimits): BodySchemas {
    const { maxChoices: MAX_CHOICES, maxLogitBias: MAX_LOGIT_BIAS, maxLogprobs: MAX_LOGPROBS, maxStopLength: MAX_STOP_LENGTH, maxStops: MAX_STOPS } = limits;
    const sampling = {
        model: { type: "string", minLength: 1 },
        max_tokens: int(1),
        temperature: num({ minimum: 0, maximum: 2 }),
        top_p: num({ exclusiveMinimum: 0, maximum: 1 }),
        n: int(1, MAX_CHOICES),
        stop: nullable({
            description: `a non-empty string of at most ${MAX_STOP_LENGTH} characters or an array of up to ${MAX_STOPS} such strings`,
            anyOf: [
                { type: "string", minLength: 1, maxLength: MAX_STOP_LENGTH },
                { type: "array", maxItems: MAX_STOPS, items: { type: "string", minLength: 1, maxLength: MAX_STOP_LENGTH } },
            ],
        }),
        stop_token_ids: nullable({ type: "array", maxItems: MAX_STOPS, items: { type: "integer", minimum: 0 } }),
        seed: int(0, 4294967294),
        presence_penalty: num({ minimum: -2, maximum: 2 }),
        frequency_penalty: num({ minimum: -2, maximum: 2 }),
        repetition_penalty: num({ exclusiveMinimum: 0, maximum: 10 }),
        logit_bias: nullable({
            type: "object", maxProperties: MAX_LOGIT_BIAS,
            propertyNames: { pattern: "^(0|[1-9][0-9]*)$", description: "a token id" },
            additionalProperties: { type: "number", minimum: -100, maximum: 100 },
        }),
        stream: nullable({ type: "boolean" }),
        stream_options: nullable({ type: "object", properties: { include_usage: nullable({ type: "boolean" }) } }),
        user: nullable({ type: "string" }),
        top_k: int(-1, 2 ** 31 - 1),
        min_p: num({ minimum: 0, maximum: 1 }),
        ignore_eos: nullable({ type: "boolean" }),
        priority: int(-(2 ** 31), 2 ** 31),
        cache_salt: nullable({ type: "string", maxLength: limits.maxCacheSalt }),
        penalty_last_n: int(-1, 2 ** 31 - 1),
        // the output constraints, at most one per request (structured.ts): OpenAI's, llama-server's, vLLM's
        response_format: nullable({
            type: "object",
            required: ["type"],
            properties: {
                type: { enum: ["text", "json_object", "json_schema"] },
                json_schema: {
                    type: "object",
                    properties: { name: { type: "string" }, schema: { type: "object" }, strict: nullable({ type: "boolean" }) },
                },
                schema: nullable({ type: "object" }),
            },
        }),
        grammar: nullable({ type: "string" }),
        json_schema: nullable({ type: "object" }),
        structured_outputs: nullable({
            type: "object",
            properties: {
                json: nullable({ anyOf: [{ type: "object" }, { type: "string" }, { type: "boolean" }], description: "a JSON schema object or its JSON text" }),
                regex: nullable({ type: "string", minLength: 1 }),
                choice: nullable({ type: "array", minItems: 1, items: { type: "string" } }),
                grammar: nullable({ type: "string", minLength: 1 }),
                json_object: nullable({ type: "boolean" }),
                disable_any_whitespace: nullable({ type: "boolean" }),
                disable_additional_properties: nullable({ type: "boolean" }),
                disable_fallback: nullable({ type: "boolean" }),
                backend: nullable({ type: "string" }),
            },
        }),
        guided_json: nullable({ anyOf: [{ type: "object" }, { type: "string" }, { type: "boolean" }], description: "a JSON schema object or its JSON text" }),
        guided_regex: nullable({ type: "string", minLength: 1 }),
        guided_choice: nullable({ type: "array", minItems: 1, items: { type: "string" } }),
        guided_grammar: nullable({ type: "string", minLength: 1 }),
        guided_decoding_backend: nullable({ type: "string" }),
    };

    const tokenArray = { type: "array", minItems: 1, items: { type: "integer", minimum: 0 }, description: "a non-empty array of token ids" };

    const completionBody = {
        type: "object",
        required: ["prompt"],
        properties: {
            ...sampling,
            prompt: {
                description: "a string, an array of strings, an array of token ids or an array of token-id arrays",
                anyOf: [
                    { type: "string" },
                    { type: "array", minItems: 1, maxItems: limits.maxPrompts, items: { type: "string" } },
                    tokenArray,
                    { type: "array", minItems: 1, maxItems: limits.maxPrompts, items: tokenArray },
                ],
            },
            suffix: nullable({ type: "string" }),
            echo: nullable({ type: "boolean" }),
            logprobs: int(0, MAX_LOGPROBS),
            best_of: int(1, MAX_CHOICES),
            add_special_tokens: nullable({ type: "boolean" }),
        },
    } as const;

    const contentPart = {
        type: "object",
        required: ["type"],
        properties: { type: { type: "string" }, text: { type: "string" } },
    };

    // a function's name as OpenAI allows it, and the separators MCP tool names use
    const functionName = { type: "string", pattern: "^[A-Za-z0-9_.:-]{1,128}$", description: "1-128 letters, digits, '_', '-', '.' or ':'" };
    const functionDef = {
        type: "object",
        required: ["name"],
        properties: { name: functionName, description: nullable({ type: "string" }), parameters: nullable({ type: "object" }), strict: nullable({ type: "boolean" }) },
    };
    const toolCall = {
        type: "object",
        required: ["function"],
        properties: {
            id: { type: "string" },
            type: { enum: ["function"] },
            function: { type: "object", required: ["name", "arguments"], properties: { name: { type: "string", minLength: 1 }, arguments: { type: "string" } } },
        },
    };
    const namedFunction = { type: "object", required: ["type", "function"], properties: { type: { enum: ["function"] }, function: { type: "object", required: ["name"], properties: { name: { type: "string" } } } } };

    const chatBody = {
        type: "object",
        required: ["messages"],
        properties: {
            ...sampling,
            messages: {
                type: "array",
                minItems: 1,
                items: {
                    type: "object",
                    required: ["role"],
                    properties: {
                        role: { type: "string", minLength: 1 },
                        content: nullable({ anyOf: [{ type: "string" }, { type: "array", items: contentPart }], description: "a string or an array of content parts" }),
                        name: { type: "string" },
                        tool_calls: nullable({ type: "array", items: toolCall }),
                        tool_call_id: nullable({ type: "string" }),
                        reasoning_content: nullable({ type: "string" }),
                    },
                },
            },
            max_completion_tokens: int(1),
            logprobs: nullable({ type: "boolean" }),
            top_logprobs: int(0, MAX_LOGPROBS),
            tools: nullable({
                type: "array", maxItems: 256,
                items: { type: "object", required: ["type"], properties: { type: { enum: ["function"], description: "'function' (the only tool type served)" }, function: functionDef } },
            }),
            tool_choice: nullable({ anyOf: [{ enum: ["auto", "none", "required"] }, namedFunction], description: "'auto', 'none', 'required' or { type: 'function', function: { name } }" }),
            parallel_tool_calls: nullable({ type: "boolean" }),
            functions: nullable({ type: "array", maxItems: 256, items: functionDef }),
            function_call: nullable({ anyOf: [{ enum: ["auto", "none"] }, { type: "object", required: ["name"], properties: { name: { type: "string" } } }], description: "'auto', 'none' or { name }" }),
            chat_template: nullable({ type: "string", minLength: 1 }),
            chat_template_kwargs: nullable({ type: "object" }),
            reasoning_effort: nullable({ enum: ["none", "minimal", "low", "medium", "high"] }),
            reasoning_budget_tokens: int(-1, 2 ** 31 - 1),
            thinking_budget_tokens: int(-1, 2 ** 31 - 1),
            add_generation_prompt: nullable({ type: "boolean" }),
            continue_final_message: nullable({ type: "boolean" }),
        },
    } as const;

    const tokenizeBody = {
        type: "object",
        properties: {
            model: { type: "string", minLength: 1 },
            prompt: { type: "string" },
            messages: chatBody.properties.messages,
            tools: chatBody.properties.tools,
            tool_choice: chatBody.properties.tool_choice,
            chat_template_kwargs: chatBody.properties.chat_template_kwargs,
            continue_final_message: chatBody.properties.continue_final_message,
            add_special_tokens: { type: "boolean" },
            add_generation_prompt: { type: "boolean" },
        },
        oneOf: [{ required: ["prompt"] }, { required: ["messages"] }],
    } as const;

    const detokenizeBody = {
        type: "object",
        required: ["tokens"],
        properties: {
            model: { type: "string", minLength: 1 },
            tokens: { type: "array", items: { type: "integer", minimum: 0 } },
        },
    } as const;
    return { completionBody, chatBody, tokenizeBody, detokenizeBody };
}
