#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "json.h"

namespace bw {
// jsonSchemaToGrammar(schemaJson: string): string -- llama.cpp's JSON-schema-to-GBNF converter (the one
// llama-server uses for response_format), from its common library.
Napi::Value json_schema_to_grammar_js(const Napi::CallbackInfo & info);

// What llama.cpp's JSON-schema converter said was wrong, without its "JSON schema conversion failed:" heading.
std::string schema_conversion_error(const std::exception & e);

// Throws ERR_INVALID_ARGUMENT (field "grammar") for a GBNF grammar llama.cpp's parser must not be given: longer
// than limits::max_grammar_bytes, groups nested deeper than limits::max_grammar_nesting (the parser recurses per
// level), or a repetition {m,n} with n < m (it would make 2^64 rules). `what` starts the message ("the grammar").
void check_grammar_limits(const std::string & grammar, const char * what);

// The deepest nesting of objects and arrays in JSON text (strings skipped), counted up to just past `limit`:
// checked before nlohmann's parser, which recurses once per level, is given the text.
int32_t json_text_depth(const std::string & text, int32_t limit);

// The JSON-schema limits jsonSchemaToGrammar applies (ERR_INVALID_ARGUMENT, field "schema"): the text's size and
// nesting (limits::max_schema_bytes, max_schema_depth), checked before it is parsed, then the converter's cost
// (limits::max_schema_optional_properties_squared), added to `cost` over the schemas of one request.
void check_schema_text(const std::string & text);
void check_schema_cost(const common_json & schema, int64_t & cost);
} // namespace bw
