// Devices (GPUs and the CPU) with their memory, and llama.cpp's build/system information.
#include "backends.h"
#include "common.h"
#include "devices.h"

#include "ggml-backend.h"
#include "llama.h"

namespace bw {

static const char * dev_type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU:   return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU:   return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU:  return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default:                             return "other";
    }
}

// getDevices() -> [{ index, name, description, type, backend, freeBytes, totalBytes }]
// Memory is read at call time, so it shows what a model or context took and what dispose() gave back.
Napi::Value get_devices(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        Napi::Array out = Napi::Array::New(env);
        const size_t n = ggml_backend_dev_count();
        uint32_t k = 0;
        for (size_t i = 0; i < n; i++) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            size_t free_b = 0, total_b = 0;
            ggml_backend_dev_memory(dev, &free_b, &total_b);
            ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
            Napi::Object d = Napi::Object::New(env);
            d.Set("index", (double) i);
            d.Set("name", ggml_backend_dev_name(dev));
            d.Set("description", ggml_backend_dev_description(dev));
            d.Set("type", dev_type_name(ggml_backend_dev_type(dev)));
            d.Set("backend", reg ? ggml_backend_reg_name(reg) : "");
            d.Set("freeBytes", (double) free_b);
            d.Set("totalBytes", (double) total_b);
            out.Set(k++, d);
        }
        return out;
    });
}

static Napi::Array string_array(Napi::Env env, const std::vector<std::string> & v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) {
        a.Set((uint32_t) i, v[i]);
    }
    return a;
}

// systemInfo() -> { llamaTag, cuda, gpuOffload, maxDevices, maxSeqIds, maxSequences (its old name), mmap, info,
//                   backends, dynamicBackends, backendLibraries, backendErrors }
Napi::Value system_info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("llamaTag", BATCHWISE_LLAMA_TAG);
    o.Set("cuda", backends_cuda());
    std::vector<std::string> regs;
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        regs.push_back(ggml_backend_reg_name(ggml_backend_reg_get(i)));
    }
    const backends_state & bs = backends_info();
    o.Set("backends", string_array(env, regs));
    o.Set("dynamicBackends", bs.dynamic);
    o.Set("backendLibraries", string_array(env, bs.libraries));
    o.Set("backendErrors", string_array(env, bs.errors));
    o.Set("gpuOffload", llama_supports_gpu_offload());
    o.Set("maxDevices", (double) llama_max_devices());
    o.Set("maxSeqIds", (double) llama_max_parallel_sequences()); // the most seqIds a context may have
    o.Set("maxSequences", (double) llama_max_parallel_sequences()); // the old name of maxSeqIds, kept for now
    o.Set("mmap", llama_supports_mmap());
    o.Set("info", llama_print_system_info());
    return o;
}

} // namespace bw
