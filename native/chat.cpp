#include "chat.h"

#include "chat_parser.h"
#include "grammar.h"
#include "limits.h"

#include "json-schema-to-grammar.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

namespace bw {

Napi::Function chat_templates_wrap::define(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "ChatTemplates", {
        StaticMethod<&chat_templates_wrap::create>("create"),
        InstanceMethod<&chat_templates_wrap::apply>("apply"),
        InstanceMethod<&chat_templates_wrap::dispose>("dispose"),
        InstanceAccessor<&chat_templates_wrap::get_source>("source"),
        InstanceAccessor<&chat_templates_wrap::get_caps>("caps"),
        InstanceAccessor<&chat_templates_wrap::get_disposed>("disposed"),
    });
    env_of(env).chat_templates_ctor = Napi::Persistent(fn);
    return fn;
}

// ChatTemplates.create(model, { template? }): the template's source, or a llama.cpp built-in name ("chatml", "llama3")
Napi::Value chat_templates_wrap::create(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        if (info.Length() < 1) {
            throw arg_error(code::invalid_argument, "model", "must be a Model");
        }
        model_wrap::unwrap(info[0]);
        Napi::Object o = opt_object(info, 1, "chat template options");
        return env_of(env).chat_templates_ctor.New({ Napi::External<void>::New(env, nullptr), info[0], o });
    });
}

static bw_error template_error(const std::string & reason) {
    return bw_error(code::template_failed, "the chat template " + reason, "template", reason);
}

// What an exception from llama.cpp says, cut to a length that fits a message.
static std::string short_what(const std::exception & e, size_t max = 400) {
    std::string s = e.what();
    if (s.size() > max) {
        s = s.substr(0, max) + "...";
    }
    return s;
}

static bool is_builtin_name(const std::string & s) {
    std::vector<const char *> names(256);
    const int32_t n = llama_chat_builtin_templates(names.data(), names.size());
    for (int32_t i = 0; i < std::min<int32_t>(n, (int32_t) names.size()); i++) {
        if (s == names[i]) {
            return true;
        }
    }
    return false;
}

chat_templates_wrap::chat_templates_wrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<chat_templates_wrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsExternal()) {
        throw make_error(env, code::invalid_argument, "ChatTemplates cannot be constructed directly: use ChatTemplates.create()");
    }
    guard(env, [&]() {
        model_wrap * m = model_wrap::unwrap(info[1]);
        Napi::Object o = info[2].As<Napi::Object>();
        std::string src;
        if (has(o, "template")) {
            src = get_str(o, "template", "");
            if (src.empty()) {
                throw template_error("is empty");
            }
        } else {
            const char * t = llama_model_chat_template(m->get(), nullptr);
            if (!t || !*t) {
                throw template_error("is missing: the model has none, pass one in options.template");
            }
            src = t;
        }
        if (src.size() > (size_t) limits::max_chat_template_bytes) {
            throw template_error("is " + std::to_string(src.size()) + " bytes long, more than the " +
                                 std::to_string(limits::max_chat_template_bytes) + " allowed");
        }
        const llama_vocab * vocab = m->vocab();
        auto piece = [&](llama_token t) { return t == LLAMA_TOKEN_NULL ? std::string() : common_token_to_piece(vocab, t, true); };
        bos_text_ = piece(llama_vocab_bos(vocab));
        eos_text_ = piece(llama_vocab_eos(vocab));
        add_bos_  = llama_vocab_get_add_bos(vocab);
        add_eos_  = llama_vocab_get_add_eos(vocab);

        // a built-in name, or a template with no Jinja in it, goes to llama.cpp's C++ templates (which know it by its
        // markers); "chatml" is Jinja in common (its ChatML source)
        jinja_ = src == "chatml" || (!is_builtin_name(src) && (src.find("{%") != std::string::npos || src.find("{{") != std::string::npos));
        if (!jinja_) {
            llama_chat_message probe = { "user", "hi" };
            char buf[64];
            if (llama_chat_apply_template(src.c_str(), &probe, 1, true, buf, sizeof(buf)) < 0) {
                throw template_error("is neither Jinja nor a template llama.cpp knows");
            }
        } else if (src != "chatml") {
            // parsed here first, for its error: common_chat_templates_init rethrows it as a bare std::exception
            try {
                common_chat_template probe(src, bos_text_, eos_text_);
            } catch (const std::exception & e) {
                throw template_error("does not parse: " + short_what(e));
            }
        }
        try {
            // no model: common would cut BOS / EOS from the prompt by the vocabulary's flags; apply() does it, so
            // that addBos / addEos can choose
            tmpls_ = common_chat_templates_init(nullptr, src, bos_text_, eos_text_);
        } catch (const std::exception & e) {
            throw template_error("does not parse: " + short_what(e));
        }
        source_ = common_chat_templates_source(tmpls_.get());

        Napi::Object caps = Napi::Object::New(env);
        Napi::Object all  = Napi::Object::New(env);
        std::map<std::string, bool> c = common_chat_templates_get_caps(tmpls_.get());
        for (const auto & [k, v] : c) {
            all.Set(k, jinja_ && v);
        }
        bool thinking = false;
        if (jinja_) {
            try {
                thinking = common_chat_templates_support_enable_thinking(tmpls_.get());
            } catch (const std::exception &) {
                thinking = false; // a template that raises on a lone user message: it has no switch to find
            }
        }
        caps.Set("jinja", jinja_);
        caps.Set("tools", jinja_ && c["supports_tools"]);
        caps.Set("toolCalls", jinja_ && c["supports_tool_calls"]);
        caps.Set("parallelToolCalls", jinja_ && c["supports_parallel_tool_calls"]);
        caps.Set("systemRole", jinja_ ? c["supports_system_role"] : true);
        caps.Set("thinking", thinking);
        caps.Set("all", all);
        caps.Freeze();
        caps_ = Napi::Persistent(caps);

        weights_ = m->handle(); // the vocabulary apply() tokenizes with: kept after model.dispose() until this goes
        env_ = &env_of(env);
        env_->chat_templates.insert(this);
    });
}

chat_templates_wrap::~chat_templates_wrap() {
    if (env_ != nullptr) {
        env_->chat_templates.erase(this);
    }
}

void chat_templates_wrap::teardown() {
    env_ = nullptr;
    tmpls_.reset();
    weights_.reset();
}

const common_chat_templates * chat_templates_wrap::get() const {
    if (!tmpls_ || !weights_) {
        throw bw_error(code::disposed, "the chat templates have been disposed");
    }
    return tmpls_.get();
}

Napi::Value chat_templates_wrap::get_source(const Napi::CallbackInfo & info) {
    return Napi::String::New(info.Env(), source_);
}

Napi::Value chat_templates_wrap::get_caps(const Napi::CallbackInfo & info) {
    return caps_.Value();
}

Napi::Value chat_templates_wrap::get_disposed(const Napi::CallbackInfo & info) {
    return Napi::Boolean::New(info.Env(), !tmpls_);
}

Napi::Value chat_templates_wrap::dispose(const Napi::CallbackInfo & info) {
    tmpls_.reset();
    weights_.reset();
    return info.Env().Undefined();
}

// ---- apply -----------------------------------------------------------------------------------

namespace {

// Reads the fields of apply()'s input object (JSON), each error naming its field.
struct input_reader {
    const common_json & root;

    bool has(const char * key) const { return root.contains(key) && !root.at(key).is_null(); }

    bool boolean(const char * key, bool def) const {
        if (!has(key)) {
            return def;
        }
        if (!root.at(key).is_boolean()) {
            throw arg_error(code::invalid_argument, key, "must be a boolean");
        }
        return root.at(key).get<bool>();
    }

    std::string str(const char * key, const std::string & def) const {
        if (!has(key)) {
            return def;
        }
        if (!root.at(key).is_string()) {
            throw arg_error(code::invalid_argument, key, "must be a string");
        }
        return root.at(key).get<std::string>();
    }
};

std::string idx_field(const std::string & base, size_t i) {
    return base + "[" + std::to_string(i) + "]";
}

// The checks llama-server makes before common reads the messages (oaicompat_chat_params_parse), with fields.
void check_messages(const common_json & messages) {
    if (!messages.is_array()) {
        throw arg_error(code::invalid_argument, "messages", "must be an array");
    }
    for (size_t i = 0; i < messages.size(); i++) {
        const common_json & m = messages.at(i);
        const std::string f = idx_field("messages", i);
        if (!m.is_object()) {
            throw arg_error(code::invalid_argument, f, "must be an object");
        }
        if (!m.contains("role") || !m.at("role").is_string()) {
            throw arg_error(code::invalid_argument, f + ".role", "must be a string");
        }
        const std::string role = m.at("role").get<std::string>();
        const bool has_content = m.contains("content");
        const bool has_calls   = m.contains("tool_calls") && !m.at("tool_calls").is_null();
        if (role != "assistant" && !has_content) {
            throw arg_error(code::invalid_argument, f + ".content", "is required (but in an assistant message with tool_calls)");
        }
        if (role == "assistant" && !has_content && !has_calls) {
            throw arg_error(code::invalid_argument, f, "must have content or tool_calls");
        }
        if (has_content) {
            const common_json & c = m.at("content");
            if (c.is_array()) {
                for (size_t j = 0; j < c.size(); j++) {
                    const common_json & p = c.at(j);
                    const std::string pf = idx_field(f + ".content", j);
                    if (!p.is_object() || !p.contains("type") || !p.at("type").is_string() || p.at("type").get<std::string>() != "text") {
                        throw arg_error(code::invalid_argument, pf + ".type", "must be \"text\" (no other content part is supported)");
                    }
                    if (!p.contains("text") || !p.at("text").is_string()) {
                        throw arg_error(code::invalid_argument, pf + ".text", "must be a string");
                    }
                }
            } else if (!c.is_string() && !c.is_null()) {
                throw arg_error(code::invalid_argument, f + ".content", "must be a string, null or an array of text parts");
            }
        }
        if (has_calls) {
            const common_json & calls = m.at("tool_calls");
            if (!calls.is_array()) {
                throw arg_error(code::invalid_argument, f + ".tool_calls", "must be an array");
            }
            for (size_t j = 0; j < calls.size(); j++) {
                const common_json & c = calls.at(j);
                const std::string cf = idx_field(f + ".tool_calls", j);
                if (!c.is_object() || !c.contains("function") || !c.at("function").is_object()) {
                    throw arg_error(code::invalid_argument, cf + ".function", "must be an object");
                }
                const common_json & fn = c.at("function");
                if (!fn.contains("name") || !fn.at("name").is_string()) {
                    throw arg_error(code::invalid_argument, cf + ".function.name", "must be a string");
                }
                if (!fn.contains("arguments")) {
                    throw arg_error(code::invalid_argument, cf + ".function.arguments", "is required");
                }
                // arguments are JSON text the template layer parses (and turns into Jinja values) recursively, on
                // the calling thread: nested past the schema depth they would overflow its stack
                const common_json & args = fn.at("arguments");
                const std::string args_text = args.is_string() ? args.get<std::string>() : args.dump();
                if (json_text_depth(args_text, limits::max_schema_depth) > limits::max_schema_depth) {
                    throw arg_error(code::invalid_argument, cf + ".function.arguments",
                                    "nests objects and arrays more than " + std::to_string(limits::max_schema_depth) + " deep");
                }
                if (c.contains("id") && !c.at("id").is_string()) {
                    throw arg_error(code::invalid_argument, cf + ".id", "must be a string");
                }
            }
        }
        for (const char * key : { "reasoning_content", "name", "tool_call_id" }) {
            if (m.contains(key) && !m.at(key).is_string()) {
                throw arg_error(code::invalid_argument, f + "." + key, "must be a string");
            }
        }
    }
}

// Tools: the shape, and each parameters schema through jsonSchemaToGrammar's limits (its cost summed over the tools).
void check_tools(const common_json & tools, int64_t & cost) {
    if (!tools.is_array()) {
        throw arg_error(code::invalid_argument, "tools", "must be an array");
    }
    for (size_t i = 0; i < tools.size(); i++) {
        const common_json & t = tools.at(i);
        const std::string f = idx_field("tools", i);
        if (!t.is_object() || !t.contains("type") || !t.at("type").is_string() || t.at("type").get<std::string>() != "function") {
            throw arg_error(code::invalid_argument, f + ".type", "must be \"function\"");
        }
        if (!t.contains("function") || !t.at("function").is_object()) {
            throw arg_error(code::invalid_argument, f + ".function", "must be an object");
        }
        const common_json & fn = t.at("function");
        if (!fn.contains("name") || !fn.at("name").is_string() || fn.at("name").get<std::string>().empty()) {
            throw arg_error(code::invalid_argument, f + ".function.name", "must be a non-empty string");
        }
        if (fn.contains("description") && !fn.at("description").is_string() && !fn.at("description").is_null()) {
            throw arg_error(code::invalid_argument, f + ".function.description", "must be a string");
        }
        if (fn.contains("parameters") && !fn.at("parameters").is_null()) {
            const common_json & p = fn.at("parameters");
            const std::string pf = f + ".function.parameters";
            if (!p.is_object()) {
                throw arg_error(code::invalid_argument, pf, "must be a JSON schema object");
            }
            try {
                check_schema_text(p.dump());
                check_schema_cost(p, cost);
            } catch (bw_error & e) {
                e.field = pf;
                throw;
            }
        }
    }
}

const char * trigger_type_name(common_grammar_trigger_type t) {
    switch (t) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:        return "token";
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:         return "word";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:      return "pattern";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "patternFull";
    }
    return "word";
}

// Where a grammar that common could not build came from: a tool's parameters or the response schema, converted
// one at a time (only after apply failed). Empty when each converts on its own.
std::string failing_schema(const common_json & root, std::string & why) {
    auto converts = [&](const common_json & schema) {
        try {
            json_schema_to_grammar(schema, true);
            return true;
        } catch (const std::exception & e) {
            why = schema_conversion_error(e);
            return false;
        }
    };
    if (root.contains("jsonSchema") && root.at("jsonSchema").is_object() && !converts(root.at("jsonSchema"))) {
        return "jsonSchema";
    }
    if (root.contains("tools") && root.at("tools").is_array()) {
        const common_json & tools = root.at("tools");
        for (size_t i = 0; i < tools.size(); i++) {
            const common_json & fn = tools.at(i).at("function");
            if (fn.contains("parameters") && fn.at("parameters").is_object() && !converts(fn.at("parameters"))) {
                return idx_field("tools", i) + ".function.parameters";
            }
        }
    }
    return "";
}

} // namespace

// apply(inputsJson): see lib/binding/native.ts ChatApplyInputs / ChatApplyResult
Napi::Value chat_templates_wrap::apply(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        const common_chat_templates * tmpls = get();
        const std::string text = arg_string(info, 0, "chat inputs (JSON text)", "inputs");
        if (text.size() > (size_t) limits::max_chat_json_bytes) {
            throw arg_error(code::invalid_argument, "inputs", "are " + std::to_string(text.size()) + " bytes of JSON, more than the " +
                            std::to_string(limits::max_chat_json_bytes) + " allowed");
        }
        if (json_text_depth(text, limits::max_chat_json_depth) > limits::max_chat_json_depth) {
            throw arg_error(code::invalid_argument, "inputs", "nest objects and arrays more than " +
                            std::to_string(limits::max_chat_json_depth) + " deep");
        }
        common_json root;
        try {
            root = common_json::parse(text);
        } catch (const std::exception & e) {
            throw arg_error(code::invalid_argument, "inputs", "are not valid JSON: " + short_what(e));
        }
        if (!root.is_object()) {
            throw arg_error(code::invalid_argument, "inputs", "must be an object");
        }
        const input_reader in{ root };
        const std::map<std::string, bool> caps = common_chat_templates_get_caps(tmpls);

        if (!root.contains("messages")) {
            throw arg_error(code::invalid_argument, "messages", "is required");
        }
        check_messages(root.at("messages"));
        common_chat_templates_inputs inputs;
        inputs.use_jinja = jinja_;
        try {
            inputs.messages = common_chat_msgs_parse_oaicompat(root.at("messages"));
        } catch (const std::exception & e) {
            throw arg_error(code::invalid_argument, "messages", short_what(e));
        }
        int64_t cost = 0;
        if (in.has("tools")) {
            check_tools(root.at("tools"), cost);
            try {
                inputs.tools = common_chat_tools_parse_oaicompat(root.at("tools"));
            } catch (const std::exception & e) {
                throw arg_error(code::invalid_argument, "tools", short_what(e, 200));
            }
        }
        const std::string choice = in.str("toolChoice", "auto");
        if (choice == "auto") {
            inputs.tool_choice = COMMON_CHAT_TOOL_CHOICE_AUTO;
        } else if (choice == "required") {
            inputs.tool_choice = COMMON_CHAT_TOOL_CHOICE_REQUIRED;
        } else if (choice == "none") {
            inputs.tool_choice = COMMON_CHAT_TOOL_CHOICE_NONE;
        } else {
            throw arg_error(code::invalid_argument, "toolChoice", "must be one of auto, required, none (got '" + choice + "')");
        }
        if (!jinja_ && !inputs.tools.empty()) {
            throw arg_error(code::invalid_argument, "tools", "need a Jinja chat template (this one is llama.cpp's built-in '" + source_ + "')");
        }
        if (inputs.tool_choice == COMMON_CHAT_TOOL_CHOICE_REQUIRED && inputs.tools.empty()) {
            throw arg_error(code::invalid_argument, "toolChoice", "is required, but there are no tools");
        }
        auto cf = caps.find("supports_parallel_tool_calls");
        inputs.parallel_tool_calls = in.boolean("parallelToolCalls", cf != caps.end() && cf->second);

        if (in.has("jsonSchema")) {
            common_json schema = root.at("jsonSchema");
            if (!schema.is_object()) {
                throw arg_error(code::invalid_argument, "jsonSchema", "must be a JSON schema object");
            }
            if (schema.empty()) {
                schema["type"] = "object"; // as llama-server: an empty schema is any object
            }
            const std::string s = schema.dump();
            try {
                check_schema_text(s);
                check_schema_cost(schema, cost);
            } catch (bw_error & e) {
                e.field = "jsonSchema";
                throw;
            }
            inputs.json_schema = s;
        }
        inputs.grammar = in.str("grammar", "");
        if (!inputs.grammar.empty()) {
            check_grammar_limits(inputs.grammar, "the grammar");
            if (!inputs.json_schema.empty()) {
                throw arg_error(code::invalid_argument, "grammar", "cannot be given with jsonSchema");
            }
            if (!inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE) {
                throw arg_error(code::invalid_argument, "grammar", "cannot be given with tools (unless toolChoice is none)");
            }
        }
        inputs.add_generation_prompt = in.boolean("addGenerationPrompt", true);
        if (in.boolean("continueFinalMessage", false)) {
            if (inputs.add_generation_prompt) {
                throw arg_error(code::invalid_argument, "continueFinalMessage", "cannot be true with addGenerationPrompt (set it false)");
            }
            if (inputs.messages.empty() || inputs.messages.back().role != "assistant") {
                throw arg_error(code::invalid_argument, "continueFinalMessage", "needs a final assistant message to continue");
            }
            if (!inputs.messages.back().tool_calls.empty()) {
                throw arg_error(code::invalid_argument, "continueFinalMessage", "cannot continue an assistant message with tool_calls");
            }
            inputs.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        }
        inputs.enable_thinking  = in.boolean("enableThinking", true);
        inputs.reasoning_format = parse_reasoning_format(in.str("reasoningFormat", "auto"), "reasoningFormat");
        if (in.has("chatTemplateKwargs")) {
            const common_json & kw = root.at("chatTemplateKwargs");
            if (!kw.is_object()) {
                throw arg_error(code::invalid_argument, "chatTemplateKwargs", "must be an object");
            }
            for (const auto & item : kw.items()) {
                inputs.chat_template_kwargs[item.key()] = item.value().dump();
            }
            // as llama-server: the kwarg enable_thinking decides over the option
            auto it = inputs.chat_template_kwargs.find("enable_thinking");
            if (it != inputs.chat_template_kwargs.end()) {
                if (it->second == "true") {
                    inputs.enable_thinking = true;
                } else if (it->second == "false") {
                    inputs.enable_thinking = false;
                } else {
                    throw arg_error(code::invalid_argument, "chatTemplateKwargs.enable_thinking", "must be a boolean");
                }
            }
        }
        const bool add_bos = in.boolean("addBos", add_bos_);
        const bool add_eos = in.boolean("addEos", add_eos_);

        common_chat_params out;
        try {
            out = common_chat_templates_apply(tmpls, inputs);
        } catch (const std::exception & e) {
            std::string why;
            const std::string field = failing_schema(root, why);
            if (!field.empty()) {
                throw arg_error(code::invalid_argument, field, "cannot be turned into a grammar: " + why);
            }
            throw bw_error(code::template_failed, "the chat template failed: " + short_what(e), "template", "failed: " + short_what(e));
        }
        if (out.grammar.size() > (size_t) limits::max_grammar_bytes) {
            const char * field = !inputs.tools.empty() ? "tools" : !inputs.json_schema.empty() ? "jsonSchema" : "grammar";
            throw arg_error(code::invalid_argument, field, "make a grammar of " + std::to_string(out.grammar.size()) +
                            " bytes, more than the " + std::to_string(limits::max_grammar_bytes) + " a sampler takes");
        }

        // the tokenizer adds BOS / EOS: the template's own would be a second one
        if (add_bos && !bos_text_.empty() && out.prompt.rfind(bos_text_, 0) == 0) {
            out.prompt.erase(0, bos_text_.size());
        }
        if (add_eos && !eos_text_.empty() && out.prompt.size() >= eos_text_.size() &&
            out.prompt.compare(out.prompt.size() - eos_text_.size(), eos_text_.size(), eos_text_) == 0) {
            out.prompt.erase(out.prompt.size() - eos_text_.size());
        }

        Napi::Object r = Napi::Object::New(env);
        r.Set("prompt", out.prompt);
        r.Set("format", common_chat_format_name(out.format));
        if (!out.grammar.empty()) {
            r.Set("grammar", out.grammar);
        }
        r.Set("grammarLazy", out.grammar_lazy);

        // as llama-server: a trigger word that is one preserved token becomes a token trigger
        const llama_vocab * vocab = llama_model_get_vocab(weights_->model);
        std::set<llama_token> preserved;
        for (const auto & t : out.preserved_tokens) {
            auto ids = common_tokenize(vocab, t, false, true);
            if (ids.size() == 1) {
                preserved.insert(ids[0]);
            }
        }
        Napi::Array triggers = Napi::Array::New(env, out.grammar_triggers.size());
        for (size_t i = 0; i < out.grammar_triggers.size(); i++) {
            const common_grammar_trigger & t = out.grammar_triggers[i];
            Napi::Object o = Napi::Object::New(env);
            common_grammar_trigger_type type = t.type;
            llama_token token = t.token;
            if (type == COMMON_GRAMMAR_TRIGGER_TYPE_WORD) {
                auto ids = common_tokenize(vocab, t.value, false, true);
                if (ids.size() == 1 && preserved.count(ids[0])) {
                    type  = COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN;
                    token = ids[0];
                }
            }
            o.Set("type", trigger_type_name(type));
            o.Set("value", t.value);
            if (type == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN) {
                o.Set("token", token);
            }
            triggers.Set((uint32_t) i, o);
        }
        r.Set("grammarTriggers", triggers);
        Napi::Array pt = Napi::Array::New(env, out.preserved_tokens.size());
        for (size_t i = 0; i < out.preserved_tokens.size(); i++) {
            pt.Set((uint32_t) i, out.preserved_tokens[i]);
        }
        r.Set("preservedTokens", pt);
        Napi::Array stops = Napi::Array::New(env, out.additional_stops.size());
        for (size_t i = 0; i < out.additional_stops.size(); i++) {
            stops.Set((uint32_t) i, out.additional_stops[i]);
        }
        r.Set("additionalStops", stops);
        r.Set("generationPrompt", out.generation_prompt);
        Napi::Object thinking = Napi::Object::New(env);
        thinking.Set("supported", out.supports_thinking);
        thinking.Set("startTag", out.thinking_start_tag);
        Napi::Array ends = Napi::Array::New(env, out.thinking_end_tags.size());
        for (size_t i = 0; i < out.thinking_end_tags.size(); i++) {
            ends.Set((uint32_t) i, out.thinking_end_tags[i]);
        }
        thinking.Set("endTags", ends);
        r.Set("thinking", thinking);
        r.Set("parser", seal_parser_spec(env, { (int32_t) out.format, out.parser, out.generation_prompt }));
        return r;
    });
}

} // namespace bw
