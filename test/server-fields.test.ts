// The request fields that decide what the output may be, through the real server: every structured-output
// constraint on both generation routes, streamed and not, with the official openai client (the output
// matches: a choice, the regex, JSON valid against the schema); the field a bad constraint is named by; the
// fields that would change the output and are not supported (each a 400 naming it, each neutral value a
// 200); the hints (a 200); and system_fingerprint on every response and chunk.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { requestField } from "../lib/server/errors.js";
import { chatApi, completionApi } from "../lib/server/openai.js";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { HINTS, REFUSED } from "../lib/server/structured.js";
import { gpu, gpuLayers, modelPath, tinyCoder, tinyQwen } from "./helpers.js";

const engineOptions = { gpuLayers, contextSize: 2048, maxSequences: 8, batchTokens: 512, flashAttention: gpu ? "on" as const : "auto" as const };

interface Sent { status: number; body: any; text: string }

async function post(url: string, path: string, body: unknown): Promise<Sent> {
    const r = await fetch(url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const text = await r.text();
    let parsed: unknown;
    try {
        parsed = JSON.parse(text);
    } catch {
        // a stream
    }
    return { status: r.status, body: parsed, text };
}

function sseChunks(text: string): any[] {
    return text.split("\n\n").map((b) => b.trim()).filter((l) => l.startsWith("data: ") && l !== "data: [DONE]").map((l) => JSON.parse(l.slice(6)));
}

// ---- what the outputs must be ----------------------------------------------------------------------

// two properties: on a random model every place JSON allows whitespace takes up to 22 characters of it, and each
// grammar-constrained token costs a pass over Qwen2's 151,936 tokens on CPU
const schema = {
    type: "object",
    properties: { n: { type: "integer", minimum: 0, maximum: 9 }, tag: { enum: ["x", "y"] } },
    required: ["n", "tag"],
    additionalProperties: false,
};

/** The small check a schema above asks for: exactly its keys, with their types and bounds. */
function fitsSchema(text: string): void {
    const v = JSON.parse(text);
    assert.deepEqual(Object.keys(v).sort(), ["n", "tag"], text);
    assert.ok(Number.isInteger(v.n) && v.n >= 0 && v.n <= 9, text);
    assert.ok(v.tag === "x" || v.tag === "y", text);
}

const isObjectJson = (text: string) => {
    const v = JSON.parse(text);
    assert.ok(typeof v === "object" && v !== null && !Array.isArray(v), text);
};

const regex = "(red|green|blue)-\\d{2}[a-c]?";
const matchesRegex = (text: string) => assert.match(text, new RegExp(`^(?:${regex})$`), text);
const choices = ["alpha", "beta \"quoted\"", "gamma\nnewline", "δέλτα"];
const isChoice = (text: string) => assert.ok(choices.includes(text), JSON.stringify(text));
const gbnf = 'root ::= ("yes" | "no") ", " [0-9]{3}';
const matchesGbnf = (text: string) => assert.match(text, /^(yes|no), [0-9]{3}$/, text);
/** JSON with no whitespace outside strings (the schema has none): what JSON.stringify writes. */
const compactJson = (text: string) => {
    fitsSchema(text);
    assert.equal(text, JSON.stringify(JSON.parse(text)));
};

/**
 * Each constraint, and how it is checked; `half`: a JSON schema taken by the same engine path as
 * response_format's (slow on CPU), run as a non-streamed completion and a streamed chat only.
 */
const CONSTRAINTS: { name: string; fields: Record<string, unknown>; check: (text: string) => void; half?: boolean }[] = [
    { name: "response_format json_schema", fields: { response_format: { type: "json_schema", json_schema: { name: "a", schema, strict: true } } }, check: fitsSchema },
    // any object is a grammar without end: a bias toward '}' (Qwen2's token 92) closes it soon on a random model
    { name: "response_format json_object", fields: { response_format: { type: "json_object" }, logit_bias: { 92: 8 } }, check: isObjectJson },
    { name: "response_format json_object with a schema (llama-server)", fields: { response_format: { type: "json_object", schema } }, check: fitsSchema, half: true },
    { name: "json_schema (llama-server)", fields: { json_schema: schema }, check: fitsSchema, half: true },
    { name: "grammar (llama-server)", fields: { grammar: gbnf }, check: matchesGbnf },
    { name: "structured_outputs.json", fields: { structured_outputs: { json: schema } }, check: fitsSchema },
    { name: "structured_outputs.json as JSON text", fields: { structured_outputs: { json: JSON.stringify(schema), backend: "xgrammar" } }, check: fitsSchema, half: true },
    { name: "structured_outputs.json without whitespace", fields: { structured_outputs: { json: schema, disable_any_whitespace: true } }, check: compactJson },
    { name: "structured_outputs.json_object", fields: { structured_outputs: { json_object: true }, logit_bias: { 92: 8 } }, check: isObjectJson },
    { name: "structured_outputs.regex", fields: { structured_outputs: { regex } }, check: matchesRegex },
    { name: "structured_outputs.choice", fields: { structured_outputs: { choice: choices } }, check: isChoice },
    { name: "structured_outputs.grammar", fields: { structured_outputs: { grammar: gbnf } }, check: matchesGbnf },
    { name: "guided_json", fields: { guided_json: schema, guided_decoding_backend: "outlines" }, check: fitsSchema, half: true },
    { name: "guided_regex", fields: { guided_regex: regex }, check: matchesRegex },
    { name: "guided_choice", fields: { guided_choice: choices }, check: isChoice },
    { name: "guided_grammar", fields: { guided_grammar: gbnf }, check: matchesGbnf },
];

// ---- the refusal table's test values -----------------------------------------------------------------

/** For each refused field: a value that would change the output, and the value that changes nothing (where there is one). */
const REFUSED_VALUES: Record<string, { bad: unknown; neutral?: unknown }> = {
    lora: { bad: [{ id: 0, scale: 1 }] }, lora_request: { bad: { lora_name: "x", lora_int_id: 1 } }, lora_adapters: { bad: ["x"] },
    adapter: { bad: "x" }, adapters: { bad: ["x"] }, prompt_logprobs: { bad: 1 }, best_of: { bad: 2, neutral: 1 },
    use_beam_search: { bad: true, neutral: false }, length_penalty: { bad: 0.5, neutral: 1 }, early_stopping: { bad: true, neutral: false },
    min_tokens: { bad: 5, neutral: 0 }, bad_words: { bad: ["x"], neutral: [] }, allowed_token_ids: { bad: [1, 2] }, truncate_prompt_tokens: { bad: 10 },
    include_stop_str_in_output: { bad: true, neutral: false }, skip_special_tokens: { bad: false, neutral: true },
    spaces_between_special_tokens: { bad: false, neutral: true }, typical_p: { bad: 0.5, neutral: 1 }, typ_p: { bad: 0.5, neutral: 1 },
    tfs_z: { bad: 0.9, neutral: 1 }, mirostat: { bad: 2, neutral: 0 }, dry_multiplier: { bad: 0.8, neutral: 0 }, xtc_probability: { bad: 0.5, neutral: 0 },
    top_n_sigma: { bad: 1.5, neutral: -1 }, dynatemp_range: { bad: 0.5, neutral: 0 }, min_keep: { bad: 5, neutral: 0 }, samplers: { bad: ["top_k"] },
    n_probs: { bad: 5, neutral: 0 }, post_sampling_probs: { bad: true, neutral: false }, n_predict: { bad: 5 }, repeat_penalty: { bad: 1.1, neutral: 1 },
    repeat_last_n: { bad: 64 }, t_max_predict_ms: { bad: 100 }, t_max_prompt_ms: { bad: 100 }, logits_processors: { bad: ["x"], neutral: [] },
    vllm_xargs: { bad: { a: 1 }, neutral: {} }, return_tokens_as_token_ids: { bad: true, neutral: false }, return_token_ids: { bad: true, neutral: false },
    prompt_embeds: { bad: "AAAA" }, image_data: { bad: [{ data: "x", id: 1 }] }, multimodal_data: { bad: ["x"] }, response_fields: { bad: ["content"] },
    structural_tag: { bad: "{}" }, guided_whitespace_pattern: { bad: " " }, echo: { bad: true, neutral: false }, add_special_tokens: { bad: true, neutral: false },
    audio: { bad: { voice: "alloy", format: "wav" } }, modalities: { bad: ["text", "audio"], neutral: ["text"] },
    prediction: { bad: { type: "content", content: "x" } }, web_search_options: { bad: {} }, verbosity: { bad: "low", neutral: "medium" },
    "stream_options.continuous_usage_stats": { bad: true, neutral: false },
};

const HINT_VALUES: Record<string, unknown> = {
    user: "u1", metadata: { k: "v" }, store: false, service_tier: "auto", safety_identifier: "s1", prompt_cache_key: "k1",
    stream_options: { include_usage: false }, request_id: "r1", guided_decoding_backend: "xgrammar", kv_transfer_params: {}, cache_prompt: true,
    id_slot: -1, n_keep: 0, mirostat_tau: 5, mirostat_eta: 0.1, dry_base: 1.75, dry_allowed_length: 2, dry_penalty_last_n: -1,
    dry_sequence_breakers: ["\n"], xtc_threshold: 0.1, dynatemp_exponent: 1,
};

/** A body with `value` at a dotted path ("stream_options.continuous_usage_stats"). */
function withField(base: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> {
    const keys = path.split(".");
    const out = { ...base };
    let at: Record<string, unknown> = out;
    for (const k of keys.slice(0, -1)) at = (at[k] = { ...(at[k] as object | undefined) }) as Record<string, unknown>;
    at[keys.at(-1)!] = value;
    return out;
}

describe("server: structured outputs, refused fields, hints, system_fingerprint", () => {
    let server: BatchwiseServer;
    let url: string;
    let client: OpenAI;

    before(async () => {
        server = await createServer({
            models: [
                { name: "qwen", path: await modelPath(tinyQwen), options: engineOptions },
                { name: "coder", path: await modelPath(tinyCoder), options: engineOptions },
            ],
            port: 0, logger: false, warmup: false,
        });
        await server.ready();
        url = server.url;
        client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
    });
    after(async () => {
        await server?.close();
    });

    const route = {
        completions: { path: "/v1/completions", base: { model: "qwen", prompt: "Answer:" } },
        chat: { path: "/v1/chat/completions", base: { model: "qwen", messages: [{ role: "user", content: "Answer." }] } },
    } as const;

    for (const c of CONSTRAINTS) {
        it(`${c.name}: the output follows it on both routes, ${c.half ? "a completion and a streamed chat" : "streamed and not"} (openai client)`, async () => {
            const common = { model: "qwen", max_tokens: 300, temperature: 0.8, seed: 11, ...c.fields };
            // the client sends the fields it does not know as they are
            const done = await client.completions.create({ ...common, prompt: "Answer:" } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
            assert.equal(done.choices[0].finish_reason, "stop", `the constraint ends the output: ${JSON.stringify(done.choices[0].text)}`);
            c.check(done.choices[0].text);
            if (!c.half) {
                const chat = await client.chat.completions.create({ ...common, messages: [{ role: "user", content: "Answer." }] } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming);
                assert.equal(chat.choices[0].finish_reason, "stop", JSON.stringify(chat.choices[0].message.content));
                c.check(chat.choices[0].message.content!);
            }

            let text = "";
            let finish: string | null = null;
            if (!c.half) {
                const s1 = await client.completions.create({ ...common, seed: 12, prompt: "Answer:", stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming);
                for await (const chunk of s1) for (const ch of chunk.choices) {
                    text += ch.text;
                    finish = ch.finish_reason ?? finish;
                }
                assert.equal(finish, "stop", JSON.stringify(text));
                c.check(text);
                text = "";
                finish = null;
            }
            const s2 = await client.chat.completions.create({ ...common, seed: 12, messages: [{ role: "user", content: "Answer." }], stream: true } as unknown as OpenAI.ChatCompletionCreateParamsStreaming);
            for await (const chunk of s2) for (const ch of chunk.choices) {
                text += ch.delta.content ?? "";
                finish = ch.finish_reason ?? finish;
            }
            assert.equal(finish, "stop", JSON.stringify(text));
            c.check(text);
        });
    }

    it("refuses two constraints at once, naming both, and a structured_outputs with none, two or an unknown one", async () => {
        for (const r of Object.values(route)) {
            const cases: [Record<string, unknown>, string, RegExp][] = [
                [{ grammar: gbnf, guided_regex: "a" }, "guided_regex", /'grammar' and 'guided_regex' both constrain the output/],
                [{ response_format: { type: "json_object" }, structured_outputs: { choice: ["a"] } }, "structured_outputs.choice", /'response_format' and 'structured_outputs.choice'/],
                [{ structured_outputs: { regex: "a", choice: ["a"] } }, "structured_outputs.choice", /'structured_outputs.regex' and 'structured_outputs.choice'/],
                [{ structured_outputs: {} }, "structured_outputs", /needs one of json, regex, choice, grammar or json_object/],
                [{ structured_outputs: { json_object: false } }, "structured_outputs", /needs one of/],
                [{ structured_outputs: { regex: "a", frobnicate: 1 } }, "structured_outputs.frobnicate", /not a structured-output option/],
                [{ structured_outputs: { structural_tag: "{}" } }, "structured_outputs.structural_tag", /not supported/],
                [{ structured_outputs: { regex: "a", whitespace_pattern: " *" } }, "structured_outputs.whitespace_pattern", /not supported/],
                [{ structured_outputs: { regex: "a", disable_any_whitespace: true } }, "structured_outputs.disable_any_whitespace", /JSON output only/],
            ];
            for (const [fields, param, message] of cases) {
                const res = await post(url, r.path, { ...r.base, max_tokens: 2, ...fields });
                assert.equal(res.status, 400, `${r.path} ${JSON.stringify(fields)}: ${res.text}`);
                assert.equal(res.body.error.param, param, res.text);
                assert.match(res.body.error.message, message);
            }
            // text is no constraint, and an empty grammar is none (llama-server's reading): either goes with another
            const ok = await post(url, r.path, { ...r.base, max_tokens: 2, response_format: { type: "text" }, grammar: "", guided_choice: ["a"] });
            assert.equal(ok.status, 200, ok.text);
        }
    });

    it("names a bad constraint by the request field it came from", async () => {
        const cases: [Record<string, unknown>, string][] = [
            [{ structured_outputs: { regex: "a(?=b)" } }, "structured_outputs.regex"],
            [{ guided_regex: "(a)\\1" }, "guided_regex"],
            [{ guided_choice: ["a", "\ud800"] }, "guided_choice[1]"],
            [{ grammar: "root ::= (" }, "grammar"],
            [{ guided_grammar: "root ::= nope" }, "guided_grammar"],
            [{ structured_outputs: { grammar: 'root ::= "a"{3,1}' } }, "structured_outputs.grammar"],
            [{ structured_outputs: { json: "{not json" } }, "structured_outputs.json"],
            [{ guided_json: 42 }, "guided_json"],
            [{ response_format: { type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/nope" } } } }, "response_format.json_schema.schema"],
            [{ response_format: { type: "json_object", schema: { $ref: "#/nope" } } }, "response_format.schema"],
            [{ json_schema: { $ref: "#/nope" } }, "json_schema"],
            [{ guided_json: { type: "object", properties: { a: { $ref: "#/x" } } } }, "guided_json"],
            [{ response_format: { type: "xml" } }, "response_format.type"],
        ];
        for (const r of Object.values(route)) {
            for (const [fields, param] of cases) {
                const res = await post(url, r.path, { ...r.base, max_tokens: 2, ...fields });
                assert.equal(res.status, 400, `${r.path} ${JSON.stringify(fields)}: ${res.text}`);
                assert.equal(res.body.error.param, param, res.text);
                assert.ok(res.body.error.message.startsWith(`'${param}'`), res.text);
            }
        }
    });

    it("refuses every field of the table that would change the output, and takes its neutral value", async () => {
        for (const entry of REFUSED) {
            const values = REFUSED_VALUES[entry.field];
            assert.ok(values, `no test values for '${entry.field}'`);
            for (const [name, r] of Object.entries(route)) {
                const applies = !entry.routes || entry.routes.includes(name as "chat" | "completions");
                const bad = await post(url, r.path, withField({ ...r.base, max_tokens: 1 }, entry.field, values.bad));
                if (!applies) {
                    // the other route has the field as its own (echo, add_special_tokens, best_of on completions), with its own checks
                    assert.notEqual(bad.body?.error?.code, "unsupported_parameter", `${r.path} ${entry.field}: ${bad.text}`);
                    continue;
                }
                assert.equal(bad.status, 400, `${r.path} ${entry.field}: ${bad.text}`);
                assert.equal(bad.body.error.param, entry.field, bad.text);
                assert.equal(bad.body.error.code, "unsupported_parameter", bad.text);
                assert.equal(bad.body.error.type, "invalid_request_error");
                assert.ok(bad.body.error.message.startsWith(`'${entry.field}' `), bad.text);
                const nul = await post(url, r.path, withField({ ...r.base, max_tokens: 1 }, entry.field, null));
                assert.equal(nul.status, 200, `${r.path} ${entry.field}: null is left out: ${nul.text}`);
                if ("neutral" in values) {
                    const ok = await post(url, r.path, withField({ ...r.base, max_tokens: 1 }, entry.field, values.neutral));
                    assert.equal(ok.status, 200, `${r.path} ${entry.field}=${JSON.stringify(values.neutral)}: ${ok.text}`);
                }
            }
        }
        // and the table's test values cover nothing it does not hold
        assert.deepEqual(Object.keys(REFUSED_VALUES).sort(), REFUSED.map((e) => e.field).sort());
    });

    it("takes the hints with a 200, and unknown fields as before", async () => {
        for (const r of Object.values(route)) {
            for (const h of HINTS) {
                assert.ok(h in HINT_VALUES, `no test value for the hint '${h}'`);
                const res = await post(url, r.path, { ...r.base, max_tokens: 1, [h]: HINT_VALUES[h] });
                assert.equal(res.status, 200, `${r.path} ${h}: ${res.text}`);
            }
            const res = await post(url, r.path, { ...r.base, max_tokens: 1, some_future_field: { x: 1 } });
            assert.equal(res.status, 200, res.text);
        }
    });

    it("supports add_special_tokens on completions and penalty_last_n on both routes", async () => {
        const withBos = await post(url, "/v1/completions", { model: "coder", prompt: "hello", max_tokens: 1, add_special_tokens: true });
        const without = await post(url, "/v1/completions", { model: "coder", prompt: "hello", max_tokens: 1, add_special_tokens: false });
        assert.equal(withBos.status, 200, withBos.text);
        // the llama tokenizer adds BOS: one prompt token more
        assert.equal(withBos.body.usage.prompt_tokens, without.body.usage.prompt_tokens + 1);
        for (const r of Object.values(route)) {
            const ok = await post(url, r.path, { ...r.base, max_tokens: 1, repetition_penalty: 1.3, penalty_last_n: 16 });
            assert.equal(ok.status, 200, ok.text);
            const bad = await post(url, r.path, { ...r.base, max_tokens: 1, penalty_last_n: -2 });
            assert.equal(bad.status, 400, bad.text);
            assert.equal(bad.body.error.param, "penalty_last_n");
        }
    });

    it("puts a stable system_fingerprint on every response and stream chunk, one per model", async () => {
        const fps = new Set<string>();
        for (const r of Object.values(route)) {
            for (let i = 0; i < 2; i++) {
                const res = await post(url, r.path, { ...r.base, max_tokens: 2 });
                assert.equal(res.status, 200, res.text);
                assert.match(res.body.system_fingerprint, /^fp_[0-9a-f]{12}$/);
                fps.add(res.body.system_fingerprint);
            }
            const streamed = await post(url, r.path, { ...r.base, max_tokens: 3, stream: true, stream_options: { include_usage: true } });
            const chunks = sseChunks(streamed.text);
            assert.ok(chunks.length >= 3, streamed.text);
            for (const c of chunks) fps.add(c.system_fingerprint);
        }
        assert.equal(fps.size, 1, [...fps].join(", "));
        const viaClient = await client.chat.completions.create({ model: "qwen", messages: [{ role: "user", content: "x" }], max_tokens: 1 });
        assert.equal(viaClient.system_fingerprint, [...fps][0]);
        // another model file is another backend
        const coder = await post(url, "/v1/completions", { model: "coder", prompt: "x", max_tokens: 1 });
        assert.match(coder.body.system_fingerprint, /^fp_[0-9a-f]{12}$/);
        assert.notEqual(coder.body.system_fingerprint, [...fps][0]);
        // another server on the same file with the same options is the same backend; other options, another
        const fingerprintOf = async (options: typeof engineOptions) => {
            const other = await createServer({ models: [{ name: "qwen", path: await modelPath(tinyQwen), options }], port: 0, logger: false, warmup: false });
            try {
                await other.ready();
                return (await post(other.url, "/v1/completions", { prompt: "x", max_tokens: 1 })).body.system_fingerprint;
            } finally {
                await other.close();
            }
        };
        assert.equal(await fingerprintOf(engineOptions), [...fps][0]);
        assert.notEqual(await fingerprintOf({ ...engineOptions, contextSize: 1024 }), [...fps][0]);
    });

    it("maps the engine's grammar and schema errors to the field the constraint came from (route tables)", () => {
        for (const api of [chatApi, completionApi]) {
            const name = (field: string, body: object) => requestField(field, api, { body });
            assert.equal(name("grammar", { guided_regex: "a" }), "guided_regex");
            assert.equal(name("grammar", { structured_outputs: { choice: ["a"] } }), "structured_outputs.choice");
            assert.equal(name("grammar", { grammar: "root ::= x" }), "grammar");
            assert.equal(name("grammar", { response_format: { type: "json_object" } }), "response_format");
            assert.equal(name("schema", { guided_json: {} }), "guided_json");
            assert.equal(name("schema", { json_schema: {} }), "json_schema");
            assert.equal(name("schema", { response_format: { type: "json_schema", json_schema: { schema: {} } } }), "response_format.json_schema.schema");
            assert.equal(name("responseFormat.schema.properties", { structured_outputs: { json: {} } }), "structured_outputs.json.properties");
            // without a constraint in the body (a malformed one is refused before), the OpenAI names
            assert.equal(name("responseFormat.schema", {}), "response_format.json_schema.schema");
            assert.equal(name("grammar", { grammar: "a", guided_regex: "b" }), "grammar");
        }
    });
});
