#include "model.h"

#include "grammar.h"
#include "sampling.h"

#include "gguf.h"
#include "llama-arch.h" // llama.cpp's architecture table (internal: the addon links llama statically)

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace bw {

Napi::Function model_wrap::define(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "Model", {
        StaticMethod<&model_wrap::load>("load"),
        InstanceMethod<&model_wrap::metadata>("metadata"),
        InstanceMethod<&model_wrap::tokenize>("tokenize"),
        InstanceMethod<&model_wrap::detokenize>("detokenize"),
        InstanceMethod<&model_wrap::token_to_piece>("tokenToPiece"),
        InstanceMethod<&model_wrap::is_eog>("isEog"),
        InstanceMethod<&model_wrap::apply_chat_template>("applyChatTemplate"),
        InstanceMethod<&model_wrap::check_grammar>("checkGrammar"),
        InstanceMethod<&model_wrap::dispose>("dispose"),
        InstanceAccessor<&model_wrap::get_disposed>("disposed"),
    });
    env_of(env).model_ctor = Napi::Persistent(fn); // per environment: each thread has its own class
    return fn;
}

model_wrap * model_wrap::unwrap(const Napi::Value & v) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(env_of(v.Env()).model_ctor.Value())) {
        throw bw_error(code::invalid_argument, "expected a Model");
    }
    model_wrap * m = Napi::ObjectWrap<model_wrap>::Unwrap(v.As<Napi::Object>());
    m->get();
    return m;
}

const std::shared_ptr<model_handle> & model_wrap::handle() const {
    if (!handle_) {
        throw bw_error(code::disposed, "the model has been disposed");
    }
    return handle_;
}

void model_wrap::check_token(int32_t token, const char * what, const char * field) const {
    if (token < 0 || token >= n_vocab_) {
        const std::string reason = std::to_string(token) + " is outside the vocabulary [0, " + std::to_string(n_vocab_) + ")";
        throw bw_error(code::token_range, std::string(what) + " " + reason, field ? field : what, reason);
    }
}

static std::string meta_str(const llama_model * model, const char * key);

// A whole-number GGUF value (0 when the key is missing or not a number below 2^31).
static double meta_uint(const llama_model * model, const std::string & key) {
    const std::string s = meta_str(model, key.c_str());
    if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string::npos) {
        return 0;
    }
    const long long v = std::stoll(s);
    return v <= INT32_MAX ? (double) v : 0;
}

static std::string meta_str(const llama_model * model, const char * key) {
    char buf[512];
    int32_t n = llama_model_meta_val_str(model, key, buf, sizeof(buf));
    if (n < 0) {
        return "";
    }
    if ((size_t) n >= sizeof(buf)) {
        std::string big(n + 1, '\0');
        llama_model_meta_val_str(model, key, big.data(), big.size());
        big.resize(n);
        return big;
    }
    return std::string(buf, n);
}

model_wrap::model_wrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<model_wrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsExternal()) {
        throw make_error(env, code::invalid_argument, "Model cannot be constructed directly: use Model.load()");
    }
    const bool vocab_only = info.Length() > 1 && info[1].ToBoolean().Value();
    handle_  = std::make_shared<model_handle>(info[0].As<Napi::External<llama_model>>().Data(), vocab_only);
    llama_model * model_ = handle_->model;
    vocab_   = llama_model_get_vocab(model_);
    n_vocab_ = llama_vocab_n_tokens(vocab_);

    // metadata, computed once
    Napi::Object m = Napi::Object::New(env);
    char desc[256];
    llama_model_desc(model_, desc, sizeof(desc));
    m.Set("architecture", meta_str(model_, "general.architecture"));
    m.Set("name", meta_str(model_, "general.name"));
    m.Set("description", desc);
    // a vocab-only load reads no hyperparameters: these two then come from the GGUF's own keys
    const std::string arch = meta_str(model_, "general.architecture");
    m.Set("trainedContext", vocab_only ? meta_uint(model_, arch + ".context_length") : (double) llama_model_n_ctx_train(model_));
    m.Set("embeddingSize", vocab_only ? meta_uint(model_, arch + ".embedding_length") : (double) llama_model_n_embd(model_));
    m.Set("vocabOnly", vocab_only);
    m.Set("layers", vocab_only ? 0 : llama_model_n_layer(model_));
    m.Set("heads", vocab_only ? 0 : llama_model_n_head(model_)); // per-layer arrays are not loaded without weights
    m.Set("kvHeads", vocab_only ? 0 : llama_model_n_head_kv(model_));
    m.Set("vocabSize", n_vocab_);
    m.Set("sizeBytes", (double) llama_model_size(model_));
    m.Set("parameters", (double) llama_model_n_params(model_));
    const char * tmpl = llama_model_chat_template(model_, nullptr);
    m.Set("chatTemplate", tmpl ? Napi::Value(Napi::String::New(env, tmpl)) : env.Null());

    Napi::Object tok = Napi::Object::New(env);
    tok.Set("bos", llama_vocab_bos(vocab_));
    tok.Set("eos", llama_vocab_eos(vocab_));
    tok.Set("eot", llama_vocab_eot(vocab_));
    tok.Set("sep", llama_vocab_sep(vocab_));
    tok.Set("nl", llama_vocab_nl(vocab_));
    tok.Set("pad", llama_vocab_pad(vocab_));
    tok.Set("fimPrefix", llama_vocab_fim_pre(vocab_));
    tok.Set("fimSuffix", llama_vocab_fim_suf(vocab_));
    tok.Set("fimMiddle", llama_vocab_fim_mid(vocab_));
    tok.Set("fimPad", llama_vocab_fim_pad(vocab_));
    tok.Set("fimRepo", llama_vocab_fim_rep(vocab_));
    tok.Set("fimSep", llama_vocab_fim_sep(vocab_));
    m.Set("tokens", tok);
    m.Set("addBos", llama_vocab_get_add_bos(vocab_));
    m.Set("addEos", llama_vocab_get_add_eos(vocab_));

    Napi::Object kv = Napi::Object::New(env);
    const int32_t n_kv = llama_model_meta_count(model_);
    std::vector<char> key(256), val(1024);
    for (int32_t i = 0; i < n_kv; i++) {
        if (llama_model_meta_key_by_index(model_, i, key.data(), key.size()) < 0) {
            continue;
        }
        int32_t n = llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
        if (n < 0) {
            continue;
        }
        if ((size_t) n >= val.size()) {
            val.resize(n + 1);
            llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
        }
        kv.Set(key.data(), std::string(val.data(), n));
    }
    m.Set("gguf", kv);
    meta_ = Napi::Persistent(m);
    env_ = &env_of(env);
    env_->models.insert(this);
}

model_wrap::~model_wrap() {
    if (env_ != nullptr) {
        env_->models.erase(this);
    }
}

void model_wrap::teardown() {
    env_ = nullptr;
    handle_.reset();
}

// ---- load ------------------------------------------------------------------------------------

static llama_split_mode parse_split_mode(const std::string & s) {
    if (s == "none")   return LLAMA_SPLIT_MODE_NONE;
    if (s == "layer")  return LLAMA_SPLIT_MODE_LAYER;
    if (s == "row")    return LLAMA_SPLIT_MODE_ROW;
    if (s == "tensor") return LLAMA_SPLIT_MODE_TENSOR;
    throw arg_error(code::invalid_argument, "splitMode", "must be one of none, layer, row, tensor (got '" + s + "')");
}

// Checks the file before llama.cpp sees it, so that each kind of bad file gets its own error code: from the
// file itself (its magic, header and size, and whether llama.cpp's architecture table knows the architecture
// it names), never from the text llama.cpp logs.
static void check_gguf_file(const std::string & path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
        throw bw_error(code::model_not_found, "model file not found: " + path);
    }
    if (!S_ISREG(st.st_mode)) {
        throw bw_error(code::model_not_found, "model path is not a regular file: " + path);
    }
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw bw_error(code::io_failed, "cannot open model file: " + path + ": " + std::strerror(errno));
    }
    char magic[4] = {0};
    size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw bw_error(code::model_not_gguf, "not a GGUF file (bad magic): " + path);
    }
    gguf_init_params gp = { /*no_alloc*/ true, /*ctx*/ nullptr };
    log_capture_begin();
    gguf_context * g = gguf_init_from_file(path.c_str(), gp);
    std::string why = log_capture_end();
    if (!g) {
        throw bw_error(code::model_truncated, "corrupt or truncated GGUF header in " + path + (why.empty() ? "" : ": " + why));
    }
    uint64_t need = gguf_get_data_offset(g);
    const int64_t n_tensors = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n_tensors; i++) {
        need = std::max<uint64_t>(need, gguf_get_data_offset(g) + gguf_get_tensor_offset(g, i) + gguf_get_tensor_size(g, i));
    }
    // llama.cpp builds a model for every architecture its table names (llama_model_mapping has a case for each),
    // and refuses one it does not know (llama_model_create: "unknown model architecture")
    const int64_t arch_key = gguf_find_key(g, "general.architecture");
    const bool has_arch = arch_key >= 0 && gguf_get_kv_type(g, arch_key) == GGUF_TYPE_STRING;
    const std::string arch = has_arch ? gguf_get_val_str(g, arch_key) : "";
    gguf_free(g);
    if ((uint64_t) st.st_size < need) {
        throw bw_error(code::model_truncated, "truncated GGUF file " + path + ": " + std::to_string(st.st_size) +
                       " bytes, tensor data needs " + std::to_string(need));
    }
    if (!has_arch) {
        throw bw_error(code::model_unsupported, "unsupported model in " + path + ": it names no architecture (general.architecture)");
    }
    if (llm_arch_from_string(arch) == LLM_ARCH_UNKNOWN) {
        throw bw_error(code::model_unsupported, "unsupported model in " + path + ": unknown model architecture '" + arch +
                       "' (llama.cpp " BATCHWISE_LLAMA_TAG " does not know it)");
    }
}

struct load_state {
    std::string path;
    llama_model_params params;
    std::vector<float> tensor_split;
    llama_model * model = nullptr;
    Napi::ThreadSafeFunction progress;
    bool has_progress = false;
    int last_pct = -1;
};

static bool on_load_progress(float p, void * ud) {
    auto * st = (load_state *) ud;
    int pct = (int) (p * 100.0f);
    if (st->has_progress && pct != st->last_pct) {
        st->last_pct = pct;
        auto * v = new float(p);
        st->progress.NonBlockingCall(v, [](Napi::Env env, Napi::Function fn, float * v) {
            if (env != nullptr && fn != nullptr) {
                try { fn.Call({ Napi::Number::New(env, *v) }); } catch (...) {}
            }
            delete v;
        });
    }
    return true;
}

// Model.load(path, options, onProgress?) -> Promise<Model>
Napi::Value model_wrap::load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        auto st = std::make_shared<load_state>();
        st->path = arg_string(info, 0, "model path", "path");
        Napi::Object o = opt_object(info, 1, "load options");
        st->params = llama_model_default_params();
        st->params.n_gpu_layers = get_int(o, "gpuLayers", -1);
        st->params.split_mode   = parse_split_mode(get_str(o, "splitMode", "layer"));
        st->params.main_gpu     = get_int(o, "mainGpu", 0);
        st->params.load_mode    = get_bool(o, "useMmap", true) ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
        st->params.vocab_only   = get_bool(o, "vocabOnly", false);
        st->params.check_tensors = get_bool(o, "checkTensors", false);
        if (has(o, "tensorSplit")) {
            Napi::Value ts = o.Get("tensorSplit");
            if (!ts.IsArray()) {
                throw option_error(code::invalid_argument, "tensorSplit", "must be an array of numbers");
            }
            Napi::Array arr = ts.As<Napi::Array>();
            if (arr.Length() > llama_max_devices()) {
                throw option_error(code::invalid_argument, "tensorSplit", "has more entries than devices (" +
                                   std::to_string(llama_max_devices()) + ")");
            }
            st->tensor_split.assign(llama_max_devices(), 0.0f);
            for (uint32_t i = 0; i < arr.Length(); i++) {
                Napi::Value x = arr.Get(i);
                const double d = x.IsNumber() ? x.As<Napi::Number>().DoubleValue() : -1.0;
                if (!(d >= 0)) { // NaN too
                    throw option_error(code::invalid_argument, "tensorSplit", "must hold non-negative numbers");
                }
                if (!fits_float(d)) {
                    throw option_error(code::invalid_argument, "tensorSplit", "holds " + format_num(d) + ", beyond the range of a 32-bit float");
                }
                st->tensor_split[i] = to_float(d);
            }
            st->params.tensor_split = st->tensor_split.data();
        }
        if (info.Length() > 2 && info[2].IsFunction()) {
            st->progress = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "batchwise.loadProgress", 0, 1);
            st->has_progress = true;
        } else if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
            throw arg_error(code::invalid_argument, "onProgress", "must be a function");
        }
        st->params.progress_callback = on_load_progress;
        st->params.progress_callback_user_data = st.get();

        return promise_worker::run(env, "batchwise.Model.load",
            [st]() {
                check_gguf_file(st->path);
                log_capture_begin();
                st->model = llama_model_load_from_file(st->path.c_str(), st->params);
                std::string why = log_capture_end();
                if (!st->model) { // the file passed check_gguf_file: what is left is llama.cpp's to explain
                    throw bw_error(code::model_load_failed, "failed to load " + st->path + (why.empty() ? "" : ": " + why));
                }
            },
            [st](Napi::Env env) -> Napi::Value {
                Napi::Value m = env_of(env).model_ctor.New({ Napi::External<llama_model>::New(env, st->model),
                                                   Napi::Boolean::New(env, st->params.vocab_only) });
                st->model = nullptr; // owned by the Model now
                return m;
            },
            [st]() {
                if (st->has_progress) {
                    st->progress.Release();
                    st->has_progress = false;
                }
                if (st->model) { // resolve did not take it: do not leak
                    llama_model_free(st->model);
                    st->model = nullptr;
                }
            });
    });
}

// ---- instance methods ------------------------------------------------------------------------

Napi::Value model_wrap::metadata(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        get();
        return meta_.Value();
    });
}

static std::vector<llama_token> read_tokens(const Napi::Value & v, const model_wrap & m) {
    std::vector<llama_token> out;
    if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
        Napi::Int32Array a = v.As<Napi::Int32Array>();
        out.assign(a.Data(), a.Data() + a.ElementLength());
    } else if (v.IsArray()) {
        Napi::Array a = v.As<Napi::Array>();
        out.resize(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) {
            Napi::Value x = a.Get(i);
            if (!x.IsNumber()) {
                throw arg_error(code::invalid_argument, "tokens", "must be integers");
            }
            double d = x.As<Napi::Number>().DoubleValue();
            if (!(d >= INT32_MIN && d <= INT32_MAX && std::floor(d) == d)) { // NaN too: no cast of what does not fit
                throw bw_error(code::token_range, "token " + std::to_string(d) + " is not a valid token id",
                               "tokens[" + std::to_string(i) + "]", "is not a valid token id (got " + format_num(d) + ")");
            }
            out[i] = (int32_t) d;
        }
    } else {
        throw arg_error(code::invalid_argument, "tokens", "must be an Int32Array or an array of integers");
    }
    for (llama_token t : out) {
        m.check_token(t, "token", "tokens");
    }
    return out;
}

// tokenize(text, { addSpecial = true, parseSpecial = false }) -> Promise<Int32Array>
Napi::Value model_wrap::tokenize(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        auto text = std::make_shared<std::string>(arg_string(info, 0, "text"));
        Napi::Object o = opt_object(info, 1, "tokenize options");
        bool add_special   = get_bool(o, "addSpecial", true);
        bool parse_special = get_bool(o, "parseSpecial", false);
        auto out = std::make_shared<std::vector<llama_token>>();
        const llama_vocab * vocab = vocab_;
        auto pin = handle(); // keeps the weights alive until the work is done
        return promise_worker::run(env, "batchwise.Model.tokenize",
            [=]() {
                if (text->size() > (size_t) INT32_MAX) {
                    throw arg_error(code::invalid_argument, "text", "is too long to tokenize");
                }
                fill_growing(*out, text->size() + 2, [&](llama_token * data, int32_t cap) {
                    return llama_tokenize(vocab, text->data(), (int32_t) text->size(), data, cap, add_special, parse_special);
                });
            },
            [out](Napi::Env env) -> Napi::Value {
                Napi::Int32Array a = Napi::Int32Array::New(env, out->size());
                std::copy(out->begin(), out->end(), a.Data());
                return a;
            },
            [pin]() {},
            Value());
    });
}

// detokenize(tokens, { special = false }) -> Promise<string>
Napi::Value model_wrap::detokenize(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        if (info.Length() < 1) {
            throw arg_error(code::invalid_argument, "tokens", "must be an Int32Array or an array of integers");
        }
        auto tokens = std::make_shared<std::vector<llama_token>>(read_tokens(info[0], *this));
        Napi::Object o = opt_object(info, 1, "detokenize options");
        bool special = get_bool(o, "special", false);
        auto out = std::make_shared<std::string>();
        const llama_vocab * vocab = vocab_;
        auto pin = handle();
        return promise_worker::run(env, "batchwise.Model.detokenize",
            [=]() {
                fill_growing(*out, tokens->size() * 8 + 16, [&](char * data, int32_t cap) {
                    return llama_detokenize(vocab, tokens->data(), (int32_t) tokens->size(), data, cap, false, special);
                });
            },
            [out](Napi::Env env) -> Napi::Value { return Napi::String::New(env, *out); },
            [pin]() {},
            Value());
    });
}

// tokenToPiece(token, { special = false }) -> Uint8Array (raw bytes: a piece may hold part of a UTF-8 character)
Napi::Value model_wrap::token_to_piece(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        int32_t token = arg_int(info, 0, "token");
        check_token(token, "token");
        Napi::Object o = opt_object(info, 1, "tokenToPiece options");
        bool special = get_bool(o, "special", false);
        std::string piece;
        fill_growing(piece, 64, [&](char * data, int32_t cap) {
            return llama_token_to_piece(vocab_, token, data, cap, 0, special);
        });
        Napi::Uint8Array a = Napi::Uint8Array::New(env, piece.size());
        std::memcpy(a.Data(), piece.data(), piece.size());
        return a;
    });
}

Napi::Value model_wrap::is_eog(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        get();
        int32_t token = arg_int(info, 0, "token");
        check_token(token, "token");
        return Napi::Boolean::New(info.Env(), llama_vocab_is_eog(vocab_, token));
    });
}

// applyChatTemplate(messages: {role, content}[], { addAssistant = true, template? }) -> string
Napi::Value model_wrap::apply_chat_template(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        if (info.Length() < 1 || !info[0].IsArray()) {
            throw arg_error(code::invalid_argument, "messages", "must be an array of { role, content }");
        }
        Napi::Array arr = info[0].As<Napi::Array>();
        Napi::Object o = opt_object(info, 1, "chat template options");
        bool add_ass = get_bool(o, "addAssistant", true);
        std::string tmpl = get_str(o, "template", "");
        if (tmpl.empty()) {
            const char * t = llama_model_chat_template(get(), nullptr);
            if (!t) {
                throw bw_error(code::template_failed, "the model has no chat template: pass one in options.template");
            }
            tmpl = t;
        }
        std::vector<std::string> roles(arr.Length()), contents(arr.Length());
        std::vector<llama_chat_message> msgs(arr.Length());
        size_t total = 0;
        for (uint32_t i = 0; i < arr.Length(); i++) {
            Napi::Value v = arr.Get(i);
            if (!v.IsObject()) {
                throw arg_error(code::invalid_argument, "messages[" + std::to_string(i) + "]", "must be an object");
            }
            Napi::Object m = v.As<Napi::Object>();
            const std::string path = "messages[" + std::to_string(i) + "]";
            auto str = [&](const char * key) {
                try {
                    return get_str(m, key, "");
                } catch (bw_error & e) { // the field in the caller's terms: messages[i].role
                    e.field = path + "." + e.field;
                    throw;
                }
            };
            roles[i] = str("role");
            if (roles[i].empty()) {
                throw arg_error(code::invalid_argument, path + ".role", "must be a non-empty string");
            }
            contents[i] = str("content");
            msgs[i] = { roles[i].c_str(), contents[i].c_str() };
            total += roles[i].size() + contents[i].size();
        }
        std::vector<char> buf(total * 2 + 1024);
        int32_t n = llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, buf.data(), (int32_t) buf.size());
        if (n < 0) {
            throw bw_error(code::template_failed, "the chat template is not supported by llama.cpp's built-in templates");
        }
        if ((size_t) n > buf.size()) {
            buf.resize(n);
            n = llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, buf.data(), (int32_t) buf.size());
        }
        return Napi::String::New(env, buf.data(), n);
    });
}

// checkGrammar(gbnf, root = "root", { lazy = false, triggers }): throws ERR_INVALID_ARGUMENT with llama.cpp's parse
// error when the grammar does not parse or cannot start at `root` over this vocabulary, and ERR_SAMPLER_INVALID (as
// setSampler would) when a trigger is malformed or its regex does not compile, or a lazy grammar has no trigger.
Napi::Value model_wrap::check_grammar(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        get();
        const std::string grammar = arg_string(info, 0, "grammar");
        std::string root = "root";
        if (info.Length() > 1 && !info[1].IsUndefined()) {
            root = arg_string(info, 1, "grammar root", "root");
        }
        Napi::Object o = opt_object(info, 2, "checkGrammar options");
        const bool lazy = get_bool(o, "lazy", false);
        std::vector<grammar_trigger> triggers;
        if (has(o, "triggers")) {
            triggers = parse_grammar_triggers(o.Get("triggers"), *this, code::sampler_invalid, "grammarTriggers");
        }
        if (lazy && triggers.empty()) {
            throw arg_error(code::sampler_invalid, "grammarTriggers", "must not be empty for a lazy grammar (nothing would start it)");
        }
        trigger_patterns(triggers, code::sampler_invalid, "grammarTriggers");
        if (grammar.empty()) {
            throw bw_error(code::invalid_argument, "the grammar is empty", "grammar", "is empty");
        }
        check_grammar_limits(grammar, "the grammar");
        log_capture_begin();
        llama_sampler * g = llama_sampler_init_grammar(vocab_, grammar.c_str(), root.c_str());
        std::string why = log_capture_end();
        if (!g) {
            const std::string reason = "does not parse" + (why.empty() ? std::string() : ": " + why);
            throw bw_error(code::invalid_argument, "the grammar " + reason, "grammar", reason);
        }
        llama_sampler_free(g);
        return info.Env().Undefined();
    });
}

Napi::Value model_wrap::dispose(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        if (!handle_) {
            return info.Env().Undefined();
        }
        if (handle_->n_contexts > 0) {
            throw bw_error(code::model_in_use, "the model still has " + std::to_string(handle_->n_contexts) +
                           " live context(s): dispose them first");
        }
        handle_.reset(); // the weights go once in-flight work lets go of them too
        return info.Env().Undefined();
    });
}

Napi::Value model_wrap::get_disposed(const Napi::CallbackInfo & info) {
    return Napi::Boolean::New(info.Env(), !handle_);
}

} // namespace bw
