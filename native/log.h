#pragma once
#include <napi.h>

namespace bw {
void        log_init(Napi::Env env);
Napi::Value set_logger(const Napi::CallbackInfo & info);
} // namespace bw
