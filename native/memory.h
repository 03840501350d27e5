// The process heap as the C library's malloc keeps it (glibc): what is in use, what it holds from the system,
// and giving back the free pages it holds.
#pragma once
#include <napi.h>

namespace bw {
// heapStats() -> { inUseBytes, heldBytes, mmapBytes } or null where the C library does not say (not glibc).
Napi::Value heap_stats(const Napi::CallbackInfo & info);
// trimHeap() -> true when malloc gave pages back to the system (false: none to give, or not glibc).
Napi::Value trim_heap(const Napi::CallbackInfo & info);
} // namespace bw
