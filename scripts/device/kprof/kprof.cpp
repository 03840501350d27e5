// kprof: what the GPU spent its time on, for any CUDA program, with no profiler on the machine but CUPTI.
// Loaded by the CUDA driver through CUDA_INJECTION64_PATH; it records every kernel, copy and memset (CUPTI activity
// records, timed on the GPU) and writes at exit, to KPROF_OUT (default stderr): per kernel name its launches, total
// and mean time (KPROF_OUT may hold "%p", the process id), then the copies by direction, and how much of the span from the first record to the last the GPU
// was busy (the union of the records' intervals; the rest is the GPU waiting on the host).
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
    uint64_t busy = 0, span = 0;
    if (!intervals.empty()) {
        std::sort(intervals.begin(), intervals.end());
        uint64_t s = intervals[0].first, e = intervals[0].second;
        for (const auto & [a, b] : intervals) {
            if (a > e) {
                busy += e - s;
                s = a;
                e = b;
            } else {
                e = std::max(e, b);
            }
        }
        busy += e - s;
        span = e - intervals[0].first; // sorted by start and merged: the last run's end is the latest end
    }
    uint64_t kernel_ns = 0;
    std::vector<std::pair<std::string, totals>> ks(kernels.begin(), kernels.end());
    std::sort(ks.begin(), ks.end(), [](const auto & a, const auto & b) { return a.second.ns > b.second.ns; });
    for (const auto & k : ks) {
        kernel_ns += k.second.ns;
    }
    fprintf(f, "# kprof: GPU span %.3f s, busy %.3f s (%.1f%%), kernels %.3f s\n", span*1e-9, busy*1e-9,
            span ? 100.0*busy/span : 0.0, kernel_ns*1e-9);
    fprintf(f, "%10s %12s %10s %6s  %s\n", "launches", "total ms", "mean us", "share", "kernel");
    for (const auto & [name, t] : ks) {
        fprintf(f, "%10llu %12.3f %10.2f %5.1f%%  %.*s\n", (unsigned long long) t.n, t.ns*1e-6, t.n ? t.ns*1e-3/t.n : 0.0,
                kernel_ns ? 100.0*t.ns/kernel_ns : 0.0, 240, name.c_str());
    }
    for (const auto & [name, t] : copies) {
        fprintf(f, "%10llu %12.3f %10.2f %6s  %s, %.1f MB\n", (unsigned long long) t.n, t.ns*1e-6, t.n ? t.ns*1e-3/t.n : 0.0,
                "", name.c_str(), t.bytes*1e-6);
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
    atexit(report);
    return 1;
}
