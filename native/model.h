#pragma once

#include "common.h"
#include "env.h"

#include "llama.h"

#include <memory>
#include <string>

namespace bw {

// Owns the llama_model. Shared by the Model object, its contexts and in-flight work, so the weights are
// freed only when the last of them lets go, whatever order the garbage collector finalizes them in.
struct model_handle {
    llama_model * model = nullptr;
    bool vocab_only = false;
    int n_contexts = 0; // touched on the JS thread only
    model_handle(llama_model * m, bool vocab_only) : model(m), vocab_only(vocab_only) {}
    ~model_handle() { llama_model_free(model); }
};

// A loaded model (weights, vocabulary, chat template). JS: binding.Model, made by Model.load().
class model_wrap : public Napi::ObjectWrap<model_wrap> {
public:
    static Napi::Function define(Napi::Env env);
    static model_wrap * unwrap(const Napi::Value & v); // throws ERR_INVALID_ARGUMENT / ERR_DISPOSED

    explicit model_wrap(const Napi::CallbackInfo & info);
    ~model_wrap() override;

    const std::shared_ptr<model_handle> & handle() const; // throws ERR_DISPOSED
    llama_model       * get() const { return handle()->model; }
    const llama_vocab * vocab() const { return vocab_; }
    int32_t             n_vocab() const { return n_vocab_; }

    // Throws ERR_TOKEN_RANGE for a token outside the vocabulary: the message names it `what`, the error's field is
    // `field` (default: `what`).
    void check_token(int32_t token, const char * what, const char * field = nullptr) const;

    // Its environment is torn down: let go of the weights (freed once its contexts and work let go too).
    void teardown();

private:
    static Napi::Value load(const Napi::CallbackInfo & info);

    Napi::Value metadata(const Napi::CallbackInfo & info);
    Napi::Value tokenize(const Napi::CallbackInfo & info);
    Napi::Value detokenize(const Napi::CallbackInfo & info);
    Napi::Value token_to_piece(const Napi::CallbackInfo & info);
    Napi::Value is_eog(const Napi::CallbackInfo & info);
    Napi::Value apply_chat_template(const Napi::CallbackInfo & info);
    Napi::Value check_grammar(const Napi::CallbackInfo & info);
    Napi::Value dispose(const Napi::CallbackInfo & info);
    Napi::Value get_disposed(const Napi::CallbackInfo & info);

    addon_env * env_ = nullptr;            // registered there while alive; null after teardown
    std::shared_ptr<model_handle> handle_; // null once disposed
    const llama_vocab * vocab_   = nullptr;
    int32_t             n_vocab_ = 0;
    Napi::ObjectReference meta_;
};

} // namespace bw
