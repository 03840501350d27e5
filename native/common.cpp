#include "common.h"
#include "env.h"
#include "log.h"

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace bw {

bw_error arg_error(const char * code, const std::string & field, const std::string & reason) {
    return bw_error(code, field + " " + reason, field, reason);
}

bw_error option_error(const char * code, const std::string & field, const std::string & reason) {
    return bw_error(code, "option '" + field + "' " + reason, field, reason);
}

Napi::Error make_error(Napi::Env env, const std::string & code, const std::string & msg,
                       const std::string & field, const std::string & reason) {
    Napi::Error err = Napi::Error::New(env, msg);
    err.Set("code", Napi::String::New(env, code));
    if (!field.empty()) {
        err.Set("field", Napi::String::New(env, field));
        err.Set("reason", Napi::String::New(env, reason));
    }
    return err;
}

Napi::Promise promise_worker::run(Napi::Env env, const char * name, exec_fn execute, resolve_fn resolve,
                                  done_fn done, Napi::Object keep_alive) {
    auto * w = new promise_worker(env, name, std::move(execute), std::move(resolve), std::move(done));
    if (!keep_alive.IsEmpty()) {
        w->keep = Napi::Persistent(keep_alive);
    }
    Napi::Promise p = w->deferred.Promise();
    w->Queue();
    return p;
}

promise_worker::promise_worker(Napi::Env env, const char * name, exec_fn execute, resolve_fn resolve, done_fn done)
    : Napi::AsyncWorker(env, name),
      shared(env_of(env).shared),
      deferred(Napi::Promise::Deferred::New(env)),
      execute(std::move(execute)),
      resolve(std::move(resolve)),
      done(std::move(done)) {}

void promise_worker::Execute() {
    if (shared->stopping.load()) { // queued before its environment began to go: nobody waits for it
        failed   = true;
        err_code = code::disposed;
        err_msg  = "the thread that started this work has exited";
        return;
    }
    log_origin origin(shared->id);
    try {
        execute();
    } catch (const bw_error & e) {
        failed     = true;
        err_code   = e.code;
        err_msg    = e.what();
        err_field  = e.field;
        err_reason = e.reason;
    } catch (const std::exception & e) {
        failed   = true;
        err_code = "ERR_INTERNAL";
        err_msg  = e.what();
    } catch (...) {
        failed   = true;
        err_code = "ERR_INTERNAL";
        err_msg  = "unknown native error";
    }
}

void promise_worker::run_done() noexcept {
    if (!done) {
        return;
    }
    done_fn fn = std::move(done);
    done = nullptr;
    try {
        fn();
    } catch (...) {
        // it only releases; there is nobody to tell
    }
}

// Whether JS may run in this environment. Node-API calls that may run JS fail once the environment is being
// torn down; on a fresh object, nothing else makes this one fail.
static bool js_allowed(napi_env env) {
    napi_value obj = nullptr;
    bool has = false;
    return napi_create_object(env, &obj) == napi_ok && napi_has_named_property(env, obj, "x", &has) == napi_ok;
}

// On the environment's JS thread, once `execute` has run (or was skipped). Replaces node-addon-api's
// completion, which turns an exception thrown while settling into a JS exception, and aborts the process
// when that cannot be thrown (an environment being torn down).
void promise_worker::OnWorkComplete(Napi::Env env, napi_status status) {
    if (status != napi_cancelled && js_allowed(env)) {
        try {
            settle(env);
        } catch (...) {
            // the environment stopped while settling (a worker terminated just now): nobody left to tell
        }
    } else if (status != napi_cancelled) {
        shared->stopping.store(true); // the environment is going away: skip its work that has not started
    }
    run_done(); // if settle did not get to it
    Destroy();
}

void promise_worker::settle(Napi::Env env) {
    Napi::HandleScope scope(env);
    if (failed) {
        run_done();
        deferred.Reject(make_error(env, err_code.empty() ? "ERR_INTERNAL" : err_code, err_msg, err_field, err_reason).Value());
        return;
    }
    try {
        deferred.Resolve(resolve ? resolve(env) : env.Undefined());
    } catch (const bw_error & e) {
        deferred.Reject(make_error(env, e.code, e.what(), e.field, e.reason).Value());
    } catch (const Napi::Error & e) {
        deferred.Reject(e.Value());
    } catch (const std::exception & e) {
        deferred.Reject(make_error(env, "ERR_INTERNAL", e.what()).Value());
    }
    run_done(); // after resolve: it may release what resolve handed over
}

static Napi::Value field(const Napi::Object & o, const char * key) {
    if (o.IsEmpty() || !o.Has(key)) {
        return Napi::Value();
    }
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
        return Napi::Value();
    }
    return v;
}

bool has(const Napi::Object & o, const char * key) {
    return !field(o, key).IsEmpty();
}

double get_num(const Napi::Object & o, const char * key, double def) {
    Napi::Value v = field(o, key);
    if (v.IsEmpty()) {
        return def;
    }
    if (!v.IsNumber()) {
        throw option_error(code::invalid_argument, key, "must be a number");
    }
    double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d)) {
        throw option_error(code::invalid_argument, key, "must be a finite number");
    }
    return d;
}

std::string format_num(double d) {
    char buf[32];
    for (int prec = 1; prec <= 17; prec++) { // the shortest text that reads back as d, as JS prints numbers
        std::snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) {
            break;
        }
    }
    return buf;
}

// FLT_MAX plus half of its ulp: doubles below it round to at most FLT_MAX, the rest (ties to even) to inf
static constexpr double float_round_limit = 3.4028235677973366e38;

bool fits_float(double d) {
    return std::fabs(d) < float_round_limit; // false for NaN too
}

float to_float(double d) {
    return d > (double) FLT_MAX ? FLT_MAX : d < -(double) FLT_MAX ? -FLT_MAX : (float) d;
}

double get_float(const Napi::Object & o, const char * key, double def) {
    double d = get_num(o, key, def);
    if (!fits_float(d)) {
        throw bw_error(code::invalid_argument, std::string("option '") + key + "' (" + format_num(d) +
                       ") is beyond the range of a 32-bit float", key, "is beyond the range of a 32-bit float (got " + format_num(d) + ")");
    }
    return d;
}

int64_t get_int64(const Napi::Object & o, const char * key, int64_t def) {
    Napi::Value v = field(o, key);
    if (v.IsEmpty()) {
        return def;
    }
    double d = get_num(o, key, 0);
    if (std::floor(d) != d) {
        throw option_error(code::invalid_argument, key, "must be an integer");
    }
    return (int64_t) d;
}

int32_t get_int(const Napi::Object & o, const char * key, int32_t def) {
    int64_t v = get_int64(o, key, def);
    if (v < INT32_MIN || v > INT32_MAX) {
        throw option_error(code::invalid_argument, key, "is out of range");
    }
    return (int32_t) v;
}

bool get_bool(const Napi::Object & o, const char * key, bool def) {
    Napi::Value v = field(o, key);
    if (v.IsEmpty()) {
        return def;
    }
    if (!v.IsBoolean()) {
        throw option_error(code::invalid_argument, key, "must be a boolean");
    }
    return v.As<Napi::Boolean>().Value();
}

std::string get_str(const Napi::Object & o, const char * key, const std::string & def) {
    Napi::Value v = field(o, key);
    if (v.IsEmpty()) {
        return def;
    }
    if (!v.IsString()) {
        throw option_error(code::invalid_argument, key, "must be a string");
    }
    return v.As<Napi::String>().Utf8Value();
}

Napi::Object opt_object(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field) {
    if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) {
        return Napi::Object::New(info.Env());
    }
    if (!info[i].IsObject()) {
        throw bw_error(code::invalid_argument, std::string(what) + " must be an object", field, "must be an object");
    }
    return info[i].As<Napi::Object>();
}

std::string arg_string(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field) {
    if (info.Length() <= i || !info[i].IsString()) {
        throw bw_error(code::invalid_argument, std::string(what) + " must be a string", field ? field : what, "must be a string");
    }
    return info[i].As<Napi::String>().Utf8Value();
}

int32_t arg_int(const Napi::CallbackInfo & info, size_t i, const char * what, const char * field) {
    double d = info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(d) || std::floor(d) != d || d < INT32_MIN || d > INT32_MAX) {
        throw bw_error(code::invalid_argument, std::string(what) + " must be an integer", field ? field : what, "must be an integer");
    }
    return (int32_t) d;
}

} // namespace bw
