#include "sampling.h"

#include "grammar.h"
#include "limits.h"
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <regex>

#include <common.h> // llama.cpp common/common.h: common_tokenize, regex_escape
#include "reasoning-budget.h"

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

static std::string bounded_str(const Napi::Object & o, const char * key, const std::string & field, int32_t max_bytes) {
    Napi::Value v = o.Get(key);
    if (!v.IsString()) {
        throw arg_error(code::sampler_invalid, field, "must be a string");
    }
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.size() > (size_t) max_bytes) {
        throw arg_error(code::sampler_invalid, field, "is " + std::to_string(s.size()) + " bytes long, more than the " +
                        std::to_string(max_bytes) + " allowed");
    }
    return s;
}

std::vector<grammar_trigger> parse_grammar_triggers(const Napi::Value & v, const model_wrap & model, const char * err_code,
                                                    const std::string & field) {
    if (!v.IsArray()) {
        throw arg_error(err_code, field, "must be an array of { type, value, token? }");
    }
    Napi::Array a = v.As<Napi::Array>();
    if (a.Length() > (uint32_t) limits::max_grammar_triggers) {
        throw arg_error(err_code, field, "has " + std::to_string(a.Length()) + " entries, at most " +
                        std::to_string(limits::max_grammar_triggers) + " are allowed");
    }
    std::vector<grammar_trigger> out;
    for (uint32_t i = 0; i < a.Length(); i++) {
        const std::string f = field + "[" + std::to_string(i) + "]";
        Napi::Value e = a.Get(i);
        if (!e.IsObject()) {
            throw arg_error(err_code, f, "must be an object { type, value, token? }");
        }
        Napi::Object t = e.As<Napi::Object>();
        Napi::Value type = t.Get("type"), value = t.Get("value");
        if (!type.IsString()) {
            throw arg_error(err_code, f + ".type", "must be one of token, word, pattern, patternFull");
        }
        grammar_trigger g;
        const std::string ts = type.As<Napi::String>().Utf8Value();
        if (ts == "token")            g.kind = grammar_trigger::token;
        else if (ts == "word")        g.kind = grammar_trigger::word;
        else if (ts == "pattern")     g.kind = grammar_trigger::pattern;
        else if (ts == "patternFull") g.kind = grammar_trigger::pattern_full;
        else throw arg_error(err_code, f + ".type", "must be one of token, word, pattern, patternFull");
        if (!value.IsString()) {
            throw arg_error(err_code, f + ".value", "must be a string");
        }
        g.value = value.As<Napi::String>().Utf8Value();
        if (g.value.size() > (size_t) limits::max_grammar_trigger_bytes) {
            throw arg_error(err_code, f + ".value", "is " + std::to_string(g.value.size()) + " bytes long, more than the " +
                            std::to_string(limits::max_grammar_trigger_bytes) + " allowed");
        }
        if (g.value.empty() && (g.kind == grammar_trigger::word || g.kind == grammar_trigger::pattern)) {
            throw arg_error(err_code, f + ".value", "must not be empty (it would trigger at once)");
        }
        if (g.kind == grammar_trigger::token) {
            Napi::Value tok = t.Get("token");
            const double d = tok.IsNumber() ? tok.As<Napi::Number>().DoubleValue() : NAN;
            if (!(d >= INT32_MIN && d <= INT32_MAX && std::floor(d) == d)) {
                throw arg_error(err_code, f + ".token", "must be a token id");
            }
            const std::string tf = f + ".token";
            model.check_token((int32_t) d, tf.c_str());
            g.tok = (llama_token) d;
        }
        out.push_back(std::move(g));
    }
    return out;
}

std::vector<std::string> trigger_patterns(const std::vector<grammar_trigger> & triggers, const char * err_code,
                                          const std::string & field) {
    std::vector<std::string> out;
    for (size_t i = 0; i < triggers.size(); i++) {
        const grammar_trigger & t = triggers[i];
        std::string p;
        switch (t.kind) {
            case grammar_trigger::token:
                continue;
            case grammar_trigger::word:
                p = regex_escape(t.value);
                break;
            case grammar_trigger::pattern:
                p = t.value;
                break;
            case grammar_trigger::pattern_full:
                // as common_sampler_init
                p = t.value.empty() ? "^$" : (t.value.front() != '^' ? "^" : "") + t.value + (t.value.back() != '$' ? "$" : "");
                break;
        }
        try {
            std::regex re(p);
        } catch (const std::exception & e) {
            throw arg_error(err_code, field + "[" + std::to_string(i) + "].value", std::string("is not a valid regex: ") + e.what());
        }
        out.push_back(std::move(p));
    }
    return out;
}

static reasoning_budget_params parse_reasoning_budget(const Napi::Value & v) {
    const std::string f = "reasoningBudget";
    if (!v.IsObject() || v.IsArray()) {
        throw arg_error(code::sampler_invalid, f, "must be an object { tokens, startTag, endTags, message?, prefill? }");
    }
    Napi::Object o = v.As<Napi::Object>();
    reasoning_budget_params r;
    r.on = true;
    Napi::Value tokens = o.Get("tokens");
    const double d = tokens.IsNumber() ? tokens.As<Napi::Number>().DoubleValue() : NAN;
    if (!(d >= 0 && d <= INT32_MAX && std::floor(d) == d)) {
        throw arg_error(code::sampler_invalid, f + ".tokens", "must be an integer in [0, " + std::to_string(INT32_MAX) + "]");
    }
    r.tokens = (int32_t) d;
    r.start_tag = bounded_str(o, "startTag", f + ".startTag", limits::max_reasoning_tag_bytes);
    if (r.start_tag.empty()) {
        throw arg_error(code::sampler_invalid, f + ".startTag", "must not be empty");
    }
    Napi::Value ends = o.Get("endTags");
    if (!ends.IsArray() || ends.As<Napi::Array>().Length() == 0) {
        throw arg_error(code::sampler_invalid, f + ".endTags", "must be a non-empty array of strings");
    }
    Napi::Array ea = ends.As<Napi::Array>();
    if (ea.Length() > (uint32_t) limits::max_reasoning_end_tags) {
        throw arg_error(code::sampler_invalid, f + ".endTags", "has " + std::to_string(ea.Length()) + " entries, at most " +
                        std::to_string(limits::max_reasoning_end_tags) + " are allowed");
    }
    for (uint32_t i = 0; i < ea.Length(); i++) {
        const std::string ef = f + ".endTags[" + std::to_string(i) + "]";
        Napi::Object holder = Napi::Object::New(o.Env());
        holder.Set("v", ea.Get(i));
        std::string tag = bounded_str(holder, "v", ef, limits::max_reasoning_tag_bytes);
        if (tag.empty()) {
            throw arg_error(code::sampler_invalid, ef, "must not be empty");
        }
        r.end_tags.push_back(std::move(tag));
    }
    if (has(o, "message")) {
        r.message = bounded_str(o, "message", f + ".message", limits::max_sampler_prefill_bytes);
    }
    if (has(o, "prefill")) {
        r.prefill = bounded_str(o, "prefill", f + ".prefill", limits::max_sampler_prefill_bytes);
    }
    return r;
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
    p.grammar_lazy = get_bool(o, "grammarLazy", false);
    if (has(o, "grammarTriggers")) {
        p.grammar_triggers = parse_grammar_triggers(o.Get("grammarTriggers"), model, code::sampler_invalid, "grammarTriggers");
    }
    if (p.grammar_lazy && p.grammar.empty()) {
        throw arg_error(code::sampler_invalid, "grammarLazy", "needs a grammar");
    }
    if (p.grammar_lazy && p.grammar_triggers.empty()) {
        throw arg_error(code::sampler_invalid, "grammarTriggers", "must not be empty for a lazy grammar (nothing would start it)");
    }
    if (has(o, "grammarPrefill")) {
        p.grammar_prefill = bounded_str(o, "grammarPrefill", "grammarPrefill", limits::max_sampler_prefill_bytes);
    }
    if (has(o, "reasoningBudget")) {
        p.reasoning_budget = parse_reasoning_budget(o.Get("reasoningBudget"));
    }
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


// Whether the grammar constrains the next token (common/sampling.cpp grammar_should_apply): a lazy grammar stands
// aside while the reasoning budget is inside the thinking, so that a call written while thinking does not start it.
static bool grammar_should_apply(const seq_sampler & s) {
    if (!s.grammar) {
        return false;
    }
    if (!s.rbudget || !s.lazy) {
        return true;
    }
    const common_reasoning_budget_state st = common_reasoning_budget_get_state(s.rbudget.get());
    return st == REASONING_BUDGET_IDLE || st == REASONING_BUDGET_DONE;
}

// Feeds a sampled (or replayed) token to the budget, the grammar and the chain, as common_sampler_accept does: the
// budget first; when it has just ended the thinking while the grammar stood aside, the end tag it matched goes to the
// grammar (it may hold the trigger). Returns false, accepting what it had, when the grammar refuses a token (`why`):
// asked first, since the grammar aborts the process when made to accept an end-of-generation token too early.
static bool accept_token(seq_sampler & s, llama_token t, std::string & why) {
    const bool to_grammar = grammar_should_apply(s);
    if (s.rbudget) {
        llama_sampler_accept(s.rbudget.get(), t);
        if (s.grammar && !to_grammar && common_reasoning_budget_get_state(s.rbudget.get()) == REASONING_BUDGET_DONE) {
            if (const llama_tokens * end = common_reasoning_budget_get_end_match(s.rbudget.get())) {
                for (llama_token e : *end) {
                    if (!grammar_allows(s.grammar.get(), e)) {
                        why = "ends the thinking with a tag the grammar does not allow";
                        return false;
                    }
                    llama_sampler_accept(s.grammar.get(), e);
                }
            }
        }
    }
    if (to_grammar) {
        if (!grammar_allows(s.grammar.get(), t)) {
            why = "is not allowed after the ones before it";
            return false;
        }
        llama_sampler_accept(s.grammar.get(), t);
    }
    llama_sampler_accept(s.chain.get(), t);
    if (s.rebuild) {
        s.accepted.push_back(t);
    }
    return true;
}

// The tokens of a generation prompt, as common_sampler_init takes them: special tokens parsed, and a first token that
// is only the space some tokenizers put before a special token left out.
static std::vector<llama_token> prefill_tokens(const llama_vocab * vocab, const std::string & text) {
    std::vector<llama_token> out;
    if (text.empty()) {
        return out;
    }
    const std::vector<llama_token> toks = common_tokenize(vocab, text, false, true);
    for (size_t i = 0; i < toks.size(); i++) {
        const std::string piece = common_token_to_piece(vocab, toks[i], true);
        if (i == 0 && !piece.empty() && std::isspace((unsigned char) piece[0]) && !std::isspace((unsigned char) text[0])) {
            continue;
        }
        out.push_back(toks[i]);
    }
    return out;
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
        if (p.grammar_lazy) {
            const std::vector<std::string> patterns = trigger_patterns(p.grammar_triggers, code::sampler_invalid, "grammarTriggers");
            std::vector<const char *> patterns_c;
            for (const auto & x : patterns) {
                patterns_c.push_back(x.c_str());
            }
            std::vector<llama_token> tokens;
            for (const auto & t : p.grammar_triggers) {
                if (t.kind == grammar_trigger::token) {
                    tokens.push_back(t.tok);
                }
            }
            s.grammar.reset(llama_sampler_init_grammar_lazy_patterns(vocab, p.grammar.c_str(), p.grammar_root.c_str(),
                                                                     patterns_c.data(), patterns_c.size(), tokens.data(), tokens.size()));
            s.lazy = true;
            auto info = std::make_shared<seq_sampler::rebuild_info>();
            info->params  = p;
            info->params.history.clear();
            info->vocab   = vocab;
            info->n_vocab = n_vocab;
            info->n_ctx   = n_ctx;
            s.rebuild = std::move(info);
        } else {
            trigger_patterns(p.grammar_triggers, code::sampler_invalid, "grammarTriggers"); // checked, unused
            s.grammar.reset(llama_sampler_init_grammar(vocab, p.grammar.c_str(), p.grammar_root.c_str()));
        }
        std::string why = log_capture_end();
        if (!s.grammar) {
            const std::string reason = "does not parse" + (why.empty() ? std::string() : ": " + why);
            throw bw_error(code::sampler_invalid, "the grammar " + reason, "grammar", reason);
        }
    }
    // the generation prompt, fed to a non-lazy grammar that came with it (common_sampler_init's prefill): the
    // template already wrote it, and the grammar describes the whole answer from there
    if (s.grammar && !s.lazy && !p.grammar_prefill.empty()) {
        const std::vector<llama_token> toks = prefill_tokens(vocab, p.grammar_prefill);
        if (toks.size() > (size_t) n_ctx) {
            throw arg_error(code::sampler_invalid, "grammarPrefill", "is more tokens than the context holds");
        }
        try {
            for (size_t i = 0; i < toks.size(); i++) {
                if (!grammar_allows(s.grammar.get(), toks[i])) {
                    throw std::runtime_error("token " + std::to_string(toks[i]) + " (" + std::to_string(i) + " of the prefill) is not allowed");
                }
                llama_sampler_accept(s.grammar.get(), toks[i]);
            }
        } catch (const std::exception & e) {
            throw arg_error(code::sampler_invalid, "grammarPrefill", std::string("does not fit the grammar: ") + e.what());
        }
    }
    if (p.reasoning_budget.on) {
        const reasoning_budget_params & r = p.reasoning_budget;
        auto tok = [&](const std::string & text) { return common_tokenize(vocab, text, false, true); };
        const llama_tokens start = tok(r.start_tag);
        std::vector<llama_tokens> ends;
        for (const auto & e : r.end_tags) {
            ends.push_back(tok(e));
        }
        // forced when the budget is spent: the message, then the first end tag (as llama-server builds it)
        llama_tokens forced = ends.front();
        if (!r.message.empty()) {
            const llama_tokens m = tok(r.message);
            forced.insert(forced.begin(), m.begin(), m.end());
        }
        if (start.empty() || forced.empty()) {
            throw arg_error(code::sampler_invalid, "reasoningBudget", "has a tag that is no tokens");
        }
        // a prompt that opens the thinking (its generation prompt ends inside a start tag's block) starts the count at
        // once, told by the text: its tokens need not split the way the tag alone does ("<think>\n" may end in one
        // ">\n" token where the tag ends in ">"), and then the budget sampler's token match would never see the start
        const size_t open = r.prefill.rfind(r.start_tag);
        bool opened = open != std::string::npos;
        for (const auto & e : r.end_tags) {
            opened = opened && r.prefill.find(e, open + r.start_tag.size()) == std::string::npos;
        }
        s.rbudget.reset(common_reasoning_budget_init(vocab, { start }, ends, forced, p.reasoning_budget.tokens,
                                                     opened ? REASONING_BUDGET_COUNTING : REASONING_BUDGET_IDLE));
        if (!s.rbudget) {
            throw arg_error(code::sampler_invalid, "reasoningBudget", "could not be built");
        }
        if (!opened) {
            const std::vector<llama_token> pre = prefill_tokens(vocab, r.prefill);
            if (pre.size() > (size_t) n_ctx) {
                throw arg_error(code::sampler_invalid, "reasoningBudget.prefill", "is more tokens than the context holds");
            }
            for (llama_token t : pre) {
                llama_sampler_accept(s.rbudget.get(), t);
            }
        }
    }
    try {
        for (size_t i = 0; i < p.history.size(); i++) {
            std::string why;
            if (!accept_token(s, p.history[i], why)) {
                const std::string reason = "does not fit the grammar: token " + std::to_string(p.history[i]) + " (history[" +
                                           std::to_string(i) + "]) " + why;
                throw bw_error(code::sampler_invalid, "the history " + reason, "history", reason);
            }
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
    // a grammar masks and a reasoning budget forces tokens: both run on the CPU
    return p.backend && p.logprobs < 0 && p.grammar.empty() && !p.reasoning_budget.on &&
           effective_top_k(p, n_vocab) <= backend_top_k_max;
}

// ---- sampling --------------------------------------------------------------------------------

static const float * row_logits(llama_context * ctx, int32_t row) {
    const float * logits = llama_get_logits_ith(ctx, row);
    if (!logits) {
        throw bw_error(code::decode_failed, "no logits for batch row " + std::to_string(row));
    }
    return logits;
}

// Samples with a grammar and a reasoning budget the way llama.cpp's common sampler does: the budget first (when it
// forces a token, every other one is -inf), then the chain picks from the raw candidates, and the grammar checks only
// that one token; the whole vocabulary goes through the grammar (slow: every token's text is matched) only when the
// pick is refused. Returns token_none, accepting nothing, when no token is allowed.
static llama_token sample_constrained(seq_sampler & s, llama_context * ctx, int32_t row, int32_t n_vocab,
                                      sampling_scratch & scratch) {
    std::vector<llama_token_data> & cand = scratch.cand;
    const float * logits = row_logits(ctx, row);
    auto fill = [&]() {
        cand.resize(n_vocab);
        for (int32_t j = 0; j < n_vocab; j++) {
            cand[j] = { j, logits[j], 0.0f };
        }
        llama_token_data_array a{ cand.data(), (size_t) n_vocab, -1, false };
        if (s.rbudget) {
            llama_sampler_apply(s.rbudget.get(), &a);
        }
        return a;
    };
    // nothing is left (the budget forcing a token the chain banned, the grammar and a -inf bias): accepting whatever
    // was picked would throw and fail the whole batch, or abort the process for an end-of-generation token
    auto nothing = [](const llama_token_data_array & a) { return a.selected < 0 || a.data[a.selected].logit == -INFINITY; };
    const bool constrain = grammar_should_apply(s);
    llama_token_data_array all = fill();
    llama_sampler_apply(s.chain.get(), &all);
    llama_token t = nothing(all) ? token_none : all.data[all.selected].id;
    if (constrain && (t == token_none || !grammar_allows(s.grammar.get(), t))) {
        all = fill();
        llama_sampler_apply(s.grammar.get(), &all);
        llama_sampler_apply(s.chain.get(), &all);
        if (nothing(all)) {
            return token_none;
        }
        t = all.data[all.selected].id;
        // so may a chain whose numbers overflow: a frequency penalty of -3e38 on a token seen twice takes a logit
        // the grammar masked from -inf to -inf - -inf = NaN, which greedy picks. The grammar is asked again
        if (!grammar_allows(s.grammar.get(), t)) {
            return token_none;
        }
    }
    if (t == token_none) {
        return token_none;
    }
    // a lazy grammar throws at the token that completes its trigger when the rest of that token's text does not fit
    // it: the sampler is rebuilt as it was before that token, which is banned, and another is picked (a few times)
    std::vector<llama_token> banned;
    for (int attempt = 0;; attempt++) {
        try {
            if (!accept_token(s, t, scratch.error)) {
                // the budget ended the thinking with a tag the grammar refuses: the request's grammar and tags disagree
                scratch.error = "the reasoning budget's end tag does not fit the grammar";
                return token_failed;
            }
            return t;
        } catch (const bw_error &) {
            throw;
        } catch (const std::exception &) {
            if (!s.rebuild) {
                throw;
            }
            if (attempt >= 8) {
                // a trigger that nearly every token completes (a pattern that matches empty text) with a grammar that
                // refuses nearly all of them: the request's grammar leaves nothing to sample (the sequence ends; its
                // sampler is set anew before the id is used again)
                return token_none;
            }
        }
        const auto info = s.rebuild;
        std::vector<llama_token> history = std::move(s.accepted);
        sampler_params p = info->params;
        p.history = history;
        seq_sampler fresh;
        try {
            fresh = build_sampler(p, info->vocab, info->n_vocab, info->n_ctx);
        } catch (const std::exception & e) {
            // this sequence alone (a bw_error here would fail the whole batch): it was built from these before
            throw std::runtime_error(std::string("rebuilding the lazy grammar failed: ") + e.what());
        }
        fresh.backend = s.backend;
        s = std::move(fresh);
        banned.push_back(t);
        all = fill();
        for (llama_token b : banned) {
            cand[b].logit = -INFINITY;
        }
        if (grammar_should_apply(s)) {
            llama_sampler_apply(s.grammar.get(), &all);
        }
        llama_sampler_apply(s.chain.get(), &all);
        if (nothing(all)) {
            return token_none;
        }
        t = all.data[all.selected].id;
        if (grammar_should_apply(s) && !grammar_allows(s.grammar.get(), t)) {
            return token_none;
        }
    }
}

llama_token sample_row(seq_sampler & s, llama_context * ctx, int32_t row, int32_t n_vocab, sampling_scratch & scratch) {
    scratch.error.clear();
    try {
        if (s.grammar || s.rbudget) {
            return sample_constrained(s, ctx, row, n_vocab, scratch);
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
