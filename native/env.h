// Per-environment state of the addon. Node loads the addon once per environment: the main thread and each
// worker_thread has its own isolate, objects and event loop, and gets its own addon_env (node-addon-api
// instance data). Nothing the addon creates is shared between environments: a thread's models and contexts
// are its own. What llama.cpp keeps per process (its log callback, the backend init) is set up once, in
// env_init and log.cpp.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <unordered_set>

namespace bw {

class model_wrap;
class context_wrap;
class chat_templates_wrap;

// The part of an environment's state that work on the libuv pool may read. Each piece of async work holds
// it, so it outlives the environment for as long as the work does.
struct env_shared {
    const uint64_t id; // process-unique and never reused: names the environment to the log sink
    // set while the environment is torn down (a terminated worker, process exit): queued work is skipped
    std::atomic<bool> stopping{false};

    explicit env_shared(uint64_t id) : id(id) {}
};

// Everything else: touched on the environment's own JS thread only.
struct addon_env {
    std::shared_ptr<env_shared> shared;
    Napi::FunctionReference model_ctor;   // this environment's Model and Context classes
    Napi::FunctionReference context_ctor;
    Napi::FunctionReference chat_templates_ctor;
    Napi::FunctionReference chat_parser_ctor;
    std::unordered_set<model_wrap *>   models;   // live objects, released by the teardown hook
    std::unordered_set<context_wrap *> contexts;
    std::unordered_set<chat_templates_wrap *> chat_templates; // hold their model's weights, as contexts do
    void * logger = nullptr; // log.cpp's sink for this environment's setLogger, if any
    bool torn_down = false;
};

addon_env & env_of(Napi::Env env);

// Called by the module init of every environment: one-time process setup (llama_backend_init, the log
// sink), this environment's instance data, and its teardown hook.
void env_init(Napi::Env env);

} // namespace bw
