// batchwise native addon: module entry. Exports the Model and Context classes and the free functions.
// Runs once per environment that loads the addon (the main thread, each worker_thread): see env.h.
#include "chat.h"
#include "chat_parser.h"
#include "common.h"
#include "context.h"
#include "devices.h"
#include "env.h"
#include "grammar.h"
#include "limits.h"
#include "log.h"
#include "memory.h"
#include "model.h"
#include "random_model.h"

static Napi::Object init(Napi::Env env, Napi::Object exports) {
    bw::env_init(env);
    exports.Set("Model", bw::model_wrap::define(env));
    exports.Set("Context", bw::context_wrap::define(env));
    exports.Set("ChatTemplates", bw::chat_templates_wrap::define(env));
    exports.Set("ChatParser", bw::chat_parser_wrap::define(env));
    exports.Set("getDevices", Napi::Function::New(env, bw::get_devices, "getDevices"));
    exports.Set("systemInfo", Napi::Function::New(env, bw::system_info, "systemInfo"));
    exports.Set("heapStats", Napi::Function::New(env, bw::heap_stats, "heapStats"));
    exports.Set("trimHeap", Napi::Function::New(env, bw::trim_heap, "trimHeap"));
    exports.Set("setLogger", Napi::Function::New(env, bw::set_logger, "setLogger"));
    exports.Set("jsonSchemaToGrammar", Napi::Function::New(env, bw::json_schema_to_grammar_js, "jsonSchemaToGrammar"));
    exports.Set("createRandomModel", Napi::Function::New(env, bw::create_random_model, "createRandomModel"));
    exports.Set("limits", bw::limits::to_js(env));
    return exports;
}

NODE_API_MODULE(batchwise, init)
