// JSON schema to GBNF grammar, through llama.cpp's common library.
#include "grammar.h"

#include "common.h"
#include "limits.h"

#include "json-schema-to-grammar.h"
#include "json.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_set>

namespace bw {

// ---- grammar limits --------------------------------------------------------------------------

// Skips what llama.cpp's grammar parser skips between the parts of a repetition: spaces and # comments.
static size_t skip_space(const std::string & g, size_t i, size_t end) {
    while (i < end) {
        const char c = g[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
            i++;
        } else if (c == '#') {
            while (i < end && g[i] != '\r' && g[i] != '\n') {
                i++;
            }
        } else {
            break;
        }
    }
    return i;
}

static size_t skip_digits(const std::string & g, size_t i, size_t end) {
    while (i < end && g[i] >= '0' && g[i] <= '9') {
        i++;
    }
    return i;
}

// Whether the decimal digits a < b, at any length.
static bool digits_less(std::string a, std::string b) {
    a.erase(0, std::min(a.find_first_not_of('0'), a.size()));
    b.erase(0, std::min(b.find_first_not_of('0'), b.size()));
    return a.size() != b.size() ? a.size() < b.size() : a < b;
}

// At g[i] == '{': the length of a bounded repetition {m,n} with n < m there (looked for within 4096 bytes), else 0.
static size_t reversed_repetition(const std::string & g, size_t i) {
    const size_t end = std::min(g.size(), i + 4096);
    size_t j = skip_space(g, i + 1, end);
    const size_t m0 = j;
    j = skip_digits(g, j, end);
    const size_t m1 = j;
    j = skip_space(g, j, end);
    if (m1 == m0 || j >= end || g[j] != ',') {
        return 0;
    }
    j = skip_space(g, j + 1, end);
    const size_t n0 = j;
    j = skip_digits(g, j, end);
    const size_t n1 = j;
    j = skip_space(g, j, end);
    if (n1 == n0 || j >= end || g[j] != '}') {
        return 0;
    }
    return digits_less(g.substr(n0, n1 - n0), g.substr(m0, m1 - m0)) ? j + 1 - i : 0;
}

void check_grammar_limits(const std::string & grammar, const char * what) {
    auto fail = [&](const std::string & reason) {
        return bw_error(code::invalid_argument, std::string(what) + " " + reason, "grammar", reason);
    };
    if (grammar.size() > (size_t) limits::max_grammar_bytes) {
        throw fail("is " + std::to_string(grammar.size()) + " bytes long, more than the " +
                   std::to_string(limits::max_grammar_bytes) + " allowed");
    }
    // group nesting, outside string literals, character classes and comments
    int32_t depth = 0;
    for (size_t i = 0; i < grammar.size(); i++) {
        const char c = grammar[i];
        if (c == '"' || c == '[') {
            const char close = c == '"' ? '"' : ']';
            for (i++; i < grammar.size() && grammar[i] != close; i++) {
                if (grammar[i] == '\\') {
                    i++;
                }
            }
        } else if (c == '#') {
            while (i < grammar.size() && grammar[i] != '\n' && grammar[i] != '\r') {
                i++;
            }
        } else if (c == '(') {
            if (++depth > limits::max_grammar_nesting) {
                throw fail("nests groups more than " + std::to_string(limits::max_grammar_nesting) + " deep");
            }
        } else if (c == ')' && depth > 0) {
            depth--;
        } else if (c == '{') {
            // S{m,n} with n < m: llama.cpp counts n - m optional copies in an unsigned integer, so it would try
            // to make 2^64 rules (memory until the process is killed)
            if (const size_t n = reversed_repetition(grammar, i)) {
                throw fail("repeats something " + grammar.substr(i, n) + ": the most times is below the least");
            }
        }
    }
}

// ---- JSON schema limits ----------------------------------------------------------------------

static bw_error schema_error(const std::string & reason) {
    return bw_error(code::invalid_argument, "the JSON schema " + reason, "schema", reason);
}

int32_t json_text_depth(const std::string & text, int32_t limit) {
    int32_t depth = 0;
    int32_t most  = 0;
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (c == '"') {
            for (i++; i < text.size() && text[i] != '"'; i++) {
                if (text[i] == '\\') {
                    i++;
                }
            }
        } else if (c == '{' || c == '[') {
            most = std::max(most, ++depth);
            if (most > limit) {
                return most;
            }
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return most;
}

void check_schema_text(const std::string & text) {
    if (text.size() > (size_t) limits::max_schema_bytes) {
        throw schema_error("is " + std::to_string(text.size()) + " bytes long, more than the " +
                           std::to_string(limits::max_schema_bytes) + " allowed");
    }
    if (json_text_depth(text, limits::max_schema_depth) > limits::max_schema_depth) {
        throw schema_error("nests objects and arrays more than " + std::to_string(limits::max_schema_depth) + " deep");
    }
}

// The sum over the schema's objects of (optional properties)^2, kept to its limit. Recursion is bounded by the
// nesting check_schema_text allowed.
void check_schema_cost(const common_json & v, int64_t & cost) {
    if (v.is_array()) {
        for (const auto & x : v) {
            check_schema_cost(x, cost);
        }
        return;
    }
    if (!v.is_object()) {
        return;
    }
    if (v.contains("properties") && v.at("properties").is_object()) {
        std::unordered_set<std::string> required;
        if (v.contains("required") && v.at("required").is_array()) {
            for (const auto & r : v.at("required")) {
                if (r.is_string()) {
                    required.insert(r.get<std::string>());
                }
            }
        }
        int64_t optional = 0;
        for (const auto & kv : v.at("properties").items()) {
            optional += required.count(kv.key()) == 0;
        }
        cost += optional * optional;
        if (cost > limits::max_schema_optional_properties_squared) {
            int32_t per_object = 1;
            while ((int64_t) (per_object + 1) * (per_object + 1) <= limits::max_schema_optional_properties_squared) {
                per_object++;
            }
            throw schema_error("has too many optional properties (an object with " + std::to_string(optional) + "): at most " +
                               std::to_string(per_object) + " in one object, fewer over several");
        }
    }
    for (const auto & x : v) {
        check_schema_cost(x, cost);
    }
}

std::string schema_conversion_error(const std::exception & e) {
    std::string msg = e.what();
    const std::string prefix = "JSON schema conversion failed:\n";
    if (msg.rfind(prefix, 0) == 0) {
        msg = msg.substr(prefix.size());
    }
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) {
        msg.pop_back();
    }
    return msg;
}

Napi::Value json_schema_to_grammar_js(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        const std::string text = arg_string(info, 0, "schema (JSON text)", "schema");
        check_schema_text(text);
        common_json schema;
        try {
            schema = common_json::parse(text);
        } catch (const std::exception & e) {
            throw bw_error(code::invalid_argument, std::string("the schema is not valid JSON: ") + e.what(), "schema",
                           std::string("is not valid JSON: ") + e.what());
        }
        int64_t cost = 0;
        check_schema_cost(schema, cost);
        try {
            return Napi::String::New(env, json_schema_to_grammar(schema, true));
        } catch (const std::exception & e) {
            const std::string msg = schema_conversion_error(e);
            throw bw_error(code::invalid_argument, "the JSON schema cannot be turned into a grammar: " + msg, "schema",
                           "cannot be turned into a grammar: " + msg);
        }
    });
}

} // namespace bw
