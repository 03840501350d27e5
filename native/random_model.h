#pragma once
#include <napi.h>

namespace bw {
Napi::Value create_random_model(const Napi::CallbackInfo & info);
} // namespace bw
