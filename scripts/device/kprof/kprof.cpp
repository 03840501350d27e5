// kprof: what the GPU spent its time on, for any CUDA program, with no profiler on the machine but CUPTI.
// Loaded by the CUDA driver through CUDA_INJECTION64_PATH; it records every kernel, copy and memset (CUPTI activity
// records, timed on the GPU) and writes at exit, to KPROF_OUT (default stderr): per kernel name its launches, total
// and mean time (KPROF_OUT may hold "%p", the process id), then the copies by direction, and how much of the span from the first record to the last the GPU
// was busy (the union of the records' intervals; the rest is the GPU waiting on the host), the same for each stretch of
// work of a second or more (KPROF_GAP_MS of idle ends one), and how many kernels ran
// from CUDA graphs (ggml-cuda captures a graph once two calls in a row have the same nodes). KPROF_API=1 adds the host's
// time in CUDA runtime and driver calls, by call (synchronizations, allocations, copies).
//   build: bash scripts/device/kprof/build.sh          (here or there; needs CUDA's cupti.h and libcupti)
//   use:   CUDA_INJECTION64_PATH=$PWD/.carry/libkprof.so KPROF_OUT=/tmp/k.txt node scripts/bench-kv.mjs ...
#include <cupti.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <mutex>
#include <unistd.h>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

struct totals {
    uint64_t n  = 0;
    uint64_t ns = 0;
    uint64_t bytes = 0;
};

std::mutex                                      mu;
std::unordered_map<std::string, totals>         kernels;
std::unordered_map<std::string, totals>         copies;
std::vector<std::pair<uint64_t, uint64_t>>      intervals;
totals                                          graph_kernels; // kernels a CUDA graph launched (graphId != 0)
std::unordered_map<uint32_t, uint64_t>          graphs;        // graph id: its kernels
std::unordered_map<uint64_t, totals>            apis;          // KPROF_API=1: host CUDA API calls, by (domain << 32 | cbid)

std::string demangle(const char * name) {
    int status = 0;
    char * d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : name;
    free(d);
    // the argument list says nothing the template arguments do not: drop it
    const size_t paren = s.rfind('(');
    if (paren != std::string::npos && paren > 0) {
        s.resize(paren);
    }
    return s;
}

const char * copy_kind(uint8_t kind) {
    switch (kind) {
        case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "copy host to device";
        case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "copy device to host";
        case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "copy device to device";
        case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "copy peer to peer";
        default:                              return "copy (other)";
    }
}

void CUPTIAPI buffer_requested(uint8_t ** buffer, size_t * size, size_t * max_records) {
    *size        = 16u << 20;
    *buffer      = (uint8_t *) aligned_alloc(8, *size);
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t * buffer, size_t, size_t valid) {
    std::lock_guard<std::mutex> lock(mu);
    CUpti_Activity * rec = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        switch (rec->kind) {
            case CUPTI_ACTIVITY_KIND_KERNEL:
            case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
                const auto * k = (const CUpti_ActivityKernel10 *) rec;
                totals & t = kernels[demangle(k->name)];
                t.n++;
                t.ns += k->end - k->start;
                intervals.emplace_back(k->start, k->end);
                if (k->graphId != 0) {
                    graph_kernels.n++;
                    graph_kernels.ns += k->end - k->start;
                    graphs[k->graphId]++;
                }
                break;
            }
            case CUPTI_ACTIVITY_KIND_RUNTIME:
            case CUPTI_ACTIVITY_KIND_DRIVER: {
                const auto * a = (const CUpti_ActivityAPI *) rec;
                const uint64_t domain = rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API;
                totals & t = apis[domain << 32 | a->cbid];
                t.n++;
                t.ns += a->end - a->start;
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMCPY: {
                const auto * m = (const CUpti_ActivityMemcpy6 *) rec;
                totals & t = copies[copy_kind(m->copyKind)];
                t.n++;
                t.ns += m->end - m->start;
                t.bytes += m->bytes;
                intervals.emplace_back(m->start, m->end);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMSET: {
                const auto * m = (const CUpti_ActivityMemset4 *) rec;
                totals & t = copies["memset"];
                t.n++;
                t.ns += m->end - m->start;
                t.bytes += m->bytes;
                intervals.emplace_back(m->start, m->end);
                break;
            }
            default:
                break;
        }
    }
    free(buffer);
}

void report() {
    cuptiActivityFlushAll(1);
    std::lock_guard<std::mutex> lock(mu);
    // "%p" in KPROF_OUT: the process id (a program's children inherit the variable)
    std::string path = getenv("KPROF_OUT") ? getenv("KPROF_OUT") : "";
    if (const size_t at = path.find("%p"); at != std::string::npos) {
        path.replace(at, 2, std::to_string(getpid()));
    }
    FILE * f = path.empty() ? stderr : fopen(path.c_str(), "w");
    if (!f) {
        f = stderr;
    }
    // the busy runs: the records' intervals merged
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    std::sort(intervals.begin(), intervals.end());
    for (const auto & [a, b] : intervals) {
        if (runs.empty() || a > runs.back().second) {
            runs.emplace_back(a, b);
        } else {
            runs.back().second = std::max(runs.back().second, b);
        }
    }
    uint64_t busy = 0;
    for (const auto & [a, b] : runs) {
        busy += b - a;
    }
    const uint64_t span = runs.empty() ? 0 : runs.back().second - runs.front().first;
    uint64_t kernel_ns = 0;
    std::vector<std::pair<std::string, totals>> ks(kernels.begin(), kernels.end());
    std::sort(ks.begin(), ks.end(), [](const auto & a, const auto & b) { return a.second.ns > b.second.ns; });
    for (const auto & k : ks) {
        kernel_ns += k.second.ns;
    }
    fprintf(f, "# kprof: GPU span %.3f s, busy %.3f s (%.1f%%), kernels %.3f s\n", span*1e-9, busy*1e-9,
            span ? 100.0*busy/span : 0.0, kernel_ns*1e-9);
    uint64_t kernel_n = 0;
    for (const auto & k : ks) {
        kernel_n += k.second.n;
    }
    // a graph (re)instantiated by cudaGraphExecUpdate keeps its id; one captured anew gets another
    fprintf(f, "# kprof: from CUDA graphs %llu of %llu kernels (%.1f%%), %.3f s, %zu graphs\n", (unsigned long long) graph_kernels.n,
            (unsigned long long) kernel_n, kernel_n ? 100.0*graph_kernels.n/kernel_n : 0.0, graph_kernels.ns*1e-9, graphs.size());
    // the span holds a server's whole life (the weights' upload, its idle time before and between requests): the
    // segments, split where the GPU idled KPROF_GAP_MS (default 250) or more, give the busy share of each stretch of work
    const char * gap_env = getenv("KPROF_GAP_MS");
    const uint64_t gap = (uint64_t) (gap_env && atof(gap_env) > 0 ? atof(gap_env) : 250.0) * 1000000u;
    for (size_t i = 0, j; i < runs.size(); i = j) {
        uint64_t seg_busy = runs[i].second - runs[i].first;
        for (j = i + 1; j < runs.size() && runs[j].first - runs[j - 1].second < gap; ++j) {
            seg_busy += runs[j].second - runs[j].first;
        }
        const uint64_t len = runs[j - 1].second - runs[i].first;
        if (len >= 1000000000u) { // a second or more
            fprintf(f, "# kprof: segment at +%.3f s: %.3f s, busy %.3f s (%.1f%%)\n", (runs[i].first - runs.front().first)*1e-9,
                    len*1e-9, seg_busy*1e-9, 100.0*seg_busy/len);
        }
    }
    fprintf(f, "%10s %12s %10s %6s  %s\n", "launches", "total ms", "mean us", "share", "kernel");
    for (const auto & [name, t] : ks) {
        fprintf(f, "%10llu %12.3f %10.2f %5.1f%%  %.*s\n", (unsigned long long) t.n, t.ns*1e-6, t.n ? t.ns*1e-3/t.n : 0.0,
                kernel_ns ? 100.0*t.ns/kernel_ns : 0.0, 240, name.c_str());
    }
    for (const auto & [name, t] : copies) {
        fprintf(f, "%10llu %12.3f %10.2f %6s  %s, %.1f MB\n", (unsigned long long) t.n, t.ns*1e-6, t.n ? t.ns*1e-3/t.n : 0.0,
                "", name.c_str(), t.bytes*1e-6);
    }
    if (!apis.empty()) {
        // host time in CUDA calls (a runtime call's driver calls are listed too): a synchronization, an allocation
        // or a copy from pageable memory shows here as the host waiting, where the kernels show the GPU waiting
        std::vector<std::pair<uint64_t, totals>> as(apis.begin(), apis.end());
        std::sort(as.begin(), as.end(), [](const auto & a, const auto & b) { return a.second.ns > b.second.ns; });
        fprintf(f, "# kprof: host CUDA API calls, by total time\n%10s %12s %10s  %s\n", "calls", "total ms", "mean us", "call");
        for (size_t i = 0; i < as.size() && i < 30; ++i) {
            const auto & [key, t] = as[i];
            const char * name = nullptr;
            if (cuptiGetCallbackName((CUpti_CallbackDomain) (key >> 32), (CUpti_CallbackId) (key & 0xffffffffu), &name) != CUPTI_SUCCESS || !name) {
                name = "?";
            }
            fprintf(f, "%10llu %12.3f %10.2f  %s (%s)\n", (unsigned long long) t.n, t.ns*1e-6, t.ns*1e-3/t.n, name,
                    (key >> 32) == CUPTI_CB_DOMAIN_RUNTIME_API ? "runtime" : "driver");
        }
    }
    if (f != stderr) {
        fclose(f);
    }
}

} // namespace

extern "C" int InitializeInjection(void) {
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) {
        fprintf(stderr, "kprof: CUPTI did not take the callbacks: no profile\n");
        return 1;
    }
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    if (const char * api = getenv("KPROF_API"); api && atoi(api) == 1) {
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
    }
    atexit(report);
    return 1;
}
