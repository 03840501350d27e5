#include "chat_parser.h"

#include "env.h"
#include "limits.h"

#include <cstring>
#include <mutex>
#include <random>

namespace bw {

// ---- the sealed spec -------------------------------------------------------------------------

// SipHash-2-4 (Aumasson and Bernstein): a keyed 64-bit hash, so that a spec JS did not get from apply() is told apart.
static uint64_t rotl(uint64_t x, int b) {
    return (x << b) | (x >> (64 - b));
}

static uint64_t siphash(const uint64_t key[2], const std::string & data) {
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
    uint64_t v3 = 0x7465646279746573ULL ^ key[1];
    auto round = [&]() {
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);
    };
    const size_t n = data.size();
    const size_t whole = n - n % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (int j = 7; j >= 0; j--) {
            m = (m << 8) | (uint8_t) data[i + j];
        }
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
    uint64_t last = (uint64_t) (n & 0xff) << 56;
    for (size_t j = 0; j < n % 8; j++) {
        last |= (uint64_t) (uint8_t) data[whole + j] << (8 * j);
    }
    v3 ^= last;
    round();
    round();
    v0 ^= last;
    v2 ^= 0xff;
    round();
    round();
    round();
    round();
    return v0 ^ v1 ^ v2 ^ v3;
}

static const uint64_t * process_key() {
    static uint64_t key[2];
    static std::once_flag once;
    std::call_once(once, []() {
        std::random_device rd;
        for (uint64_t & k : key) {
            k = ((uint64_t) rd() << 32) ^ rd();
        }
    });
    return key;
}

static std::string spec_tag(const chat_parser_spec & s) {
    // lengths first: no two specs hash the same bytes
    const std::string data = std::to_string(s.format) + ":" + std::to_string(s.generation_prompt.size()) + ":" +
                             std::to_string(s.parser.size()) + ":" + s.generation_prompt + s.parser;
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long) siphash(process_key(), data));
    return hex;
}

Napi::Object seal_parser_spec(Napi::Env env, const chat_parser_spec & spec) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("format", spec.format);
    o.Set("parser", spec.parser);
    o.Set("generationPrompt", spec.generation_prompt);
    o.Set("tag", spec_tag(spec));
    return o;
}

chat_parser_spec open_parser_spec(const Napi::Value & v, const std::string & field) {
    auto bad = [&](const std::string & reason) {
        return arg_error(code::invalid_argument, field, reason);
    };
    if (!v.IsObject()) {
        throw bad("must be the parser of a ChatTemplates.apply() result");
    }
    Napi::Object o = v.As<Napi::Object>();
    Napi::Value format = o.Get("format"), parser = o.Get("parser"), prompt = o.Get("generationPrompt"), tag = o.Get("tag");
    if (!format.IsNumber() || !parser.IsString() || !prompt.IsString() || !tag.IsString()) {
        throw bad("must be the parser of a ChatTemplates.apply() result ({ format, parser, generationPrompt, tag })");
    }
    const double f = format.As<Napi::Number>().DoubleValue();
    if (!(f >= 0 && f < COMMON_CHAT_FORMAT_COUNT) || (double) (int32_t) f != f) {
        throw bad("has an unknown format " + format_num(f));
    }
    chat_parser_spec s;
    s.format = (int32_t) f;
    s.parser = parser.As<Napi::String>().Utf8Value();
    s.generation_prompt = prompt.As<Napi::String>().Utf8Value();
    if (s.parser.size() > (size_t) limits::max_chat_json_bytes || s.generation_prompt.size() > (size_t) limits::max_chat_json_bytes) {
        throw bad("is larger than any apply() result");
    }
    if (tag.As<Napi::String>().Utf8Value() != spec_tag(s)) {
        throw bad("was not made by ChatTemplates.apply() in this process, or was changed since");
    }
    return s;
}

// ---- the parser ------------------------------------------------------------------------------

Napi::Function chat_parser_wrap::define(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "ChatParser", {
        StaticMethod<&chat_parser_wrap::create>("create"),
        InstanceMethod<&chat_parser_wrap::update>("update"),
        InstanceAccessor<&chat_parser_wrap::get_message>("message"),
    });
    env_of(env).chat_parser_ctor = Napi::Persistent(fn); // per environment, as the other classes
    return fn;
}

common_reasoning_format parse_reasoning_format(const std::string & s, const std::string & field) {
    if (s == "none")     return COMMON_REASONING_FORMAT_NONE;
    if (s == "auto")     return COMMON_REASONING_FORMAT_AUTO;
    if (s == "deepseek") return COMMON_REASONING_FORMAT_DEEPSEEK;
    throw arg_error(code::invalid_argument, field, "must be one of none, auto, deepseek (got '" + s + "')");
}

// ChatParser.create(spec, { reasoningFormat = "auto", parseToolCalls = true, isContinuation = false })
Napi::Value chat_parser_wrap::create(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        // checked here, so that the constructor (which must not throw a bw_error) only builds
        open_parser_spec(info.Length() > 0 ? info[0] : env.Undefined(), "spec");
        Napi::Object o = opt_object(info, 1, "parser options");
        parse_reasoning_format(get_str(o, "reasoningFormat", "auto"), "reasoningFormat");
        get_bool(o, "parseToolCalls", true);
        get_bool(o, "isContinuation", false);
        return env_of(env).chat_parser_ctor.New({ Napi::External<void>::New(env, nullptr), info[0], o });
    });
}

static std::string gen_tool_call_id() {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    thread_local std::mt19937 rng{ std::random_device{}() };
    std::uniform_int_distribution<int> pick(0, (int) sizeof(alnum) - 2);
    std::string id = "call_";
    for (int i = 0; i < 24; i++) {
        id += alnum[pick(rng)];
    }
    return id;
}

chat_parser_wrap::chat_parser_wrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<chat_parser_wrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsExternal()) {
        throw make_error(env, code::invalid_argument, "ChatParser cannot be constructed directly: use ChatParser.create()");
    }
    guard(env, [&]() {
        const chat_parser_spec spec = open_parser_spec(info[1], "spec");
        Napi::Object o = info[2].As<Napi::Object>();
        params_.format            = (common_chat_format) spec.format;
        params_.generation_prompt = spec.generation_prompt;
        params_.reasoning_format  = parse_reasoning_format(get_str(o, "reasoningFormat", "auto"), "reasoningFormat");
        params_.parse_tool_calls  = get_bool(o, "parseToolCalls", true);
        params_.is_continuation   = get_bool(o, "isContinuation", false);
        if (!spec.parser.empty()) {
            try {
                params_.parser.load(spec.parser);
            } catch (const std::exception & e) {
                throw arg_error(code::invalid_argument, "spec", std::string("has a parser that does not load: ") + e.what());
            }
        }
        if (params_.is_continuation) {
            // as llama-server does: the prefill the generation prompt holds is not reported as a delta
            try {
                msg_ = common_chat_parse("", true, params_);
            } catch (const std::exception &) {
                msg_ = common_chat_msg();
            }
        }
    });
}

common_chat_msg chat_parser_wrap::parse(bool partial) const {
    try {
        return common_chat_parse(text_, partial, params_);
    } catch (const std::exception &) {
        if (partial) {
            return msg_; // text that reads as nothing yet: no change
        }
        // the model wrote something the format cannot read: all of it is the answer, with no tool calls
        common_chat_msg msg;
        msg.role    = "assistant";
        msg.content = text_;
        return msg;
    }
}

static Napi::Object delta_js(Napi::Env env, const common_chat_msg_diff & d) {
    Napi::Object o = Napi::Object::New(env);
    if (!d.content_delta.empty()) {
        o.Set("content", d.content_delta);
    }
    if (!d.reasoning_content_delta.empty()) {
        o.Set("reasoningContent", d.reasoning_content_delta);
    }
    if (d.tool_call_index != std::string::npos) {
        Napi::Object tc = Napi::Object::New(env);
        tc.Set("index", (double) d.tool_call_index);
        if (!d.tool_call_delta.id.empty()) {
            tc.Set("id", d.tool_call_delta.id);
        }
        if (!d.tool_call_delta.name.empty()) {
            tc.Set("name", d.tool_call_delta.name);
        }
        if (!d.tool_call_delta.arguments.empty()) {
            tc.Set("arguments", d.tool_call_delta.arguments);
        }
        o.Set("toolCall", tc);
    }
    return o;
}

// update(textAdded, partial): the deltas since the last update. partial = false is the last update: the text is all
// there, and a call not yet reported is reported now.
Napi::Value chat_parser_wrap::update(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        const std::string added = arg_string(info, 0, "textAdded");
        if (info.Length() < 2 || !info[1].IsBoolean()) {
            throw arg_error(code::invalid_argument, "partial", "must be a boolean");
        }
        const bool partial = info[1].As<Napi::Boolean>().Value();
        if (done_) {
            throw bw_error(code::invalid_argument, "the parser has had its final update (partial = false)", "partial",
                           "was false in an earlier update: the parser is done");
        }
        if (text_.size() + added.size() > (size_t) limits::max_chat_json_bytes) {
            throw arg_error(code::invalid_argument, "textAdded", "makes the text longer than " +
                            std::to_string(limits::max_chat_json_bytes) + " bytes");
        }
        text_ += added;
        done_ = !partial;

        common_chat_msg msg = parse(partial);
        std::vector<common_chat_msg_diff> out;
        if (!msg.empty()) {
            msg.set_tool_call_ids(tool_call_ids_, gen_tool_call_id);
            std::vector<common_chat_msg_diff> all;
            try {
                all = common_chat_msg_diff::compute_diffs(msg_, msg);
            } catch (const std::exception &) {
                // a parse that does not extend the last one (the format read the text another way once more of it
                // came): no deltas for it. A partial one is dropped, to be diffed against once the text settles; the
                // final one is the message
                if (partial) {
                    return Napi::Array::New(env, 0);
                }
            }
            msg_ = std::move(msg);
            // as llama-server's update_chat_msg with filter_tool_calls: a call's id and name go first, in a delta of
            // their own, and then its arguments in fragments
            auto header = [&](size_t i) {
                common_chat_msg_diff h;
                h.tool_call_index      = i;
                h.tool_call_delta.id   = msg_.tool_calls[i].id;
                h.tool_call_delta.name = msg_.tool_calls[i].name;
                out.push_back(std::move(h));
                sent_names_.insert(i);
            };
            // a call is announced where it starts: right before its first change, after whatever text came before it
            // in this update (llama-server announces every named call before any change of the update, so text that
            // preceded a call in the same update came after its header and split the call in two for the streams
            // built from these deltas: Anthropic's blocks, the Responses items)
            auto announce_through = [&](size_t last) {
                for (size_t k = 0; k <= last && k < msg_.tool_calls.size(); ++k) {
                    if (!sent_names_.count(k) && !msg_.tool_calls[k].name.empty()) {
                        header(k);
                    }
                }
            };
            for (auto & d : all) {
                if (d.tool_call_index == std::string::npos) {
                    out.push_back(std::move(d));
                    continue;
                }
                const size_t i = d.tool_call_index;
                announce_through(i);
                if (sent_names_.count(i)) {
                    if (!d.tool_call_delta.arguments.empty()) {
                        d.tool_call_delta.name.clear();
                        d.tool_call_delta.id.clear();
                        out.push_back(std::move(d));
                    }
                } else if (!d.tool_call_delta.arguments.empty() || !partial) {
                    d.tool_call_delta.name = msg_.tool_calls[i].name;
                    d.tool_call_delta.id   = msg_.tool_calls[i].id;
                    out.push_back(std::move(d));
                    sent_names_.insert(i);
                }
            }
            // calls whose name is known and that had no change of their own yet: announced last
            if (!msg_.tool_calls.empty()) {
                announce_through(msg_.tool_calls.size() - 1);
            }
        }
        Napi::Array a = Napi::Array::New(env, out.size());
        for (size_t i = 0; i < out.size(); i++) {
            a.Set((uint32_t) i, delta_js(env, out[i]));
        }
        return a;
    });
}

Napi::Value chat_parser_wrap::get_message(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("content", msg_.content);
    o.Set("reasoningContent", msg_.reasoning_content);
    Napi::Array calls = Napi::Array::New(env, msg_.tool_calls.size());
    for (size_t i = 0; i < msg_.tool_calls.size(); i++) {
        Napi::Object c = Napi::Object::New(env);
        c.Set("id", msg_.tool_calls[i].id);
        c.Set("name", msg_.tool_calls[i].name);
        c.Set("arguments", msg_.tool_calls[i].arguments);
        calls.Set((uint32_t) i, c);
    }
    o.Set("toolCalls", calls);
    return o;
}

} // namespace bw
