#pragma once
#include <napi.h>

#include <string>

namespace bw {
// jsonSchemaToGrammar(schemaJson: string): string -- llama.cpp's JSON-schema-to-GBNF converter (the one
// llama-server uses for response_format), from its common library.
Napi::Value json_schema_to_grammar_js(const Napi::CallbackInfo & info);

// Throws ERR_INVALID_ARGUMENT (field "grammar") for a GBNF grammar llama.cpp's parser must not be given: longer
// than limits::max_grammar_bytes, groups nested deeper than limits::max_grammar_nesting (the parser recurses per
// level), or a repetition {m,n} with n < m (it would make 2^64 rules). `what` starts the message ("the grammar").
void check_grammar_limits(const std::string & grammar, const char * what);
} // namespace bw
