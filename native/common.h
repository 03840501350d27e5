// Shared helpers for the batchwise addon: typed errors, promise workers, argument parsing.
//
// Errors: every failure that reaches JS is a JS Error with a stable `code` property (ERR_...).
// C++ code below the N-API boundary throws bw_error; the workers and the method wrappers turn it
// into a rejected promise or a thrown JS error. No exception crosses into N-API uncaught.
#pragma once

#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace bw {

// Stable error codes (mirrored in lib/binding/errors.ts).
namespace code {
constexpr const char * invalid_argument   = "ERR_INVALID_ARGUMENT";
constexpr const char * model_not_found    = "ERR_MODEL_NOT_FOUND";
constexpr const char * model_not_gguf     = "ERR_MODEL_NOT_GGUF";
constexpr const char * model_truncated    = "ERR_MODEL_TRUNCATED";
constexpr const char * model_unsupported  = "ERR_MODEL_UNSUPPORTED";
constexpr const char * model_load_failed  = "ERR_MODEL_LOAD_FAILED";
constexpr const char * model_in_use       = "ERR_MODEL_IN_USE";
constexpr const char * context_failed     = "ERR_CONTEXT_CREATE_FAILED";
constexpr const char * paged_kv_unsupported = "ERR_PAGED_KV_UNSUPPORTED"; // llama.cpp cannot page this model's KV here
constexpr const char * context_busy       = "ERR_CONTEXT_BUSY";
constexpr const char * disposed           = "ERR_DISPOSED";
constexpr const char * seq_id_range       = "ERR_SEQ_ID_RANGE";
constexpr const char * token_range        = "ERR_TOKEN_RANGE";
constexpr const char * batch_too_large    = "ERR_BATCH_TOO_LARGE";
constexpr const char * batch_invalid      = "ERR_BATCH_INVALID";
constexpr const char * kv_full            = "ERR_KV_FULL";
constexpr const char * decode_failed      = "ERR_DECODE_FAILED";
constexpr const char * state_failed       = "ERR_STATE_FAILED";
constexpr const char * sampler_invalid    = "ERR_SAMPLER_INVALID";
constexpr const char * template_failed    = "ERR_CHAT_TEMPLATE";
constexpr const char * io_failed          = "ERR_IO";
} // namespace code

// When an argument is at fault, `field` names it as JS does ("topK", "logitBias", "batch.seqIds[3]") and
// `reason` says what is wrong with it, without the name; the JS error carries both as properties (the
// message stays a sentence of its own). Both are empty for other failures.
struct bw_error : std::runtime_error {
    std::string code;
    std::string field;
    std::string reason;
    bw_error(const char * code, const std::string & msg) : std::runtime_error(msg), code(code) {}
    bw_error(const char * code, const std::string & msg, std::string field, std::string reason)
        : std::runtime_error(msg), code(code), field(std::move(field)), reason(std::move(reason)) {}
};

// An argument's error whose message is "<field> <reason>" ("topK must be >= 0").
bw_error arg_error(const char * code, const std::string & field, const std::string & reason);
// An option's error whose message is "option '<field>' <reason>".
bw_error option_error(const char * code, const std::string & field, const std::string & reason);

Napi::Error make_error(Napi::Env env, const std::string & code, const std::string & msg,
                       const std::string & field = std::string(), const std::string & reason = std::string());

// Runs `fn` and converts bw_error / std::exception into a thrown JS error (for synchronous methods).
template <typename F>
auto guard(Napi::Env env, F && fn) -> decltype(fn()) {
    try {
        return fn();
    } catch (const bw_error & e) {
        throw make_error(env, e.code, e.what(), e.field, e.reason);
    } catch (const Napi::Error &) {
        throw;
    } catch (const std::exception & e) {
        throw make_error(env, "ERR_INTERNAL", e.what());
    }
}

struct env_shared;

// A worker that runs `execute` on the libuv thread pool and settles a promise.
// `execute` may throw bw_error; `resolve` builds the JS value on the main thread.
// `done` (optional) runs on the main thread after either outcome, after `resolve` (release what is left).
//
// Environment teardown (a worker_thread that ends or is terminated, the main thread at exit): Node runs
// every queued and running piece of work to its end and then calls its completion, with JS no longer
// allowed. The completion then settles nothing and only runs `done`, and work of that environment that has
// not started yet is skipped (`execute` does not run).
class promise_worker : public Napi::AsyncWorker {
public:
    using exec_fn    = std::function<void()>;
    using resolve_fn = std::function<Napi::Value(Napi::Env)>;
    using done_fn    = std::function<void()>;

    static Napi::Promise run(Napi::Env env, const char * name, exec_fn execute, resolve_fn resolve,
                             done_fn done = nullptr, Napi::Object keep_alive = Napi::Object());

    void Execute() override;
    void OnWorkComplete(Napi::Env env, napi_status status) override;

private:
    promise_worker(Napi::Env env, const char * name, exec_fn execute, resolve_fn resolve, done_fn done);

    void settle(Napi::Env env);
    void run_done() noexcept;

    std::shared_ptr<env_shared> shared; // read on the pool thread: outlives the environment if need be
    Napi::Promise::Deferred deferred;
    exec_fn    execute;
    resolve_fn resolve;
    done_fn    done;
    bool        failed = false;
    std::string err_code;
    std::string err_msg;
    std::string err_field;
    std::string err_reason;
    Napi::ObjectReference keep;
};

// Calls fill(data, capacity) -> n, the llama.cpp convention where a negative n asks for a buffer of -n,
// and leaves `buf` holding exactly the n items written.
template <typename Buf, typename F>
void fill_growing(Buf & buf, size_t first_guess, F && fill) {
    buf.resize(first_guess);
    int32_t n = fill(buf.data(), (int32_t) buf.size());
    if (n < 0 && n != INT32_MIN) {
        buf.resize((size_t) -n);
        n = fill(buf.data(), (int32_t) buf.size());
    }
    if (n == INT32_MIN) {
        throw bw_error(code::invalid_argument, "the result is too large");
    }
    buf.resize((size_t) std::max(n, 0));
}

// llama.cpp takes sampler numbers as 32-bit floats: a finite double beyond their range would become inf there
// (and the logits NaN). fits_float says whether `d` rounds to a finite float (as JS's Math.fround does);
// to_float converts one that does.
bool  fits_float(double d);
float to_float(double d);

// The shortest text that reads back as `d` ("1e+300", "0.1"), for messages.
std::string format_num(double d);

// Argument helpers: they throw ERR_INVALID_ARGUMENT naming the field (as `field`, and in the message).
int32_t     get_int  (const Napi::Object & o, const char * key, int32_t def);
int64_t     get_int64(const Napi::Object & o, const char * key, int64_t def);
double      get_num  (const Napi::Object & o, const char * key, double def);
double      get_float(const Napi::Object & o, const char * key, double def); // a finite number that fits_float
bool        get_bool (const Napi::Object & o, const char * key, bool def);
std::string get_str  (const Napi::Object & o, const char * key, const std::string & def);
bool        has      (const Napi::Object & o, const char * key);
// Positional arguments: `what` is how the message names it, `field` its JS name (default: `what`).
Napi::Object opt_object(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field = "options");
std::string  arg_string(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field = nullptr);
int32_t      arg_int(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field = nullptr);

// Last error-level messages logged by llama.cpp on the current thread (see log.cpp): used to
// explain a failed load or decode in the JS error.
void        log_capture_begin();
std::string log_capture_end();

} // namespace bw
