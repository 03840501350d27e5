#pragma once
#include <napi.h>

namespace bw {
Napi::Value get_devices(const Napi::CallbackInfo & info);
Napi::Value system_info(const Napi::CallbackInfo & info);
} // namespace bw
