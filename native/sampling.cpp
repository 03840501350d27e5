#include "sampling.h"

#include "grammar.h"
#include "limits.h"
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>

namespace bw {

// ---- parsing ---------------------------------------------------------------------------------

static std::vector<llama_logit_bias> parse_logit_bias(const Napi::Value & v, const model_wrap & m) {
    std::vector<llama_logit_bias> out;
    auto add = [&](double tok, const Napi::Value & b) {
        if (!(tok >= INT32_MIN && tok <= INT32_MAX && std::floor(tok) == tok)) { // NaN too: no cast of what does not fit
            throw bw_error(code::token_range, "logitBias token " + std::to_string(tok) + " is not a token id", "logitBias",
                           "has a token " + format_num(tok) + " that is not a token id");
        }
        m.check_token((int32_t) tok, "logitBias token", "logitBias");
        if (!b.IsNumber()) {
            throw arg_error(code::invalid_argument, "logitBias", "values must be numbers");
        }
        double bias = b.As<Napi::Number>().DoubleValue();
        if (std::isnan(bias)) {
            throw arg_error(code::invalid_argument, "logitBias", "values must not be NaN");
        }
        // -inf bans a token; +inf, or a finite bias beyond a float (inf once cast), would make the logits NaN
        if (bias != -INFINITY && !fits_float(bias)) {
            throw arg_error(code::invalid_argument, "logitBias", "values must be 32-bit floats or -Infinity (got " + format_num(bias) + ")");
        }
        out.push_back({ (llama_token) tok, bias == -INFINITY ? -INFINITY : to_float(bias) });
    };
    auto check_count = [](uint32_t n) {
        if (n > (uint32_t) limits::max_logit_bias) {
            throw arg_error(code::invalid_argument, "logitBias", "has " + std::to_string(n) + " entries, at most " +
                            std::to_string(limits::max_logit_bias) + " are allowed");
        }
    };
    if (v.IsArray()) { // [[token, bias], ...]
        Napi::Array a = v.As<Napi::Array>();
        check_count(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) {
            Napi::Value e = a.Get(i);
            if (!e.IsArray() || e.As<Napi::Array>().Length() != 2 || !e.As<Napi::Array>().Get(0u).IsNumber()) {
                throw arg_error(code::invalid_argument, "logitBias", "must be [[token, bias], ...] or { token: bias }");
            }
            add(e.As<Napi::Array>().Get(0u).As<Napi::Number>().DoubleValue(), e.As<Napi::Array>().Get(1u));
        }
    } else if (v.IsObject()) { // { "123": -100 }
        Napi::Object o = v.As<Napi::Object>();
        Napi::Array keys = o.GetPropertyNames();
        check_count(keys.Length());
        for (uint32_t i = 0; i < keys.Length(); i++) {
            std::string k = keys.Get(i).ToString().Utf8Value();
            char * end = nullptr;
            double tok = std::strtod(k.c_str(), &end);
            if (end == k.c_str() || *end != '\0') {
                throw bw_error(code::token_range, "logitBias key '" + k + "' is not a token id", "logitBias",
                               "has a key '" + k + "' that is not a token id");
            }
            add(tok, o.Get(k));
        }
    } else {
        throw arg_error(code::invalid_argument, "logitBias", "must be [[token, bias], ...] or { token: bias }");
    }
    return out;
}

sampler_params parse_sampler_params(const Napi::Object & o, const model_wrap & model) {
    sampler_params p;
    // the numbers llama.cpp takes as floats are refused beyond a float's range, before they are cast
    p.temperature       = get_float(o, "temperature", 1.0);
    p.top_k             = get_int(o, "topK", 0);
    p.top_p             = get_float(o, "topP", 1.0);
    p.min_p             = get_float(o, "minP", 0.0);
    p.repeat_penalty    = get_float(o, "repeatPenalty", 1.0);
    p.presence_penalty  = get_float(o, "presencePenalty", 0.0);
    p.frequency_penalty = get_float(o, "frequencyPenalty", 0.0);
    p.penalty_last_n    = get_int(o, "penaltyLastN", 64);
    p.seed              = get_int64(o, "seed", -1);
    p.logprobs          = get_int(o, "logprobs", -1);
    p.backend           = get_bool(o, "backend", true);
    if (p.temperature < 0)                      throw arg_error(code::sampler_invalid, "temperature", "must be >= 0");
    if (p.top_k < 0)                            throw arg_error(code::sampler_invalid, "topK", "must be >= 0");
    if (p.top_p <= 0 || p.top_p > 1)            throw arg_error(code::sampler_invalid, "topP", "must be in (0, 1]");
    if (p.min_p < 0 || p.min_p > 1)             throw arg_error(code::sampler_invalid, "minP", "must be in [0, 1]");
    if (p.repeat_penalty <= 0)                  throw arg_error(code::sampler_invalid, "repeatPenalty", "must be > 0");
    if (p.penalty_last_n < -1)                  throw arg_error(code::sampler_invalid, "penaltyLastN", "must be >= -1");
    if (p.logprobs < -1 || p.logprobs > limits::max_logprobs) {
        throw arg_error(code::sampler_invalid, "logprobs", "must be between 0 and " + std::to_string(limits::max_logprobs));
    }
    if (p.seed < -1 || p.seed > (int64_t) UINT32_MAX) throw arg_error(code::sampler_invalid, "seed", "must be an unsigned 32-bit integer");
    if (has(o, "logitBias")) {
        p.logit_bias = parse_logit_bias(o.Get("logitBias"), model);
    }
    p.grammar      = get_str(o, "grammar", "");
    check_grammar_limits(p.grammar, "the sampler's grammar");
    p.grammar_root = get_str(o, "grammarRoot", "root");
    if (has(o, "history")) {
        Napi::Value h = o.Get("history");
        if (!h.IsTypedArray() || h.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
            throw arg_error(code::invalid_argument, "history", "must be an Int32Array");
        }
        Napi::Int32Array a = h.As<Napi::Int32Array>();
        p.history.assign(a.Data(), a.Data() + a.ElementLength());
        for (llama_token t : p.history) {
            model.check_token(t, "history token", "history");
        }
    }
    return p;
}

// ---- building --------------------------------------------------------------------------------

// Whether the grammar, in its current state, allows `t` next (only that token's text is matched).
static bool grammar_allows(llama_sampler * grammar, llama_token t) {
    llama_token_data one_tok = { t, 1.0f, 0.0f };
    llama_token_data_array one = { &one_tok, 1, -1, false };
    llama_sampler_apply(grammar, &one);
    return one_tok.logit != -INFINITY;
}


// the candidates llama.cpp's backend-sampler probe graph holds (llama_sampler_backend_probe_graph in llama-sampler.cpp)
static constexpr int32_t backend_top_k_max = 128 * 1024;

// top_k at or above the vocabulary keeps every token: no top-k step at all (ggml_top_k asserts k <= n)
static int32_t effective_top_k(const sampler_params & p, int32_t n_vocab) {
    return p.top_k >= n_vocab ? 0 : p.top_k;
}

seq_sampler build_sampler(const sampler_params & p, const llama_vocab * vocab, int32_t n_vocab, int32_t n_ctx) {
    // a resumed sequence cannot have generated more tokens than its context holds (and each is accepted here, on the JS thread)
    if (p.history.size() > (size_t) n_ctx) {
        throw arg_error(code::invalid_argument, "history", "holds " + std::to_string(p.history.size()) +
                        " tokens, more than the context's " + std::to_string(n_ctx));
    }
    seq_sampler s;
    s.logprobs = p.logprobs;
    s.chain.reset(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    llama_sampler * chain = s.chain.get();
    const int32_t top_k = effective_top_k(p, n_vocab);
    if (!p.logit_bias.empty()) {
        llama_sampler_chain_add(chain, llama_sampler_init_logit_bias(n_vocab, (int32_t) p.logit_bias.size(), p.logit_bias.data()));
    }
    if (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) {
        // the window is a ring buffer of that many tokens: one longer than the context adds nothing but memory
        const int32_t n = p.penalty_last_n == -1 || p.penalty_last_n > n_ctx ? n_ctx : p.penalty_last_n;
        llama_sampler_chain_add(chain, llama_sampler_init_penalties(n_vocab, n, to_float(p.repeat_penalty),
                                                                    to_float(p.frequency_penalty), to_float(p.presence_penalty)));
    }
    if (p.temperature <= 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
    } else {
        if (top_k > 0)          llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k));
        if (p.top_p < 1.0)      llama_sampler_chain_add(chain, llama_sampler_init_top_p(to_float(p.top_p), 1));
        if (p.min_p > 0.0)      llama_sampler_chain_add(chain, llama_sampler_init_min_p(to_float(p.min_p), 1));
        llama_sampler_chain_add(chain, llama_sampler_init_temp(to_float(p.temperature)));
        llama_sampler_chain_add(chain, llama_sampler_init_dist(p.seed < 0 ? LLAMA_DEFAULT_SEED : (uint32_t) p.seed));
    }
    if (!p.grammar.empty()) {
        log_capture_begin();
        s.grammar.reset(llama_sampler_init_grammar(vocab, p.grammar.c_str(), p.grammar_root.c_str()));
        std::string why = log_capture_end();
        if (!s.grammar) {
            const std::string reason = "does not parse" + (why.empty() ? std::string() : ": " + why);
            throw bw_error(code::sampler_invalid, "the grammar " + reason, "grammar", reason);
        }
    }
    try {
        for (size_t i = 0; i < p.history.size(); i++) {
            const llama_token t = p.history[i];
            // asked first: the grammar aborts the process (GGML_ABORT, not an exception) when it is made to accept an
            // end-of-generation token before it is complete
            if (s.grammar && !grammar_allows(s.grammar.get(), t)) {
                const std::string reason = "does not fit the grammar: token " + std::to_string(t) + " (history[" +
                                           std::to_string(i) + "]) is not allowed after the ones before it";
                throw bw_error(code::sampler_invalid, "the history " + reason, "history", reason);
            }
            if (s.grammar) {
                llama_sampler_accept(s.grammar.get(), t);
            }
            llama_sampler_accept(chain, t);
        }
    } catch (const bw_error &) {
        throw;
    } catch (const std::exception & e) {
        throw bw_error(code::sampler_invalid, std::string("the history does not fit the grammar: ") + e.what(), "history",
                       std::string("does not fit the grammar: ") + e.what());
    }
    return s;
}

bool backend_allowed(const sampler_params & p, int32_t n_vocab) {
    // logprobs are computed from the raw logits, which a backend-sampled sequence does not produce.
    // llama.cpp probes a backend chain on a graph of 128K candidates, where ggml_top_k asserts k <= 128K:
    // a larger top_k (a vocabulary above 128K tokens) samples on the CPU
    return p.backend && p.logprobs < 0 && p.grammar.empty() && effective_top_k(p, n_vocab) <= backend_top_k_max;
}

// ---- sampling --------------------------------------------------------------------------------

static const float * row_logits(llama_context * ctx, int32_t row) {
    const float * logits = llama_get_logits_ith(ctx, row);
    if (!logits) {
        throw bw_error(code::decode_failed, "no logits for batch row " + std::to_string(row));
    }
    return logits;
}

// Samples with a grammar the way llama.cpp's common sampler does: the chain picks from the raw
// candidates, and the grammar checks only that one token; the whole vocabulary goes through the
// grammar (slow: every token's text is matched) only when the pick is refused. Returns token_none,
// accepting nothing, when no token is allowed.
static llama_token sample_constrained(seq_sampler & s, llama_context * ctx, int32_t row, int32_t n_vocab,
                                      std::vector<llama_token_data> & cand) {
    const float * logits = row_logits(ctx, row);
    auto fill = [&]() {
        cand.resize(n_vocab);
        for (int32_t j = 0; j < n_vocab; j++) {
            cand[j] = { j, logits[j], 0.0f };
        }
        return llama_token_data_array{ cand.data(), (size_t) n_vocab, -1, false };
    };
    llama_token_data_array all = fill();
    llama_sampler_apply(s.chain.get(), &all);
    llama_token t = all.selected >= 0 ? all.data[all.selected].id : token_none;
    if (t == token_none || !grammar_allows(s.grammar.get(), t)) {
        all = fill();
        llama_sampler_apply(s.grammar.get(), &all);
        llama_sampler_apply(s.chain.get(), &all);
        // the grammar and the chain (a logit bias of -inf) may leave nothing: accepting whatever was picked
        // then would throw and fail the whole batch, or abort the process for an end-of-generation token
        if (all.selected < 0 || all.data[all.selected].logit == -INFINITY) {
            return token_none;
        }
        t = all.data[all.selected].id;
        // so may a chain whose numbers overflow: a frequency penalty of -3e38 on a token seen twice takes a logit
        // the grammar masked from -inf to -inf - -inf = NaN, which greedy picks. The grammar is asked again
        if (!grammar_allows(s.grammar.get(), t)) {
            return token_none;
        }
    }
    llama_sampler_accept(s.grammar.get(), t);
    llama_sampler_accept(s.chain.get(), t);
    return t;
}

llama_token sample_row(seq_sampler & s, llama_context * ctx, int32_t row, int32_t n_vocab, sampling_scratch & scratch) {
    scratch.error.clear();
    try {
        if (s.grammar) {
            return sample_constrained(s, ctx, row, n_vocab, scratch.cand);
        }
        if (s.chain) {
            return llama_sampler_sample(s.chain.get(), ctx, row);
        }
        const float * logits = row_logits(ctx, row);
        return (llama_token) (std::max_element(logits, logits + n_vocab) - logits);
    } catch (const bw_error &) {
        throw; // the decode's own failure (no logits): the whole batch
    } catch (const std::exception & e) {
        // llama.cpp's grammar throws when it cannot accept what was picked: that sequence alone cannot go on
        scratch.error = e.what();
        return token_failed;
    }
}

void row_logprobs(const float * logits, int32_t n_vocab, llama_token chosen, int32_t k,
                  float & lp, llama_token * top_ids, float * top_lps, sampling_scratch & scratch) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) {
        mx = std::max(mx, logits[i]);
    }
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        sum += std::exp((double) logits[i] - mx);
    }
    const double lse = mx + std::log(sum);
    lp = (float) (logits[chosen] - lse);
    if (k <= 0) {
        return;
    }
    std::vector<int32_t> & order = scratch.order;
    order.resize(n_vocab);
    std::iota(order.begin(), order.end(), 0);
    const int32_t kk = std::min(k, n_vocab);
    std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (int32_t j = 0; j < kk; j++) {
        top_ids[j] = order[j];
        top_lps[j] = (float) (logits[order[j]] - lse);
    }
}

} // namespace bw
