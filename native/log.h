#pragma once
#include <napi.h>

#include <cstdint>

namespace bw {

struct addon_env;

// llama.cpp has one log callback for the whole process. log_install sets it once; it sends each line to the
// logger of the environment whose work logged it (see log.cpp), and captures error lines per thread.
void log_install();
// The calling thread's lines belong to environment `env_id` (its JS thread, for its lifetime).
void log_bind_thread(uint64_t env_id);
// The environment is being torn down: its logger gets nothing more.
void log_env_teardown(addon_env & e);

// For the duration of a piece of work on the libuv pool, the thread's lines belong to `env_id`.
class log_origin {
public:
    explicit log_origin(uint64_t env_id);
    ~log_origin();
    log_origin(const log_origin &) = delete;
    log_origin & operator=(const log_origin &) = delete;

private:
    uint64_t prev_;
};

Napi::Value set_logger(const Napi::CallbackInfo & info);

} // namespace bw
