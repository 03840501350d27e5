#pragma once
#include <napi.h>

namespace bw {
// jsonSchemaToGrammar(schemaJson: string): string -- llama.cpp's JSON-schema-to-GBNF converter (the one
// llama-server uses for response_format), from its common library.
Napi::Value json_schema_to_grammar_js(const Napi::CallbackInfo & info);
} // namespace bw
