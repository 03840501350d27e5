// Sampling for one sequence: setSampler's parameters read from JS into a plain struct, the llama.cpp
// sampler chain built from them, constrained (grammar) sampling, and logprobs.
//
// The llama_sampler objects are owned by llama_sampler_ptr (llama-cpp.h): nothing here or in the context
// frees one by hand. A chain attached to the context with llama_set_sampler must be detached before its
// seq_sampler lets go of it (context_wrap::clear_sampler does, and free_context frees the context first).
#pragma once

#include "common.h"

#include "llama-cpp.h"
#include "llama.h"

#include <cstdint>
#include <string>
#include <memory>
#include <vector>

namespace bw {

class model_wrap;

// A lazy grammar's trigger (ChatTemplates.apply's grammarTriggers), as common_grammar_trigger.
struct grammar_trigger {
    enum kind_t { token, word, pattern, pattern_full } kind = word;
    std::string value;
    llama_token tok = -1; // kind token
};

// A thinking budget (common/reasoning-budget.h): after `tokens` tokens between the start tag and an end tag, the
// message and the first end tag are forced.
struct reasoning_budget_params {
    bool        on = false;
    int32_t     tokens = 0;
    std::string start_tag;
    std::vector<std::string> end_tags;
    std::string message;
    std::string prefill; // the generation prompt: fed to the budget before the history (a prompt that opens the thinking)
};

// setSampler's params, read from JS and checked: nothing of llama.cpp is built yet.
struct sampler_params {
    double  temperature       = 1.0; // <= 0: greedy
    int32_t top_k             = 0;   // 0: off
    double  top_p             = 1.0; // 1: off
    double  min_p             = 0.0; // 0: off
    double  repeat_penalty    = 1.0;
    double  presence_penalty  = 0.0;
    double  frequency_penalty = 0.0;
    int32_t penalty_last_n    = 64;  // -1: the whole context
    int64_t seed              = -1;  // -1: llama.cpp's default seed
    int32_t logprobs          = -1;  // -1: none; 0: the sampled token's; k > 0: also the top k
    bool    backend           = true;
    std::vector<llama_logit_bias> logit_bias;
    std::string grammar;             // GBNF text; empty: none
    std::string grammar_root = "root";
    bool        grammar_lazy = false; // the grammar waits for one of the triggers
    std::vector<grammar_trigger> grammar_triggers;
    std::string grammar_prefill;     // the generation prompt, fed to a non-lazy grammar before the history
    reasoning_budget_params reasoning_budget;
    std::vector<llama_token> history; // tokens already generated, fed to the chain as if it had sampled them
};

// Reads setSampler's params object. Throws bw_error (ERR_INVALID_ARGUMENT, ERR_SAMPLER_INVALID, ERR_TOKEN_RANGE).
sampler_params parse_sampler_params(const Napi::Object & o, const model_wrap & model);

// Reads grammarTriggers (an array of { type, value, token? }), tokens checked against the model's vocabulary.
// Throws `err_code` naming `field`.
std::vector<grammar_trigger> parse_grammar_triggers(const Napi::Value & v, const model_wrap & model, const char * err_code,
                                                    const std::string & field);
// The regexes llama.cpp's lazy grammar matches for the triggers (words escaped, full patterns anchored), each compiled
// here first: std::regex throws on a bad one, and llama.cpp would let that through with its grammar leaked.
// Throws `err_code` naming `field`[i].
std::vector<std::string> trigger_patterns(const std::vector<grammar_trigger> & triggers, const char * err_code,
                                          const std::string & field);

// One sequence's sampler. No chain means plain greedy (argmax over the logits).
struct seq_sampler {
    llama_sampler_ptr chain;
    llama_sampler_ptr grammar;   // kept out of the chain: checked on the chain's pick first (see sample_row)
    llama_sampler_ptr rbudget;   // the reasoning budget: applied first, it forces tokens once the budget is spent
    bool    lazy     = false;    // the grammar is lazy (it then stands aside while the budget counts thinking)
    bool    backend  = false;    // attached to the context with llama_set_sampler (sampled inside the graph)
    int32_t logprobs = -1;       // as in sampler_params

    // A lazy grammar allows every token until a trigger appears, and throws when the token that completes a trigger
    // carries text the grammar refuses (a state it cannot be asked about first). To pick another token then, the
    // sampler is rebuilt as it was: what it was built from, and every token it accepted since (lazy grammars only).
    struct rebuild_info {
        sampler_params      params; // history left empty: `accepted` holds it
        const llama_vocab * vocab   = nullptr;
        int32_t             n_vocab = 0;
        int32_t             n_ctx   = 0;
    };
    std::shared_ptr<const rebuild_info> rebuild;
    std::vector<llama_token>            accepted;
};

// Builds the chain (and the grammar) for `p` and feeds it the history. n_ctx bounds the penalty window and the
// history. Throws ERR_SAMPLER_INVALID when the grammar does not parse or the history does not fit it.
seq_sampler build_sampler(const sampler_params & p, const llama_vocab * vocab, int32_t n_vocab, int32_t n_ctx);

// Whether a sampler built from `p` may run inside the compute graph (llama_set_sampler).
bool backend_allowed(const sampler_params & p, int32_t n_vocab);

// Reused buffers of one decode's sampling loop.
struct sampling_scratch {
    std::vector<llama_token_data> cand;
    std::vector<int32_t>          order;
    std::string                   error; // why the last sample_row gave token_failed
};

// What a row samples when it has no token (decode reports them as they are; the scheduler ends that sequence).
constexpr llama_token token_none   = -1; // the grammar and the chain allow no token (the request's doing)
constexpr llama_token token_failed = -2; // llama.cpp failed to sample (a defect below us)

// The token sampled for output row `row` of the last decode: token_none where the grammar and the chain allow
// no token, token_failed (with scratch.error) where llama.cpp threw while sampling or accepting; either ends only
// that row. Throws ERR_DECODE_FAILED when llama.cpp has no logits for the row.
llama_token sample_row(seq_sampler & s, llama_context * ctx, int32_t row, int32_t n_vocab, sampling_scratch & scratch);

// log-softmax of one row of logits: the logprob of `chosen`, and the top k (ids and logprobs, k entries each).
void row_logprobs(const float * logits, int32_t n_vocab, llama_token chosen, int32_t k,
                  float & lp, llama_token * top_ids, float * top_lps, sampling_scratch & scratch);

} // namespace bw
