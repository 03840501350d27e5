// llama.cpp / ggml logs: routed to a JS callback (setLogger) through a thread-safe function, and
// error-level lines captured per thread so that a failed load or decode can say why in its JS error.
#include "common.h"
#include "log.h"

#include "llama.h"

#include <mutex>
#include <string>

namespace bw {

namespace {

struct log_message {
    int level;
    std::string text;
};

std::mutex                 g_mutex;
Napi::ThreadSafeFunction   g_tsfn;
bool                       g_has_tsfn  = false;
int                        g_min_level = GGML_LOG_LEVEL_WARN;

thread_local bool        t_capture = false;
thread_local std::string t_captured;
thread_local int         t_last_level = GGML_LOG_LEVEL_INFO;

void call_js(Napi::Env env, Napi::Function fn, log_message * msg) {
    if (env != nullptr && fn != nullptr) {
        try {
            fn.Call({ Napi::Number::New(env, msg->level), Napi::String::New(env, msg->text) });
        } catch (...) {
            // a throwing logger must not take the process down
        }
    }
    delete msg;
}

void on_log(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    int lvl = level == GGML_LOG_LEVEL_CONT ? t_last_level : (int) level;
    t_last_level = lvl;
    if (t_capture && lvl >= GGML_LOG_LEVEL_ERROR && text != nullptr) {
        if (t_captured.size() < 4096) {
            t_captured += text;
        }
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_has_tsfn || lvl < g_min_level || text == nullptr) {
        return;
    }
    auto * msg = new log_message{ lvl, text };
    if (g_tsfn.NonBlockingCall(msg, call_js) != napi_ok) {
        delete msg;
    }
}

void release_locked() {
    if (g_has_tsfn) {
        g_tsfn.Release();
        g_has_tsfn = false;
    }
}

} // namespace

void log_init(Napi::Env env) {
    llama_log_set(on_log, nullptr);
    env.AddCleanupHook([]() {
        std::lock_guard<std::mutex> lock(g_mutex);
        release_locked();
    });
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

// setLogger(fn | null, minLevel = 3): 1 debug, 2 info, 3 warn, 4 error.
Napi::Value set_logger(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        int min_level = GGML_LOG_LEVEL_WARN;
        if (info.Length() > 1 && !info[1].IsUndefined()) {
            min_level = arg_int(info, 1, "minLevel");
            if (min_level < GGML_LOG_LEVEL_DEBUG || min_level > GGML_LOG_LEVEL_ERROR) {
                throw bw_error(code::invalid_argument, "minLevel must be 1 (debug) to 4 (error)");
            }
        }
        if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined() && !info[0].IsFunction()) {
            throw bw_error(code::invalid_argument, "logger must be a function or null");
        }
        std::lock_guard<std::mutex> lock(g_mutex);
        release_locked();
        g_min_level = min_level;
        if (info.Length() > 0 && info[0].IsFunction()) {
            g_tsfn = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "batchwise.log", 0, 1);
            g_tsfn.Unref(env); // logging never keeps the process alive
            g_has_tsfn = true;
        }
        return env.Undefined();
    });
}

} // namespace bw
