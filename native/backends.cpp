// Loading ggml's backends from the addon's folder (see backends.h).
#include "backends.h"

#include "ggml-backend.h"

#include <cstring>
#include <string>

#ifdef BATCHWISE_BACKEND_DL
#    include <dirent.h>
#    include <dlfcn.h>
#    include <link.h>
#    include <climits>
#    include <cstdlib>
#endif

namespace bw {

static backends_state g_state;

#ifdef BATCHWISE_BACKEND_DL

// The folder of the file this function is in: the addon, whatever path Node loaded it from (node_modules, an
// Electron app's app.asar.unpacked, a copy). Its libraries sit beside it.
static std::string addon_dir() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void *>(&addon_dir), &info) == 0 || info.dli_fname == nullptr) {
        return "";
    }
    char real[PATH_MAX];
    std::string path = realpath(info.dli_fname, real) != nullptr ? real : info.dli_fname;
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

static bool starts_with(const std::string & s, const std::string & prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

static bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// libggml-<name>[-<variant>].so files in dir
static std::vector<std::string> backend_files(const std::string & dir) {
    std::vector<std::string> out;
    DIR * d = opendir(dir.c_str());
    if (d == nullptr) {
        return out;
    }
    while (const dirent * e = readdir(d)) {
        const std::string name = e->d_name;
        if (starts_with(name, "libggml-") && ends_with(name, ".so")) {
            out.push_back(name);
        }
    }
    closedir(d);
    return out;
}

// the backend libraries of dir that are loaded in this process (ggml keeps the one it picked, closes the others)
static int collect_loaded(dl_phdr_info * info, size_t, void * data) {
    auto * st = static_cast<backends_state *>(data);
    if (info->dlpi_name == nullptr) {
        return 0;
    }
    const std::string path = info->dlpi_name;
    const std::string prefix = st->dir + "/libggml-";
    if (starts_with(path, prefix) && ends_with(path, ".so")) {
        st->libraries.push_back(path.substr(st->dir.size() + 1));
    }
    return 0;
}

void backends_load() {
    g_state.dynamic = true;
    g_state.dir = addon_dir();
    if (g_state.dir.empty()) {
        g_state.errors.push_back("could not find the addon's folder (dladdr failed): no backend loaded");
        return;
    }
    ggml_backend_load_all_from_path(g_state.dir.c_str());
    dl_iterate_phdr(collect_loaded, &g_state);

    // ggml loads quietly in a release build: say why a backend that ships here is not in use
    bool has_cpu_file = false;
    for (const std::string & file : backend_files(g_state.dir)) {
        // libggml-cuda.so -> "cuda"; libggml-cpu-haswell.so -> "cpu"
        std::string name = file.substr(strlen("libggml-"), file.size() - strlen("libggml-") - strlen(".so"));
        name = name.substr(0, name.find('-'));
        if (name == "cpu") {
            has_cpu_file = true;
            continue; // variants that lose on score are closed again by design
        }
        ggml_backend_reg_t reg = ggml_backend_reg_by_name(name.c_str()); // ignores case: "cuda" finds "CUDA"
        if (reg != nullptr) {
            if (ggml_backend_reg_dev_count(reg) == 0) {
                g_state.errors.push_back(file + ": loaded, but it found no device (no GPU visible to this process)");
            }
            continue;
        }
        const std::string path = g_state.dir + "/" + file;
        void * handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (handle == nullptr) {
            const char * err = dlerror();
            g_state.errors.push_back(file + ": " + (err != nullptr ? err : "dlopen failed"));
        } else {
            dlclose(handle);
            g_state.errors.push_back(file + ": loaded, but its backend did not initialize");
        }
    }
    if (ggml_backend_reg_by_name("CPU") == nullptr) {
        g_state.errors.push_back(has_cpu_file
            ? "no CPU backend in " + g_state.dir + " runs on this processor"
            : "no CPU backend (libggml-cpu-*.so) in " + g_state.dir);
    }
}

#else

void backends_load() {
}

#endif

const backends_state & backends_info() {
    return g_state;
}

// a CUDA backend with a device: registered by a static CUDA build (GGML_USE_CUDA) or loaded by a prebuild
bool backends_cuda() {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CUDA");
    return reg != nullptr && ggml_backend_reg_dev_count(reg) > 0;
}

} // namespace bw
