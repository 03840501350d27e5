#pragma once

#include "common.h"
#include "model.h"
#include "sampling.h"

#include "llama.h"

#include <memory>
#include <mutex>
#include <vector>

namespace bw {

// An inference context over a model: KV memory for the sequence ids 0..seqIds-1, decode with sampling.
// JS: binding.Context, made by Context.create(model, options).
class context_wrap : public Napi::ObjectWrap<context_wrap> {
public:
    static Napi::Function define(Napi::Env env);

    explicit context_wrap(const Napi::CallbackInfo & info);
    ~context_wrap() override;

    // Its environment is torn down: free the context now, or when the work still on it ends.
    void teardown();

private:
    static Napi::Value create(const Napi::CallbackInfo & info);

    Napi::Value info(const Napi::CallbackInfo & info);
    Napi::Value decode(const Napi::CallbackInfo & info);
    Napi::Value set_sampler(const Napi::CallbackInfo & info);
    Napi::Value seq_remove(const Napi::CallbackInfo & info);
    Napi::Value seq_copy(const Napi::CallbackInfo & info);
    Napi::Value set_block_table(const Napi::CallbackInfo & info);
    Napi::Value claim_blocks(const Napi::CallbackInfo & info);
    Napi::Value seq_keep(const Napi::CallbackInfo & info);
    Napi::Value seq_pos_min(const Napi::CallbackInfo & info);
    Napi::Value seq_pos_max(const Napi::CallbackInfo & info);
    Napi::Value perf(const Napi::CallbackInfo & info);
    Napi::Value clear(const Napi::CallbackInfo & info);
    Napi::Value save_sequence(const Napi::CallbackInfo & info);
    Napi::Value restore_sequence(const Napi::CallbackInfo & info);
    Napi::Value dispose(const Napi::CallbackInfo & info);
    Napi::Value get_disposed(const Napi::CallbackInfo & info);

    llama_context * get() const;                // throws ERR_DISPOSED
    void            check_idle() const;         // throws ERR_CONTEXT_BUSY while async work is in flight
    void            check_seq(int32_t seq, const char * what, bool allow_any = false) const;
    void            begin_work() { n_pending_++; }
    void            end_work();
    void            free_context();
    void            clear_sampler(int32_t seq);   // detaches a chain in the graph, then frees it

    addon_env     * env_    = nullptr;      // registered there while alive; null after teardown
    llama_context * ctx_    = nullptr;
    model_wrap    * model_  = nullptr;      // valid while model_ref_ holds the JS object
    Napi::ObjectReference model_ref_;
    std::shared_ptr<model_handle> weights_; // keeps the llama_model alive as long as ctx_
    int32_t         n_seq_max_ = 0;
    int32_t         n_batch_   = 0;
    bool            kv_unified_ = false;
    int             flash_attn_ = -1;
    int32_t         kv_block_size_ = 0;  // > 0: paged KV cache, tokens placed through setBlockTable
    bool            disposed_  = false;
    int             n_pending_ = 0;
    std::mutex      exec_mutex_;
    llama_batch     batch_{};
    std::vector<seq_sampler> samplers_;  // one per sequence id; freed after ctx_ (which may hold their chains)
    struct ggml_threadpool * threadpool_       = nullptr; // CPU pools attached to ctx_, freed after it
    struct ggml_threadpool * threadpool_batch_ = nullptr;
};

} // namespace bw
