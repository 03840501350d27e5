// llama.cpp / ggml logs: routed to JS loggers (setLogger) through thread-safe functions, and error-level
// lines captured per thread so that a failed load or decode can say why in its JS error.
//
// llama.cpp has one log callback for the whole process, while each environment (the main thread, each
// worker_thread) sets its own logger. So the callback is set once, and one process-wide sink holds the
// loggers of the live environments under a mutex. A line goes to the logger of the environment whose work
// logged it: a JS thread is bound to its environment, a libuv pool thread to the environment of the work it
// runs (promise_worker). A line from a thread of no environment (ggml's compute threads, a backend's own
// threads) goes to every logger.
//
// A logger's thread-safe function is owned by its environment: Node closes it when the environment is torn
// down, and its finalizer takes it out of the sink under the mutex before it is deleted, so a pool thread
// never calls into a closed one.
#include "common.h"
#include "env.h"
#include "log.h"

#include "llama.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace bw {

namespace {

struct log_message {
    int level;
    std::string text;
};

struct log_sink;
void call_js(Napi::Env env, Napi::Function fn, log_sink * sink, log_message * msg);
using log_tsfn = Napi::TypedThreadSafeFunction<log_sink, log_message, call_js>;

// One environment's logger.
struct log_sink {
    uint64_t env_id;
    int      min_level;
    log_tsfn tsfn;
};

struct log_hub {
    std::mutex               mutex;
    std::vector<log_sink *>  sinks; // the loggers of live environments
};

// Never destroyed: a pool thread may still log while the process exits.
log_hub & hub() {
    static log_hub * h = new log_hub();
    return *h;
}

void hub_remove(log_sink * s) {
    log_hub & h = hub();
    std::lock_guard<std::mutex> lock(h.mutex);
    h.sinks.erase(std::remove(h.sinks.begin(), h.sinks.end(), s), h.sinks.end());
}

thread_local uint64_t    t_env = 0; // the environment this thread's lines belong to (0: none)
thread_local bool        t_capture = false;
thread_local std::string t_captured;
thread_local int         t_last_level = GGML_LOG_LEVEL_INFO;

// On the logger's JS thread; env is null when the environment is gone and the queue is only emptied.
void call_js(Napi::Env env, Napi::Function fn, log_sink * /*sink*/, log_message * msg) {
    std::unique_ptr<log_message> m(msg);
    if (env != nullptr && fn != nullptr) {
        try {
            fn.Call({ Napi::Number::New(env, m->level), Napi::String::New(env, m->text) });
        } catch (...) {
            // a throwing logger must not take the process down
        }
    }
}

// The thread-safe function is gone (released by setLogger, or closed with its environment).
void on_sink_finalized(Napi::Env env, void * /*data*/, log_sink * s) {
    hub_remove(s);
    addon_env * e = env.GetInstanceData<addon_env>();
    if (e != nullptr && e->logger == s) {
        e->logger = nullptr;
    }
    delete s;
}

void on_log(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    int lvl = level == GGML_LOG_LEVEL_CONT ? t_last_level : (int) level;
    t_last_level = lvl;
    if (text == nullptr) {
        return;
    }
    if (t_capture && lvl >= GGML_LOG_LEVEL_ERROR) {
        if (t_captured.size() < 4096) {
            t_captured += text;
        }
    }
    log_hub & h = hub();
    std::lock_guard<std::mutex> lock(h.mutex);
    for (log_sink * s : h.sinks) {
        if ((t_env != 0 && s->env_id != t_env) || lvl < s->min_level) {
            continue;
        }
        auto * msg = new log_message{ lvl, text };
        if (s->tsfn.NonBlockingCall(msg) != napi_ok) { // closing: its environment is going away
            delete msg;
        }
    }
}

} // namespace

void log_install() {
    llama_log_set(on_log, nullptr);
}

void log_bind_thread(uint64_t env_id) {
    t_env = env_id;
}

log_origin::log_origin(uint64_t env_id) : prev_(t_env) {
    t_env = env_id;
}

log_origin::~log_origin() {
    t_env = prev_;
}

void log_env_teardown(addon_env & e) {
    if (e.logger != nullptr) {
        hub_remove(static_cast<log_sink *>(e.logger)); // Node closes the function itself; its finalizer deletes it
    }
}

void log_capture_begin() {
    t_capture = true;
    t_captured.clear();
}

std::string log_capture_end() {
    t_capture = false;
    std::string out;
    out.swap(t_captured);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    return out;
}

// setLogger(fn | null, minLevel = 3): 1 debug, 2 info, 3 warn, 4 error. Per environment: a worker's logger
// gets the lines of that worker's work.
Napi::Value set_logger(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        int min_level = GGML_LOG_LEVEL_WARN;
        if (info.Length() > 1 && !info[1].IsUndefined()) {
            min_level = arg_int(info, 1, "minLevel");
            if (min_level < GGML_LOG_LEVEL_DEBUG || min_level > GGML_LOG_LEVEL_ERROR) {
                throw arg_error(code::invalid_argument, "minLevel", "must be 1 (debug) to 4 (error)");
            }
        }
        if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined() && !info[0].IsFunction()) {
            throw arg_error(code::invalid_argument, "logger", "must be a function or null");
        }
        addon_env & e = env_of(env);
        log_sink * fresh = nullptr;
        if (info.Length() > 0 && info[0].IsFunction()) {
            auto s = std::make_unique<log_sink>(log_sink{ e.shared->id, min_level, log_tsfn() });
            s->tsfn = log_tsfn::New(env, info[0].As<Napi::Function>(), "batchwise.log", 0, 1, s.get(), on_sink_finalized);
            s->tsfn.Unref(env); // logging never keeps the event loop alive
            fresh = s.release(); // owned by its thread-safe function from now on
        }
        auto * old = static_cast<log_sink *>(e.logger);
        {
            log_hub & h = hub();
            std::lock_guard<std::mutex> lock(h.mutex);
            if (old != nullptr) {
                h.sinks.erase(std::remove(h.sinks.begin(), h.sinks.end(), old), h.sinks.end());
            }
            if (fresh != nullptr) {
                h.sinks.push_back(fresh);
            }
        }
        e.logger = fresh;
        if (old != nullptr) {
            old->tsfn.Release(); // out of the sink already: no thread calls it; its finalizer deletes it
        }
        return env.Undefined();
    });
}

} // namespace bw
