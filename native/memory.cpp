// The process heap under glibc's malloc. A server's threads (the JS thread, libuv's pool, the decode thread)
// each allocate from an arena of their own, and large freed blocks stay in the arena that had them: under a
// load whose requests come and go in every size, the pages malloc holds free grow for a long time after the
// memory in use stopped growing. trimHeap() gives those pages back (malloc_trim: the top of every arena, and
// every whole free page inside one), which bounds the resident size by what is in use.
#include "common.h"
#include "memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace bw {

Napi::Value heap_stats(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    const struct mallinfo2 m = mallinfo2(); // summed over every arena
    Napi::Object o = Napi::Object::New(env);
    o.Set("inUseBytes", (double) (m.uordblks + m.hblkhd)); // allocated from arenas, and in blocks of their own
    o.Set("heldBytes", (double) (m.arena + m.hblkhd));     // taken from the system: arenas, and those blocks
    o.Set("mmapBytes", (double) m.hblkhd);
    return o;
#else
    return env.Null();
#endif
}

Napi::Value trim_heap(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
#if defined(__GLIBC__)
    return Napi::Boolean::New(env, malloc_trim(0) != 0);
#else
    return Napi::Boolean::New(env, false);
#endif
}

} // namespace bw
