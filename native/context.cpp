#include "context.h"

#include "limits.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

// from llama.cpp's common library (common.h is not included: its name clashes with ours)
int32_t common_cpu_get_num_math();

namespace bw {

// ggml_threadpool_new and _free belong to the CPU backend: reached through its registry entry, as llama.cpp's common
// library does, so that they are found also when the CPU backend is a library loaded at run time (a prebuild)
template <typename F>
static F * cpu_backend_fn(const char * name) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = dev != nullptr ? ggml_backend_dev_backend_reg(dev) : nullptr;
    return reg != nullptr ? (F *) ggml_backend_reg_get_proc_address(reg, name) : nullptr;
}

static ggml_threadpool * threadpool_new(ggml_threadpool_params * params) {
    static auto * fn = cpu_backend_fn<decltype(ggml_threadpool_new)>("ggml_threadpool_new");
    return fn != nullptr ? fn(params) : nullptr;
}

static void threadpool_free(ggml_threadpool * pool) {
    static auto * fn = cpu_backend_fn<decltype(ggml_threadpool_free)>("ggml_threadpool_free");
    if (fn != nullptr && pool != nullptr) {
        fn(pool);
    }
}

Napi::Function context_wrap::define(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "Context", {
        StaticMethod<&context_wrap::create>("create"),
        InstanceMethod<&context_wrap::info>("info"),
        InstanceMethod<&context_wrap::decode>("decode"),
        InstanceMethod<&context_wrap::set_sampler>("setSampler"),
        InstanceMethod<&context_wrap::seq_remove>("seqRemove"),
        InstanceMethod<&context_wrap::seq_copy>("seqCopy"),
        InstanceMethod<&context_wrap::set_block_table>("setBlockTable"),
        InstanceMethod<&context_wrap::claim_blocks>("claimBlocks"),
        InstanceMethod<&context_wrap::seq_keep>("seqKeep"),
        InstanceMethod<&context_wrap::seq_pos_min>("seqPosMin"),
        InstanceMethod<&context_wrap::seq_pos_max>("seqPosMax"),
        InstanceMethod<&context_wrap::perf>("perf"),
        InstanceMethod<&context_wrap::clear>("clear"),
        InstanceMethod<&context_wrap::save_sequence>("saveSequence"),
        InstanceMethod<&context_wrap::restore_sequence>("restoreSequence"),
        InstanceMethod<&context_wrap::dispose>("dispose"),
        InstanceAccessor<&context_wrap::get_disposed>("disposed"),
    });
    env_of(env).context_ctor = Napi::Persistent(fn); // per environment: each thread has its own class
    return fn;
}

// ---- create ----------------------------------------------------------------------------------

static ggml_type parse_cache_type(const std::string & s, const char * what) {
    static const std::pair<const char *, ggml_type> types[] = {
        { "f32", GGML_TYPE_F32 }, { "f16", GGML_TYPE_F16 }, { "bf16", GGML_TYPE_BF16 },
        { "q8_0", GGML_TYPE_Q8_0 }, { "q4_0", GGML_TYPE_Q4_0 }, { "q4_1", GGML_TYPE_Q4_1 },
        { "q5_0", GGML_TYPE_Q5_0 }, { "q5_1", GGML_TYPE_Q5_1 }, { "iq4_nl", GGML_TYPE_IQ4_NL },
    };
    for (const auto & t : types) {
        if (s == t.first) {
            return t.second;
        }
    }
    throw option_error(code::invalid_argument, what, "must be one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl (got '" + s + "')");
}

static llama_flash_attn_type parse_flash_attn(const Napi::Object & o) {
    if (!has(o, "flashAttention")) {
        return LLAMA_FLASH_ATTN_TYPE_AUTO;
    }
    Napi::Value v = o.Get("flashAttention");
    if (v.IsBoolean()) {
        return v.As<Napi::Boolean>().Value() ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    std::string s = get_str(o, "flashAttention", "auto");
    if (s == "auto") return LLAMA_FLASH_ATTN_TYPE_AUTO;
    if (s == "on")   return LLAMA_FLASH_ATTN_TYPE_ENABLED;
    if (s == "off")  return LLAMA_FLASH_ATTN_TYPE_DISABLED;
    throw option_error(code::invalid_argument, "flashAttention", "must be true, false, 'auto', 'on' or 'off'");
}

struct create_state {
    llama_model * model = nullptr;
    llama_context_params params;
    llama_context * ctx = nullptr;
    bool taken = false;
    int32_t kv_block_size = 0;
};

// Context.create(model, options) -> Promise<Context>
Napi::Value context_wrap::create(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        if (info.Length() < 1) {
            throw bw_error(code::invalid_argument, "expected a Model", "model", "must be a Model");
        }
        model_wrap * m = model_wrap::unwrap(info[0]);
        Napi::Object o = opt_object(info, 1, "context options");
        auto st = std::make_shared<create_state>();
        auto weights = m->handle();
        if (weights->vocab_only) {
            throw bw_error(code::invalid_argument, "the model was loaded with vocabOnly: it has no weights to run a context on");
        }
        st->model = weights->model;
        auto & p = st->params;
        p = llama_context_default_params();
        const int32_t n_ctx_train = llama_model_n_ctx_train(st->model);
        int64_t n_ctx = get_int64(o, "contextSize", 0);
        static_assert(limits::max_context_size == 16 * 1024 * 1024, "the message says 16M");
        if (n_ctx < 0 || n_ctx > limits::max_context_size) {
            throw option_error(code::invalid_argument, "contextSize", "must be between 0 (the model's trained context) and 16M");
        }
        p.n_ctx = n_ctx == 0 ? (uint32_t) n_ctx_train : (uint32_t) n_ctx;
        // seqIds: the sequence ids the context has (llama.cpp's n_seq_max); maxSequences is its old name, still taken
        const char * seq_ids_name = has(o, "seqIds") ? "seqIds" : "maxSequences";
        int32_t n_seq = get_int(o, seq_ids_name, 1);
        if (has(o, "seqIds") && has(o, "maxSequences") && get_int(o, "maxSequences", n_seq) != n_seq) {
            throw option_error(code::invalid_argument, "seqIds", "and its old name 'maxSequences' disagree (" + std::to_string(n_seq) +
                               " and " + std::to_string(get_int(o, "maxSequences", n_seq)) + "): give only seqIds");
        }
        if (n_seq < 1 || (size_t) n_seq > llama_max_parallel_sequences()) {
            throw option_error(code::invalid_argument, seq_ids_name, "must be between 1 and " +
                               std::to_string(llama_max_parallel_sequences()));
        }
        p.n_seq_max = (uint32_t) n_seq;
        int32_t n_batch = get_int(o, "batchSize", 2048);
        int32_t n_ubatch = get_int(o, "ubatchSize", std::min(512, n_batch));
        if (n_batch < 1 || n_ubatch < 1) {
            throw bw_error(code::invalid_argument, "options 'batchSize' and 'ubatchSize' must be positive",
                           n_batch < 1 ? "batchSize" : "ubatchSize", "must be positive");
        }
        if (n_ubatch > n_batch) {
            throw bw_error(code::invalid_argument, "option 'ubatchSize' (" + std::to_string(n_ubatch) +
                           ") must not exceed 'batchSize' (" + std::to_string(n_batch) + ")",
                           "ubatchSize", "must not exceed 'batchSize' (" + std::to_string(n_batch) + ")");
        }
        // llama.cpp keeps an output row per sequence within a batch of min(contextSize, batchSize) tokens, and
        // asserts (aborts the process) when there are more sequences than that
        const int64_t rows = std::min<int64_t>(p.n_ctx, n_batch);
        if (rows > 0 && n_seq > rows) {
            const std::string reason = "must not exceed the context's batch of min(contextSize, batchSize) = " + std::to_string(rows) + " tokens";
            throw bw_error(code::invalid_argument, std::string("option '") + seq_ids_name + "' (" + std::to_string(n_seq) + ") " + reason,
                           seq_ids_name, reason + " (got " + std::to_string(n_seq) + ")");
        }
        p.n_batch  = (uint32_t) n_batch;
        p.n_ubatch = (uint32_t) n_ubatch;
        p.flash_attn_type = parse_flash_attn(o);
        p.type_k = parse_cache_type(get_str(o, "kvCacheTypeK", "f16"), "kvCacheTypeK");
        p.type_v = parse_cache_type(get_str(o, "kvCacheTypeV", "f16"), "kvCacheTypeV");
        p.kv_unified = get_bool(o, "kvUnified", true);
        int32_t kv_block_size = get_int(o, "kvBlockSize", 0);
        if (kv_block_size < 0 || kv_block_size > limits::max_kv_block_size || (kv_block_size & (kv_block_size - 1)) != 0) {
            throw option_error(code::invalid_argument, "kvBlockSize", "must be 0 (llama.cpp places tokens) or a power of two up to " +
                               std::to_string(limits::max_kv_block_size));
        }
        if (kv_block_size > 0 && !p.kv_unified) {
            throw bw_error(code::invalid_argument, "option 'kvBlockSize' (a paged KV cache) needs kvUnified", "kvBlockSize", "needs kvUnified");
        }
        st->kv_block_size = kv_block_size;
        p.offload_kqv = get_bool(o, "offloadKqv", true);
        p.no_perf = true;
        // llama.cpp's own default (llama-server's too): the cores useful for math, i.e. physical cores
        // without their hyperthread siblings. One thread per logical CPU oversubscribes the cores,
        // and with Node's main thread beside ggml's spinning workers a 2-vCPU machine decoded 4x slower.
        const int32_t hw = std::max<int32_t>(1, common_cpu_get_num_math());
        p.n_threads = get_int(o, "threads", hw);
        p.n_threads_batch = get_int(o, "threadsBatch", p.n_threads);
        if (p.n_threads < 1 || p.n_threads_batch < 1) {
            throw bw_error(code::invalid_argument, "options 'threads' and 'threadsBatch' must be positive",
                           p.n_threads < 1 ? "threads" : "threadsBatch", "must be positive");
        }
        // ggml starts this many threads per context (and more than it can fail to allocate or start: an abort)
        for (const auto & [name, n] : { std::make_pair("threads", p.n_threads), std::make_pair("threadsBatch", p.n_threads_batch) }) {
            if (n > limits::max_threads) {
                throw option_error(code::invalid_argument, name, "must be between 1 and " + std::to_string(limits::max_threads) +
                                   " (got " + std::to_string(n) + ")");
            }
        }
        weights->n_contexts++; // the model refuses dispose() from now on; undone if creation fails
        auto model_keep = std::make_shared<Napi::ObjectReference>(Napi::Persistent(info[0].As<Napi::Object>()));
        return promise_worker::run(env, "batchwise.Context.create",
            [st]() {
                log_capture_begin();
                st->ctx = llama_init_from_model(st->model, st->params);
                bool paged = st->ctx && (st->kv_block_size == 0 || llama_kv_paged_enable(st->ctx, (uint32_t) st->kv_block_size));
                std::string why = log_capture_end();
                if (!st->ctx) {
                    throw bw_error(code::context_failed, "failed to create the context" + (why.empty() ? "" : ": " + why));
                }
                if (!paged) {
                    // not the caller's mistake but a limit of llama.cpp for this model on this device (a sliding-window
                    // or recurrent memory, flash attention off, no paged attention kernel): a code of its own, so the
                    // engine can fall back to the unified pool without reading the message
                    throw bw_error(code::paged_kv_unsupported, "failed to set up the paged KV cache" + (why.empty() ? "" : ": " + why),
                                   "kvBlockSize", "cannot be used with this model and device" + (why.empty() ? "" : ": " + why));
                }
            },
            [st, model_keep](Napi::Env env) -> Napi::Value {
                Napi::Value c = env_of(env).context_ctor.New({ model_keep->Value(), Napi::External<llama_context>::New(env, st->ctx),
                                                     Napi::Number::New(env, st->params.kv_unified),
                                                     Napi::Number::New(env, (int) st->params.flash_attn_type),
                                                     Napi::Number::New(env, st->kv_block_size) });
                st->ctx = nullptr; // owned by the Context now
                st->taken = true;
                return c;
            },
            [st, weights]() { // runs after resolve, or after a failure
                if (st->ctx) {
                    llama_free(st->ctx);
                    st->ctx = nullptr;
                }
                if (!st->taken) {
                    weights->n_contexts--;
                }
            },
            Napi::Object());
    });
}

context_wrap::context_wrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<context_wrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[1].IsExternal()) {
        throw make_error(env, code::invalid_argument, "Context cannot be constructed directly: use Context.create()");
    }
    model_     = Napi::ObjectWrap<model_wrap>::Unwrap(info[0].As<Napi::Object>());
    model_ref_ = Napi::Persistent(info[0].As<Napi::Object>());
    weights_   = model_->handle();
    ctx_       = info[1].As<Napi::External<llama_context>>().Data();
    kv_unified_ = info[2].As<Napi::Number>().Int32Value() != 0;
    flash_attn_ = info[3].As<Napi::Number>().Int32Value();
    kv_block_size_ = info[4].As<Napi::Number>().Int32Value();
    n_seq_max_ = (int32_t) llama_n_seq_max(ctx_);
    n_batch_   = (int32_t) llama_n_batch(ctx_);
    batch_     = llama_batch_init(n_batch_, 0, 1);
    samplers_.resize(n_seq_max_);
    // Persistent CPU thread pools, as llama-server attaches them: without one, ggml makes a throwaway
    // pool for every graph it computes (threads started per decode), which made single-sequence decode
    // on a 2-core machine 4x slower than llama-server's.
    ggml_threadpool_params tpp = ggml_threadpool_params_default(llama_n_threads(ctx_));
    ggml_threadpool_params tpp_batch = ggml_threadpool_params_default(llama_n_threads_batch(ctx_));
    if (!ggml_threadpool_params_match(&tpp, &tpp_batch)) {
        threadpool_batch_ = threadpool_new(&tpp_batch);
        tpp.paused = true; // llama.cpp resumes whichever pool a batch uses
    }
    threadpool_ = threadpool_new(&tpp);
    if (threadpool_) {
        llama_attach_threadpool(ctx_, threadpool_, threadpool_batch_);
    }
    env_ = &env_of(env);
    env_->contexts.insert(this);
}

context_wrap::~context_wrap() {
    if (env_ != nullptr) {
        env_->contexts.erase(this);
    }
    free_context();
}

void context_wrap::teardown() {
    env_ = nullptr;
    disposed_ = true;
    if (n_pending_ == 0) {
        free_context();
    }
}

void context_wrap::free_context() {
    if (ctx_ == nullptr) {
        return;
    }
    llama_detach_threadpool(ctx_);
    llama_free(ctx_);
    ctx_ = nullptr;
    if (threadpool_) {
        threadpool_free(threadpool_);
        threadpool_ = nullptr;
    }
    if (threadpool_batch_) {
        threadpool_free(threadpool_batch_);
        threadpool_batch_ = nullptr;
    }
    samplers_.clear(); // after llama_free: the context held the chains sampled in its graph
    llama_batch_free(batch_);
    batch_ = {};
    weights_->n_contexts--;
    weights_.reset();
    if (!model_ref_.IsEmpty()) {
        model_ref_.Reset();
    }
}

void context_wrap::end_work() {
    n_pending_--;
    if (disposed_ && n_pending_ == 0) {
        free_context();
    }
}

llama_context * context_wrap::get() const {
    if (disposed_ || ctx_ == nullptr) {
        throw bw_error(code::disposed, "the context has been disposed");
    }
    return ctx_;
}

void context_wrap::check_idle() const {
    if (n_pending_ > 0) {
        throw bw_error(code::context_busy, "the context is busy with a decode or state operation: await it first");
    }
}

void context_wrap::check_seq(int32_t seq, const char * what, bool allow_any) const {
    if (allow_any && seq == -1) {
        return;
    }
    if (seq < 0 || seq >= n_seq_max_) {
        throw arg_error(code::seq_id_range, what, std::to_string(seq) + " is out of range [0, " + std::to_string(n_seq_max_) + ")");
    }
}

Napi::Value context_wrap::info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        llama_context * c = get();
        Napi::Object o = Napi::Object::New(env);
        o.Set("contextSize", llama_n_ctx(c));
        o.Set("sequenceContextSize", llama_n_ctx_seq(c));
        o.Set("seqIds", llama_n_seq_max(c));
        o.Set("maxSequences", llama_n_seq_max(c)); // the old name of seqIds, kept for now
        o.Set("batchSize", llama_n_batch(c));
        o.Set("ubatchSize", llama_n_ubatch(c));
        o.Set("kvUnified", kv_unified_);
        o.Set("kvBlockSize", kv_block_size_);
        o.Set("flashAttention", flash_attn_ == LLAMA_FLASH_ATTN_TYPE_AUTO ? "auto" :
                                flash_attn_ == LLAMA_FLASH_ATTN_TYPE_ENABLED ? "on" : "off");
        return o;
    });
}

// ---- sampling --------------------------------------------------------------------------------

void context_wrap::clear_sampler(int32_t seq) {
    seq_sampler & s = samplers_[seq];
    if (s.backend) {
        llama_set_sampler(ctx_, seq, nullptr);
    }
    s = seq_sampler{};
}

// setSampler(seqId, params | null): the sampler chain used for this sequence's outputs.
// params: { temperature = 1, topK = 0, topP = 1, minP = 0, repeatPenalty = 1, presencePenalty = 0,
//           frequencyPenalty = 0, penaltyLastN = 64, logitBias, seed, logprobs, backend = true,
//           grammar (GBNF text), grammarRoot = "root", grammarLazy, grammarTriggers, grammarPrefill,
//           reasoningBudget { tokens, startTag, endTags, message?, prefill? }, history (Int32Array) }
// A lazy grammar constrains only from its first trigger on. grammarPrefill (a non-lazy grammar's generation prompt)
// and reasoningBudget.prefill are fed before the history. A reasoning budget forces tokens: it samples on the CPU.
// temperature <= 0 is greedy. A grammar masks every token it does not allow (it runs on the CPU).
// history: tokens this sequence has already generated, fed to the chain as if it had sampled them,
// so that a sequence resumed after preemption keeps its grammar state and penalty window.
// Returns { backend } : whether sampling runs inside the graph (GPU).
Napi::Value context_wrap::set_sampler(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        if (info.Length() < 2 || info[1].IsNull() || info[1].IsUndefined()) {
            clear_sampler(seq);
            Napi::Object r = Napi::Object::New(env);
            r.Set("backend", false);
            return r;
        }
        const sampler_params p = parse_sampler_params(opt_object(info, 1, "sampler params", "params"), *model_);
        const int32_t n_vocab = model_->n_vocab();
        seq_sampler built = build_sampler(p, model_->vocab(), n_vocab, (int32_t) llama_n_ctx(c));
        clear_sampler(seq); // the old chain goes after the new one is made, so the two never share an address
        seq_sampler & s = samplers_[seq];
        s = std::move(built);
        if (backend_allowed(p, n_vocab)) {
            s.backend = llama_set_sampler(c, seq, s.chain.get());
        }
        Napi::Object r = Napi::Object::New(env);
        r.Set("backend", s.backend);
        return r;
    });
}

// ---- decode ----------------------------------------------------------------------------------

template <typename T>
static const T * typed_field(const Napi::Object & o, const char * key, napi_typedarray_type type, const char * type_name,
                             size_t & len) {
    if (!o.Has(key)) {
        throw arg_error(code::invalid_argument, std::string("batch.") + key, std::string("must be an ") + type_name);
    }
    Napi::Value v = o.Get(key);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
        throw arg_error(code::invalid_argument, std::string("batch.") + key, std::string("must be an ") + type_name);
    }
    Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
    len = a.ElementLength();
    return a.Data();
}

struct decode_job {
    std::vector<llama_token>  tokens;
    std::vector<llama_pos>    pos;
    std::vector<llama_seq_id> seq;
    std::vector<int8_t>       out;
    // results, one entry per output row
    std::vector<llama_token>  sampled;
    std::vector<float>        logprob;
    bool                      want_logprobs = false;
    int32_t                   top_k = 0;
    std::vector<llama_token>  top_ids;
    std::vector<float>        top_logprobs;
    double                    decode_ms = 0;
    double                    sample_ms = 0;
};

static double now_ms() {
    return (double) llama_time_us() / 1000.0;
}

// decode({ tokens: Int32Array, positions: Int32Array, seqIds: Int32Array, outputs: Uint8Array })
//   -> Promise<{ tokens: Int32Array, logprobs: Float32Array | null, topK, topIds, topLogprobs, decodeMs, sampleMs }>
// One result row per token with outputs[i] != 0, in batch order: the token sampled with that sequence's sampler,
// -1 where its grammar and sampler allow no token, or -2 where llama.cpp's sampler gave no valid token id (an internal
// error); either way that sequence cannot go on, and the others are unaffected.
Napi::Value context_wrap::decode(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        if (info.Length() < 1 || !info[0].IsObject()) {
            throw bw_error(code::invalid_argument, "decode expects a batch { tokens, positions, seqIds, outputs }", "batch",
                           "must be { tokens, positions, seqIds, outputs }");
        }
        Napi::Object b = info[0].As<Napi::Object>();
        size_t n_tok, n_pos, n_seq, n_out;
        const int32_t * tok = typed_field<int32_t>(b, "tokens", napi_int32_array, "Int32Array", n_tok);
        const int32_t * pos = typed_field<int32_t>(b, "positions", napi_int32_array, "Int32Array", n_pos);
        const int32_t * sq  = typed_field<int32_t>(b, "seqIds", napi_int32_array, "Int32Array", n_seq);
        const uint8_t * out = typed_field<uint8_t>(b, "outputs", napi_uint8_array, "Uint8Array", n_out);
        if (n_pos != n_tok || n_seq != n_tok || n_out != n_tok) {
            const std::string lengths = "(tokens " + std::to_string(n_tok) + ", positions " + std::to_string(n_pos) +
                                        ", seqIds " + std::to_string(n_seq) + ", outputs " + std::to_string(n_out) + ")";
            throw bw_error(code::invalid_argument, "batch arrays must have the same length " + lengths, "batch",
                           "arrays must have the same length " + lengths);
        }
        if (n_tok == 0) {
            throw bw_error(code::invalid_argument, "the batch is empty", "batch.tokens", "is empty");
        }
        if (n_tok > (size_t) n_batch_) {
            const std::string reason = "holds " + std::to_string(n_tok) + " tokens, more than the context's batchSize " +
                                       std::to_string(n_batch_);
            throw bw_error(code::batch_too_large, "the batch " + reason, "batch.tokens", reason);
        }
        auto job = std::make_shared<decode_job>();
        job->tokens.assign(tok, tok + n_tok);
        job->pos.assign(pos, pos + n_tok);
        job->seq.assign(sq, sq + n_tok);
        job->out.resize(n_tok);
        size_t n_outputs = 0;
        int32_t top_k = 0;
        bool want_logprobs = false;
        const int32_t n_vocab = model_->n_vocab();
        for (size_t i = 0; i < n_tok; i++) {
            // plain range checks on the hot path; the message is built only on failure
            if (tok[i] < 0 || tok[i] >= n_vocab) {
                model_->check_token(tok[i], ("batch.tokens[" + std::to_string(i) + "]").c_str());
            }
            if (sq[i] < 0 || sq[i] >= n_seq_max_) {
                check_seq(sq[i], ("batch.seqIds[" + std::to_string(i) + "]").c_str());
            }
            if (pos[i] < 0) {
                throw arg_error(code::invalid_argument, "batch.positions[" + std::to_string(i) + "]", "must be >= 0");
            }
            job->out[i] = out[i] ? 1 : 0;
            if (job->out[i]) {
                n_outputs++;
                top_k = std::max(top_k, samplers_[sq[i]].logprobs);
                want_logprobs = want_logprobs || samplers_[sq[i]].logprobs >= 0;
            }
        }
        job->top_k = top_k;
        job->want_logprobs = want_logprobs;
        begin_work();
        return promise_worker::run(env, "batchwise.Context.decode",
            [this, job, n_outputs]() {
                std::lock_guard<std::mutex> lock(exec_mutex_);
                const int32_t n = (int32_t) job->tokens.size();
                batch_.n_tokens = n;
                for (int32_t i = 0; i < n; i++) {
                    batch_.token[i]     = job->tokens[i];
                    batch_.pos[i]       = job->pos[i];
                    batch_.n_seq_id[i]  = 1;
                    batch_.seq_id[i][0] = job->seq[i];
                    batch_.logits[i]    = job->out[i];
                }
                double t0 = now_ms();
                log_capture_begin();
                int32_t rc = llama_decode(ctx_, batch_);
                std::string why = log_capture_end();
                job->decode_ms = now_ms() - t0;
                if (rc == 1) {
                    throw bw_error(code::kv_full, "no KV cache space for the batch (" + std::to_string(n) +
                                   " tokens): free sequences or use a smaller batch");
                }
                if (rc == -1) {
                    throw bw_error(code::batch_invalid, "llama.cpp rejected the batch" + (why.empty() ? "" : ": " + why));
                }
                if (rc != 0) {
                    throw bw_error(code::decode_failed, "decode failed with code " + std::to_string(rc) +
                                   (why.empty() ? "" : ": " + why));
                }
                t0 = now_ms();
                const int32_t n_vocab = model_->n_vocab();
                job->sampled.resize(n_outputs);
                if (job->want_logprobs) {
                    job->logprob.assign(n_outputs, NAN);
                    job->top_ids.assign(n_outputs * job->top_k, -1);
                    job->top_logprobs.assign(n_outputs * job->top_k, NAN);
                }
                sampling_scratch scratch;
                size_t row = 0;
                for (int32_t i = 0; i < n; i++) {
                    if (!job->out[i]) {
                        continue;
                    }
                    seq_sampler & s = samplers_[job->seq[i]];
                    llama_token t = sample_row(s, ctx_, i, n_vocab, scratch);
                    if (t == token_failed) {
                        std::fprintf(stderr, "batchwise: internal: sequence %d (batch row %d of %d, %zu outputs) failed to sample "
                                     "with %s: %s\n", job->seq[i], i, n, n_outputs,
                                     s.grammar ? "a grammar" : !s.chain ? "greedy" : s.backend ? "an in-graph chain" : "a CPU chain",
                                     scratch.error.c_str());
                    } else if (t < token_none || t >= n_vocab) {
                        // what llama.cpp sampled is not a token id: a defect below us, never the request's doing.
                        // That row alone reports it (-2); the batch's other sequences go on
                        float as_float;
                        std::memcpy(&as_float, &t, sizeof(t));
                        std::fprintf(stderr, "batchwise: internal: sequence %d (batch row %d of %d, %zu outputs) sampled %d (as float %g) "
                                     "with %s\n", job->seq[i], i, n, n_outputs, t, (double) as_float,
                                     s.grammar ? "a grammar" : !s.chain ? "greedy" : s.backend ? "an in-graph chain" : "a CPU chain");
                        t = token_failed;
                    }
                    job->sampled[row] = t;
                    if (s.logprobs >= 0 && t >= 0) {
                        const float * logits = llama_get_logits_ith(ctx_, i);
                        if (logits) {
                            row_logprobs(logits, n_vocab, t, s.logprobs, job->logprob[row],
                                         job->top_ids.data() + row * job->top_k,
                                         job->top_logprobs.data() + row * job->top_k, scratch);
                        }
                    }
                    row++;
                }
                job->sample_ms = now_ms() - t0;
            },
            [job](Napi::Env env) -> Napi::Value {
                Napi::Object r = Napi::Object::New(env);
                Napi::Int32Array toks = Napi::Int32Array::New(env, job->sampled.size());
                std::copy(job->sampled.begin(), job->sampled.end(), toks.Data());
                r.Set("tokens", toks);
                if (!job->logprob.empty()) {
                    Napi::Float32Array lp = Napi::Float32Array::New(env, job->logprob.size());
                    std::copy(job->logprob.begin(), job->logprob.end(), lp.Data());
                    r.Set("logprobs", lp);
                    r.Set("topK", job->top_k);
                    Napi::Int32Array ids = Napi::Int32Array::New(env, job->top_ids.size());
                    std::copy(job->top_ids.begin(), job->top_ids.end(), ids.Data());
                    Napi::Float32Array tl = Napi::Float32Array::New(env, job->top_logprobs.size());
                    std::copy(job->top_logprobs.begin(), job->top_logprobs.end(), tl.Data());
                    r.Set("topIds", ids);
                    r.Set("topLogprobs", tl);
                } else {
                    r.Set("logprobs", env.Null());
                    r.Set("topK", 0);
                }
                r.Set("decodeMs", job->decode_ms);
                r.Set("sampleMs", job->sample_ms);
                return r;
            },
            [this]() { end_work(); },
            Value());
    });
}

// ---- KV memory -------------------------------------------------------------------------------

static llama_pos opt_pos(const Napi::CallbackInfo & info, size_t i, const char * what) {
    if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) {
        return -1;
    }
    int32_t p = arg_int(info, i, what);
    if (p < -1) {
        throw arg_error(code::invalid_argument, what, "must be >= 0, or -1 for open-ended");
    }
    return p;
}

// seqRemove(seqId | -1, p0 = -1, p1 = -1) -> boolean: removes positions [p0, p1) (-1: open-ended)
Napi::Value context_wrap::seq_remove(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId", true);
        llama_pos p0 = opt_pos(info, 1, "p0"), p1 = opt_pos(info, 2, "p1");
        return Napi::Boolean::New(info.Env(), llama_memory_seq_rm(llama_get_memory(c), seq, p0, p1));
    });
}

// seqCopy(src, dst, p0 = -1, p1 = -1): dst shares src's cells for [p0, p1) (no copy of data in unified mode)
Napi::Value context_wrap::seq_copy(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t src = arg_int(info, 0, "srcSeqId");
        int32_t dst = arg_int(info, 1, "dstSeqId");
        check_seq(src, "srcSeqId");
        check_seq(dst, "dstSeqId");
        llama_pos p0 = opt_pos(info, 2, "p0"), p1 = opt_pos(info, 3, "p1");
        if (src != dst) {
            if (!kv_unified_ && (p0 > 0 || p1 >= 0)) {
                throw bw_error(code::invalid_argument, "partial sequence copies need kvUnified: per-sequence streams copy whole sequences",
                               p0 > 0 ? "p0" : "p1", "must be open-ended without kvUnified: per-sequence streams copy whole sequences");
            }
            llama_memory_seq_cp(llama_get_memory(c), src, dst, p0, p1);
        }
        return info.Env().Undefined();
    });
}

// setBlockTable(seqId, blocks: Int32Array): with kvBlockSize, the KV blocks of a sequence in position order.
// Its token at position p goes to cell blocks[p / kvBlockSize]*kvBlockSize + p % kvBlockSize, and it attends to
// exactly the cells its table lists up to its position.
Napi::Value context_wrap::set_block_table(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        if (kv_block_size_ == 0) {
            throw bw_error(code::invalid_argument, "setBlockTable needs a context created with kvBlockSize");
        }
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
            throw bw_error(code::invalid_argument, "blocks must be an Int32Array");
        }
        Napi::Int32Array blocks = info[1].As<Napi::Int32Array>();
        log_capture_begin();
        bool ok = llama_kv_paged_set_table(c, seq, blocks.Data(), (int32_t) blocks.ElementLength());
        std::string why = log_capture_end();
        if (!ok) {
            throw bw_error(code::invalid_argument, "invalid block table for sequence " + std::to_string(seq) + (why.empty() ? "" : ": " + why));
        }
        return info.Env().Undefined();
    });
}

// an error about one argument, as lib/binding/errors.ts fieldError builds it: message `'field' reason`, both as properties
static Napi::Error arg_error(Napi::Env env, const char * code, const char * field, const std::string & reason) {
    Napi::Error e = make_error(env, code, std::string("'") + field + "' " + reason);
    e.Set("field", Napi::String::New(env, field));
    e.Set("reason", Napi::String::New(env, reason));
    return e;
}

// claimBlocks(seqId, tokens): with kvBlockSize, positions [0, tokens) of the sequence's block table become its cells
// (llama_kv_paged_claim): a block's K/V outlives the sequences that held it, so a cached prefix is re-attached by
// table and claim, with no sequence keeping it. The sequence must not hold those positions elsewhere; a cell that
// holds another position is refused (ERR_STATE_FAILED) and nothing changes.
Napi::Value context_wrap::claim_blocks(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        if (kv_block_size_ == 0) {
            throw bw_error(code::invalid_argument, "claimBlocks needs a context created with kvBlockSize");
        }
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        if (info.Length() < 2 || !info[1].IsNumber()) {
            throw arg_error(env, code::invalid_argument, "tokens", "must be an integer");
        }
        const double d = info[1].As<Napi::Number>().DoubleValue();
        if (!std::isfinite(d) || std::floor(d) != d || d < 0 || d > INT32_MAX) {
            throw arg_error(env, code::invalid_argument, "tokens", "must be an integer from 0 to " + std::to_string(INT32_MAX));
        }
        const int32_t n_tokens = (int32_t) d;
        log_capture_begin();
        const int32_t rc = llama_kv_paged_claim(c, seq, n_tokens);
        std::string why = log_capture_end();
        why = why.empty() ? "" : ": " + why;
        switch (rc) {
            case LLAMA_KV_PAGED_CLAIM_OK:
                return env.Undefined();
            case LLAMA_KV_PAGED_CLAIM_NO_BLOCK:
                throw arg_error(env, code::invalid_argument, "tokens", "(" + std::to_string(n_tokens) +
                                ") is beyond the block table of sequence " + std::to_string(seq) + why);
            case LLAMA_KV_PAGED_CLAIM_CONFLICT:
                throw bw_error(code::state_failed, "cannot claim " + std::to_string(n_tokens) + " positions for sequence " +
                               std::to_string(seq) + " (a cell holds another position, or the sequence holds one elsewhere)" + why);
            case LLAMA_KV_PAGED_CLAIM_UNSUPPORTED:
                throw bw_error("ERR_PAGED_KV_UNSUPPORTED", "claimBlocks is not supported for this model" + why);
            default:
                throw bw_error(code::invalid_argument, "claimBlocks failed for sequence " + std::to_string(seq) + why);
        }
    });
}

Napi::Value context_wrap::seq_keep(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        llama_memory_seq_keep(llama_get_memory(c), seq);
        return info.Env().Undefined();
    });
}

Napi::Value context_wrap::seq_pos_min(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        return Napi::Number::New(info.Env(), llama_memory_seq_pos_min(llama_get_memory(c), seq));
    });
}

Napi::Value context_wrap::seq_pos_max(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        return Napi::Number::New(info.Env(), llama_memory_seq_pos_max(llama_get_memory(c), seq));
    });
}

// llama.cpp's counters since the context was made: graphs reused as they were, and allocation plans made for
// micro-batches' graphs (each one synchronizes the backends first when a graph spans a device and the host)
Napi::Value context_wrap::perf(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        const llama_perf_context_data d = llama_perf_context(c);
        Napi::Object r = Napi::Object::New(info.Env());
        r.Set("graphReuses", d.n_reused);
        r.Set("allocationPlans", d.n_alloc_plans);
        return r;
    });
}

Napi::Value context_wrap::clear(const Napi::CallbackInfo & info) {
    return guard(info.Env(), [&]() -> Napi::Value {
        llama_context * c = get();
        check_idle();
        llama_memory_clear(llama_get_memory(c), true);
        return info.Env().Undefined();
    });
}

// ---- sequence state --------------------------------------------------------------------------

// saveSequence(seqId) -> Promise<Buffer>: the sequence's KV state in host memory
Napi::Value context_wrap::save_sequence(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        auto data = std::make_shared<std::vector<uint8_t>>();
        begin_work();
        return promise_worker::run(env, "batchwise.Context.saveSequence",
            [this, seq, data]() {
                std::lock_guard<std::mutex> lock(exec_mutex_);
                size_t n = llama_state_seq_get_size(ctx_, seq);
                data->resize(n);
                size_t got = llama_state_seq_get_data(ctx_, data->data(), n, seq);
                if (got == 0 && n != 0) {
                    throw bw_error(code::state_failed, "failed to read the state of sequence " + std::to_string(seq));
                }
                data->resize(got);
            },
            [data](Napi::Env env) -> Napi::Value {
                return Napi::Buffer<uint8_t>::Copy(env, data->data(), data->size());
            },
            [this]() { end_work(); },
            Value());
    });
}

// restoreSequence(seqId, state: Uint8Array) -> Promise<number>: bytes read; the sequence's old cells are replaced
Napi::Value context_wrap::restore_sequence(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        get();
        int32_t seq = arg_int(info, 0, "seqId");
        check_seq(seq, "seqId");
        if (info.Length() < 2 || !info[1].IsTypedArray() ||
            info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
            throw arg_error(code::invalid_argument, "state", "must be a Buffer or Uint8Array from saveSequence()");
        }
        Napi::Uint8Array a = info[1].As<Napi::Uint8Array>();
        if (a.ElementLength() == 0) {
            throw arg_error(code::invalid_argument, "state", "is empty");
        }
        auto data = std::make_shared<std::vector<uint8_t>>(a.Data(), a.Data() + a.ElementLength());
        auto read = std::make_shared<size_t>(0);
        begin_work();
        return promise_worker::run(env, "batchwise.Context.restoreSequence",
            [this, seq, data, read]() {
                std::lock_guard<std::mutex> lock(exec_mutex_);
                llama_memory_seq_rm(llama_get_memory(ctx_), seq, -1, -1);
                log_capture_begin();
                *read = llama_state_seq_set_data(ctx_, data->data(), data->size(), seq);
                std::string why = log_capture_end();
                if (*read == 0) {
                    throw bw_error(code::state_failed, "failed to restore sequence " + std::to_string(seq) +
                                   " (state from another model or context shape, or no KV space)" +
                                   (why.empty() ? "" : ": " + why));
                }
            },
            [read](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, (double) *read); },
            [this]() { end_work(); },
            Value());
    });
}

Napi::Value context_wrap::dispose(const Napi::CallbackInfo & info) {
    if (!disposed_) {
        disposed_ = true;
        if (n_pending_ == 0) {
            free_context();
        }
    }
    return info.Env().Undefined();
}

Napi::Value context_wrap::get_disposed(const Napi::CallbackInfo & info) {
    return Napi::Boolean::New(info.Env(), disposed_);
}

} // namespace bw
