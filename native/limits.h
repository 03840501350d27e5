// The limits the addon enforces on values that requests carry (sampler parameters, grammars, JSON schemas) and
// on context options, in one table. They are exported to JS as the addon's `limits` object (read by
// lib/binding/limits.ts as LIMITS), so that the engine's intake and the server's schemas refuse exactly what the
// addon would: a value one layer takes, the next takes too. Each is an inclusive maximum.
#pragma once

#include <napi.h>

#include <cstdint>

namespace bw::limits {

// Top logprobs per sampled token (OpenAI's top_logprobs allows 20). setSampler's `logprobs`.
constexpr int32_t max_logprobs = 20;
// Entries in one logitBias.
constexpr int32_t max_logit_bias = 1024;

// llama.cpp's grammar parser and JSON-schema converter recurse once per level of nesting, on the calling thread's
// stack, and the converter's output grows with the square of a schema's depth: past these a grammar or schema is
// refused (ERR_INVALID_ARGUMENT) instead of overflowing the stack (a segfault) or taking gigabytes and seconds.
// Longest GBNF grammar, in UTF-8 bytes (a grammar of 20,000 alternatives, 148 KB, takes 1.4 s to load: the grammar's
// first stacks are deduplicated in quadratic time). Tool calling makes the grammar from the tools' schemas: for 30
// tools of an agent (Cline / OpenCode style) common writes 20-62 KB (MiniMax-M2 and GLM-4.6 the most, ~2 KB a tool),
// so this takes about 60 such tools; ChatTemplates.apply refuses more (field "tools") rather than the sampler.
constexpr int32_t max_grammar_bytes = 128 * 1024;
// Deepest nesting of parenthesized groups in a grammar.
constexpr int32_t max_grammar_nesting = 1000;
// Longest JSON schema, as JSON text in UTF-8 bytes.
constexpr int32_t max_schema_bytes = 1024 * 1024;
// Deepest nesting of objects and arrays in a JSON schema's text.
constexpr int32_t max_schema_depth = 128;
// The converter takes time cubic in the optional properties of an object (1,000 of them: 3.5 s, 2,000: 30 s): the
// sum over a schema's objects of (optional properties)^2 is kept to this, about 0.1 s of converting.
constexpr int32_t max_schema_optional_properties_squared = 256 * 256;

// Chat (ChatTemplates.apply, ChatParser). The inputs of one apply() as JSON text (messages, tools, schema): above
// the server's default body limit (16 MiB), so that a request the server takes is not refused here.
constexpr int32_t max_chat_json_bytes = 32 * 1024 * 1024;
// Deepest nesting of objects and arrays in apply()'s inputs: a tool's parameters schema (max_schema_depth) plus the
// levels around it (inputs, tools[], tool, function). nlohmann's parser recurses once per level.
constexpr int32_t max_chat_json_depth = max_schema_depth + 8;
// Longest chat template source (real ones are 1-30 KB).
constexpr int32_t max_chat_template_bytes = 1024 * 1024;

// Lazy grammars (setSampler's grammarTriggers): how many triggers, and the longest trigger value (a word, a regex).
// Qwen3-Coder's template gives one trigger per tool plus one (31 for 30 tools); the others one to four.
constexpr int32_t max_grammar_triggers = 256;
constexpr int32_t max_grammar_trigger_bytes = 4096;
// The text setSampler tokenizes and feeds to a sampler before the history: grammarPrefill, reasoningBudget.prefill,
// and the budget's message; and each of the budget's tags.
constexpr int32_t max_sampler_prefill_bytes = 64 * 1024;
constexpr int32_t max_reasoning_tag_bytes = 256;
// End tags of a reasoning budget.
constexpr int32_t max_reasoning_end_tags = 16;

// CPU threads of a context (ggml's GGML_MAX_N_THREADS: past it ggml fails to start them and aborts).
constexpr int32_t max_threads = 512;
// KV cells of a context.
constexpr int32_t max_context_size = 16 * 1024 * 1024;
// Cells per block of a paged KV cache.
constexpr int32_t max_kv_block_size = 4096;

// The table as a frozen JS object: { maxLogprobs, maxLogitBias, maxGrammarBytes, ... }.
Napi::Object to_js(Napi::Env env);

} // namespace bw::limits
