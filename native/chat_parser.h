// Parsing a model's output into a chat message (content, reasoning, tool calls) with llama.cpp's common chat layer,
// incrementally: each update re-parses the text so far and reports what changed since the last one, the way
// llama-server streams deltas (update_chat_msg with filter_tool_calls).
//
// JS: binding.ChatParser, made by ChatParser.create(spec, options) from the `parser` a ChatTemplates.apply gave.
#pragma once

#include "common.h"

#include <chat.h> // llama.cpp common/chat.h (this folder's chat.h is the ChatTemplates class)

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace bw {

// The parser spec apply() hands to JS: { format, parser, generationPrompt, tag }. llama.cpp's PEG parser loads its
// definition without checking what its parsers point at (a forged one reads out of bounds or recurses forever), so
// the spec is sealed: `tag` is a keyed hash (SipHash-2-4, a key drawn once per process) of the other three, and a
// spec whose tag does not match is refused. A spec is good in every environment of the process that made it.
struct chat_parser_spec {
    int32_t     format = 0;
    std::string parser;
    std::string generation_prompt;
};

Napi::Object seal_parser_spec(Napi::Env env, const chat_parser_spec & spec);
// Throws ERR_INVALID_ARGUMENT (field `field`) for anything but a spec seal_parser_spec made in this process.
chat_parser_spec open_parser_spec(const Napi::Value & v, const std::string & field);

// "none" | "auto" | "deepseek" (ERR_INVALID_ARGUMENT naming `field` otherwise).
common_reasoning_format parse_reasoning_format(const std::string & s, const std::string & field);

class chat_parser_wrap : public Napi::ObjectWrap<chat_parser_wrap> {
public:
    static Napi::Function define(Napi::Env env);

    explicit chat_parser_wrap(const Napi::CallbackInfo & info);

private:
    static Napi::Value create(const Napi::CallbackInfo & info);

    Napi::Value update(const Napi::CallbackInfo & info);
    Napi::Value get_message(const Napi::CallbackInfo & info);

    // Parses the text so far; on a final parse the format cannot read, the whole text as content.
    common_chat_msg parse(bool partial) const;

    common_chat_parser_params params_;
    std::string              text_;             // the generated text so far
    common_chat_msg          msg_;              // the last message parsed
    std::vector<std::string> tool_call_ids_;    // ids given to the calls, by index: stable across updates
    std::set<size_t>         sent_names_;       // calls whose id and name were reported
    bool                     done_ = false;     // a final update was made
};

} // namespace bw
