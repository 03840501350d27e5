#include "limits.h"

namespace bw::limits {

Napi::Object to_js(Napi::Env env) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("maxLogprobs", max_logprobs);
    o.Set("maxLogitBias", max_logit_bias);
    o.Set("maxGrammarBytes", max_grammar_bytes);
    o.Set("maxGrammarNesting", max_grammar_nesting);
    o.Set("maxSchemaBytes", max_schema_bytes);
    o.Set("maxSchemaDepth", max_schema_depth);
    o.Set("maxSchemaOptionalPropertiesSquared", max_schema_optional_properties_squared);
    o.Set("maxChatJsonBytes", max_chat_json_bytes);
    o.Set("maxChatJsonDepth", max_chat_json_depth);
    o.Set("maxChatTemplateBytes", max_chat_template_bytes);
    o.Set("maxGrammarTriggers", max_grammar_triggers);
    o.Set("maxGrammarTriggerBytes", max_grammar_trigger_bytes);
    o.Set("maxSamplerPrefillBytes", max_sampler_prefill_bytes);
    o.Set("maxReasoningTagBytes", max_reasoning_tag_bytes);
    o.Set("maxReasoningEndTags", max_reasoning_end_tags);
    o.Set("maxThreads", max_threads);
    o.Set("maxContextSize", max_context_size);
    o.Set("maxKvBlockSize", max_kv_block_size);
    o.Freeze();
    return o;
}

} // namespace bw::limits
