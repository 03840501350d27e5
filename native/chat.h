// A model's chat template, through llama.cpp's common chat layer (common/chat.h): OpenAI-style messages and tools
// rendered into a prompt, with the grammar (lazy, with its triggers), the stops and the output parser of the
// template's format. JS: binding.ChatTemplates, made by ChatTemplates.create(model, { template }).
#pragma once

#include "common.h"
#include "env.h"
#include "model.h"

#include <chat.h> // llama.cpp common/chat.h

#include <memory>
#include <string>

namespace bw {

class chat_templates_wrap : public Napi::ObjectWrap<chat_templates_wrap> {
public:
    static Napi::Function define(Napi::Env env);

    explicit chat_templates_wrap(const Napi::CallbackInfo & info);
    ~chat_templates_wrap() override;

    // Its environment is torn down: let go of the templates and the model's weights.
    void teardown();

private:
    static Napi::Value create(const Napi::CallbackInfo & info);

    Napi::Value apply(const Napi::CallbackInfo & info);
    Napi::Value get_source(const Napi::CallbackInfo & info);
    Napi::Value get_caps(const Napi::CallbackInfo & info);
    Napi::Value dispose(const Napi::CallbackInfo & info);
    Napi::Value get_disposed(const Napi::CallbackInfo & info);

    const common_chat_templates * get() const; // throws ERR_DISPOSED

    addon_env * env_ = nullptr;             // registered there while alive; null after teardown
    std::shared_ptr<model_handle> weights_; // the vocabulary the triggers and tags are tokenized with
    common_chat_templates_ptr tmpls_;
    std::string source_;
    bool jinja_    = true;  // false: a built-in name or a template without Jinja syntax, applied by llama.cpp's C++
    bool add_bos_  = false; // the tokenizer adds BOS / EOS: the template's own are cut from the prompt
    bool add_eos_  = false;
    std::string bos_text_;
    std::string eos_text_;
    Napi::ObjectReference caps_;
};

} // namespace bw
