// JSON schema to GBNF grammar, through llama.cpp's common library.
#include "grammar.h"

#include "common.h"

#include "json-schema-to-grammar.h"
#include "json.h"

#include <stdexcept>
#include <string>

namespace bw {

Napi::Value json_schema_to_grammar_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        const std::string text = arg_string(info, 0, "schema (JSON text)", "schema");
        common_json schema;
        try {
            schema = common_json::parse(text);
        } catch (const std::exception & e) {
            throw bw_error(code::invalid_argument, std::string("the schema is not valid JSON: ") + e.what(), "schema",
                           std::string("is not valid JSON: ") + e.what());
        }
        try {
            return Napi::String::New(env, json_schema_to_grammar(schema, true));
        } catch (const std::exception & e) {
            std::string msg = e.what();
            const std::string prefix = "JSON schema conversion failed:\n";
            if (msg.rfind(prefix, 0) == 0) {
                msg = msg.substr(prefix.size());
            }
            while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) {
                msg.pop_back();
            }
            throw bw_error(code::invalid_argument, "the JSON schema cannot be turned into a grammar: " + msg, "schema",
                           "cannot be turned into a grammar: " + msg);
        }
    });
}

} // namespace bw
