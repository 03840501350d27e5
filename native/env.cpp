// Per-environment instance data and its teardown (see env.h).
#include "env.h"

#include "backends.h"
#include "chat.h"
#include "context.h"
#include "log.h"
#include "model.h"

#include "llama.h"
#include <log.h> // llama.cpp common/log.h (this folder's log.h is the addon's sink)

#include <mutex>
#include <vector>

namespace bw {

addon_env & env_of(Napi::Env env) {
    return *env.GetInstanceData<addon_env>();
}

// Frees every object of one kind (a copy of the set first: teardown() unregisters it). A hook must not throw;
// freeing an object does not.
template <typename T>
static void teardown_all(std::unordered_set<T *> & live) noexcept {
    std::vector<T *> objects(live.begin(), live.end());
    live.clear();
    for (T * o : objects) {
        try {
            o->teardown();
        } catch (...) {
        }
    }
}

// Runs from the environment's cleanup hook: the main thread at exit, a worker when it ends or is terminated.
//
// By then Node has finished every piece of async work this environment queued: it spins the loop until
// the thread pool requests are done before it runs any cleanup hook, and each of those completions found the
// environment unable to run JS and only released what it held (promise_worker::OnOK). So nothing on the
// pool uses these contexts or models any more, and they are freed here, contexts first, before the
// environment and its objects go. Were a piece of work still pending (an embedder that tears down in
// another order), its context would be freed by that work's completion, as after dispose(), and its model
// when the last work holding the weights lets go.
static void teardown(addon_env & e) noexcept {
    e.shared->stopping.store(true);
    e.torn_down = true;
    log_env_teardown(e);
    teardown_all(e.contexts); // contexts and chat templates first: they hold their model's weights
    teardown_all(e.chat_templates);
    teardown_all(e.models);
}

void env_init(Napi::Env env) {
    // llama.cpp's process-wide setup, once whichever thread loads the addon first: backend init (ggml's
    // tables) and the log callback, which log.cpp fans out to the environments that set a logger
    static std::once_flag once;
    std::call_once(once, []() {
        log_install();
        backends_load(); // a prebuild's backends, from the addon's folder (nothing to do in a source build)
        llama_backend_init();
        // llama.cpp's common library (the chat layer) logs through its own logger, straight to stderr and past
        // setLogger: kept quiet. What goes wrong there reaches JS as the errors it causes
        common_log_set_verbosity_thold(-1);
    });
    static std::atomic<uint64_t> next_id{1};

    auto * e = new addon_env();
    e->shared = std::make_shared<env_shared>(next_id.fetch_add(1));
    env.SetInstanceData<addon_env>(e); // deleted with the environment, after its objects' finalizers
    log_bind_thread(e->shared->id);    // what this JS thread logs belongs to this environment
    env.AddCleanupHook([e]() { teardown(*e); });
}

} // namespace bw
