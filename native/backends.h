#pragma once
// ggml's backends. A prebuilt package (CMake BATCHWISE_PREBUILD) builds them as libraries beside the addon
// (libggml-cpu-<variant>.so for each x86 level, libggml-cuda.so) and loads them at run time from the addon's own
// folder: the CPU variant that scores best on this processor, CUDA when its libraries and a driver load. A source
// build links them in and has nothing to load.
#include <string>
#include <vector>

namespace bw {

struct backends_state {
    bool dynamic = false;                // backends are libraries loaded at run time (a prebuild)
    std::string dir;                     // the folder they were loaded from: the addon's
    std::vector<std::string> libraries;  // the backend libraries loaded, by file name
    std::vector<std::string> errors;     // why a backend library in dir is not in use, one line each
};

// Once per process, before llama_backend_init.
void backends_load();

const backends_state & backends_info();

// A CUDA backend is in use: linked in (a CUDA source build), or loaded with at least one device.
bool backends_cuda();

} // namespace bw
