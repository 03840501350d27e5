// createRandomModel: a GGUF with random weights, a real architecture and the real tokenizer and chat
// template of a vocab-only GGUF (llama.cpp's models/ggml-vocab-*.gguf). Built on llama.cpp's public
// llama_model_init_from_user and llama_model_save_to_file, so tests and benchmarks need no downloads.
#include "common.h"
#include "random_model.h"

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace bw {

namespace {

struct shape {
    std::string arch;
    std::string vocab_from;
    std::string out;
    std::string type_name;
    ggml_type   type = GGML_TYPE_F16;
    uint32_t    ftype = LLAMA_FTYPE_MOSTLY_F16;
    uint32_t n_embd = 64, n_layer = 2, n_head = 4, n_head_kv = 4, n_ff = 128, n_ctx = 4096;
    uint64_t seed = 42;
    int32_t  threads = 0;
    // results
    uint64_t size = 0;
    int32_t  n_vocab = 0;
};

uint64_t fnv1a(const char * s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h = (h ^ (uint8_t) *s) * 1099511628211ull;
    }
    return h;
}

uint64_t splitmix64(uint64_t & x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Standard normal samples, deterministic per (seed, row): rows can be filled by any thread in any order.
void fill_normal(float * dst, int64_t n, uint64_t seed, float mean, float stdev) {
    uint64_t st = seed;
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = ((splitmix64(st) >> 11) + 1) * (1.0 / 9007199254740993.0); // (0, 1]
        double u2 = (splitmix64(st) >> 11) * (1.0 / 9007199254740992.0);
        double r  = std::sqrt(-2.0 * std::log(u1));
        dst[i] = (float) (mean + stdev * r * std::cos(2.0 * M_PI * u2));
        if (i + 1 < n) {
            dst[i + 1] = (float) (mean + stdev * r * std::sin(2.0 * M_PI * u2));
        }
    }
}

struct fill_params {
    const shape * s;
};

// Scale per tensor kind so that activations stay of order one through any depth and the logits are
// spread widely enough that greedy decoding has clear winners.
void tensor_distribution(const ggml_tensor * t, float & mean, float & stdev) {
    const char * name = t->name;
    if (std::strstr(name, "_norm")) {          // RMSNorm gains
        mean = 1.0f; stdev = 0.05f;
    } else if (std::strstr(name, ".bias")) {
        mean = 0.0f; stdev = 0.02f;
    } else if (std::strcmp(name, "token_embd.weight") == 0) {
        mean = 0.0f; stdev = 1.0f;
    } else if (std::strcmp(name, "output.weight") == 0) {
        mean = 0.0f; stdev = 2.0f / std::sqrt((float) t->ne[0]);
    } else {                                    // projections: unit gain
        mean = 0.0f; stdev = 1.0f / std::sqrt((float) t->ne[0]);
    }
}

void set_tensor_data(ggml_tensor * t, void * ud) {
    const shape & s = *((fill_params *) ud)->s;
    float mean, stdev;
    tensor_distribution(t, mean, stdev);
    const int64_t n_per_row = t->ne[0];
    const int64_t n_rows    = ggml_nelements(t) / n_per_row;
    const size_t  row_size  = ggml_row_size(t->type, n_per_row);
    std::vector<uint8_t> data(row_size * n_rows);
    const uint64_t tseed = s.seed ^ fnv1a(t->name);
    unsigned n_threads = s.threads > 0 ? (unsigned) s.threads : std::max(1u, std::thread::hardware_concurrency());
    n_threads = (unsigned) std::min<int64_t>(n_threads, std::max<int64_t>(1, n_rows / 64));
    auto work = [&](int64_t r0, int64_t r1) {
        std::vector<float> row(n_per_row);
        for (int64_t r = r0; r < r1; r++) {
            fill_normal(row.data(), n_per_row, tseed + (uint64_t) r * 0x9E3779B97F4A7C15ull, mean, stdev);
            if (t->type == GGML_TYPE_F32) {
                std::memcpy(data.data() + r * row_size, row.data(), row_size);
            } else {
                ggml_quantize_chunk(t->type, row.data(), data.data() + r * row_size, 0, 1, n_per_row, nullptr);
            }
        }
    };
    std::vector<std::thread> pool;
    const int64_t per = (n_rows + n_threads - 1) / n_threads;
    for (unsigned i = 0; i < n_threads; i++) {
        int64_t r0 = i * per, r1 = std::min(n_rows, r0 + per);
        if (r0 < r1) {
            pool.emplace_back(work, r0, r1);
        }
    }
    for (auto & th : pool) {
        th.join();
    }
    ggml_backend_tensor_set(t, data.data(), 0, data.size());
}

// Weights of these shapes get the requested type; norms and biases stay f32 like in converted models.
std::vector<std::string> matrix_names(const shape & s) {
    std::vector<std::string> names = { "token_embd.weight", "output.weight" };
    for (uint32_t i = 0; i < s.n_layer; i++) {
        for (const char * w : { "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down" }) {
            names.push_back("blk." + std::to_string(i) + "." + w + ".weight");
        }
    }
    return names;
}

void build(shape & s) {
    struct stat st;
    if (stat(s.vocab_from.c_str(), &st) != 0) {
        throw bw_error(code::model_not_found, "vocabulary file not found: " + s.vocab_from);
    }
    gguf_init_params gp = { /*no_alloc*/ true, /*ctx*/ nullptr };
    log_capture_begin();
    std::unique_ptr<gguf_context, void (*)(gguf_context *)> vocab(gguf_init_from_file(s.vocab_from.c_str(), gp), gguf_free);
    std::string why = log_capture_end();
    if (!vocab) {
        throw bw_error(code::model_not_gguf, "cannot read the vocabulary GGUF " + s.vocab_from + (why.empty() ? "" : ": " + why));
    }
    if (gguf_find_key(vocab.get(), "tokenizer.ggml.tokens") < 0) {
        throw bw_error(code::invalid_argument, s.vocab_from + " has no tokenizer (tokenizer.ggml.tokens)");
    }

    std::unique_ptr<gguf_context, void (*)(gguf_context *)> meta(gguf_init_empty(), gguf_free);
    gguf_set_kv(meta.get(), vocab.get()); // tokenizer, chat template, special tokens
    const std::string a = s.arch;
    auto u32 = [&](const std::string & k, uint32_t v) { gguf_set_val_u32(meta.get(), (a + "." + k).c_str(), v); };
    auto f32 = [&](const std::string & k, float v) { gguf_set_val_f32(meta.get(), (a + "." + k).c_str(), v); };
    gguf_set_val_str(meta.get(), "general.architecture", a.c_str());
    std::string name = "batchwise-random-" + a + "-" + std::to_string(s.n_layer) + "x" + std::to_string(s.n_embd) + "-" + s.type_name;
    gguf_set_val_str(meta.get(), "general.name", name.c_str());
    gguf_set_val_u32(meta.get(), "general.file_type", s.ftype);
    u32("context_length", s.n_ctx);
    u32("embedding_length", s.n_embd);
    u32("block_count", s.n_layer);
    u32("feed_forward_length", s.n_ff);
    u32("attention.head_count", s.n_head);
    u32("attention.head_count_kv", s.n_head_kv);
    u32("rope.dimension_count", s.n_embd / s.n_head);
    f32("attention.layer_norm_rms_epsilon", 1e-6f);
    f32("rope.freq_base", a == "qwen2" ? 1000000.0f : 10000.0f);

    // tensor types: init_from_user creates every tensor as f32 unless the metadata names it with another type
    ggml_init_params ip = { /*mem_size*/ ggml_tensor_overhead() * (8 * s.n_layer + 8), /*mem_buffer*/ nullptr, /*no_alloc*/ true };
    std::unique_ptr<ggml_context, void (*)(ggml_context *)> tctx(ggml_init(ip), ggml_free);
    if (s.type != GGML_TYPE_F32) {
        for (const std::string & tn : matrix_names(s)) {
            ggml_tensor * t = ggml_new_tensor_1d(tctx.get(), s.type, 256);
            ggml_set_name(t, tn.c_str());
            gguf_add_tensor(meta.get(), t);
        }
    }

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0; // weights are generated and written from host memory
    static ggml_backend_dev_t no_devices[] = { nullptr };
    mp.devices = no_devices;
    fill_params fp = { &s };
    log_capture_begin();
    llama_model * model = llama_model_init_from_user(meta.get(), set_tensor_data, &fp, mp);
    why = log_capture_end();
    if (!model) {
        throw bw_error(code::model_load_failed, "llama.cpp could not build a " + a + " model of this shape" + (why.empty() ? "" : ": " + why));
    }
    s.n_vocab  = llama_vocab_n_tokens(llama_model_get_vocab(model));
    // a file of this process and thread alone: several processes may make the same model at once (replicas
    // started together on a fresh machine), and the rename below makes whichever finishes last the one kept
    std::string tmp = s.out + "." + std::to_string((long long) getpid()) + "." +
                      std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id())) + ".tmp";
    std::remove(tmp.c_str());
    llama_model_save_to_file(model, tmp.c_str());
    llama_model_free(model);
    if (stat(tmp.c_str(), &st) != 0 || st.st_size == 0) {
        std::remove(tmp.c_str());
        throw bw_error(code::io_failed, "failed to write " + s.out);
    }
    if (std::rename(tmp.c_str(), s.out.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw bw_error(code::io_failed, "failed to move the model into place at " + s.out + ": " + std::strerror(errno));
    }
    s.size = (uint64_t) st.st_size;
}

ggml_type parse_weight_type(const std::string & t, uint32_t & ftype) {
    if (t == "f32")  { ftype = LLAMA_FTYPE_ALL_F32;     return GGML_TYPE_F32; }
    if (t == "f16")  { ftype = LLAMA_FTYPE_MOSTLY_F16;  return GGML_TYPE_F16; }
    if (t == "bf16") { ftype = LLAMA_FTYPE_MOSTLY_BF16; return GGML_TYPE_BF16; }
    if (t == "q8_0") { ftype = LLAMA_FTYPE_MOSTLY_Q8_0; return GGML_TYPE_Q8_0; }
    if (t == "q4_0") { ftype = LLAMA_FTYPE_MOSTLY_Q4_0; return GGML_TYPE_Q4_0; }
    throw option_error(code::invalid_argument, "type", "must be one of f32, f16, bf16, q8_0, q4_0 (got '" + t + "')");
}

uint32_t positive(const Napi::Object & o, const char * key, uint32_t def) {
    int64_t v = get_int64(o, key, def);
    if (v < 1 || v > (1 << 20)) {
        throw option_error(code::invalid_argument, key, "must be a positive integer");
    }
    return (uint32_t) v;
}

} // namespace

// createRandomModel({ vocabFrom, out, architecture = "qwen2", embeddingSize = 64, layers = 2, heads = 4,
//                     kvHeads = heads, feedForwardSize = 2 * embeddingSize, contextLength = 4096,
//                     type = "f16", seed = 42, threads }) -> Promise<{ path, sizeBytes, vocabSize }>
Napi::Value create_random_model(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        if (info.Length() < 1 || !info[0].IsObject()) {
            throw bw_error(code::invalid_argument, "createRandomModel expects an options object", "options", "must be an object");
        }
        Napi::Object o = info[0].As<Napi::Object>();
        auto s = std::make_shared<shape>();
        s->vocab_from = get_str(o, "vocabFrom", "");
        s->out        = get_str(o, "out", "");
        if (s->vocab_from.empty()) throw option_error(code::invalid_argument, "vocabFrom", "(a vocab-only GGUF) is required");
        if (s->out.empty())        throw option_error(code::invalid_argument, "out", "(the GGUF to write) is required");
        s->arch = get_str(o, "architecture", "qwen2");
        if (s->arch != "qwen2" && s->arch != "llama") {
            throw option_error(code::invalid_argument, "architecture", "must be 'qwen2' or 'llama' (got '" + s->arch + "')");
        }
        s->n_embd    = positive(o, "embeddingSize", 64);
        s->n_layer   = positive(o, "layers", 2);
        s->n_head    = positive(o, "heads", 4);
        s->n_head_kv = positive(o, "kvHeads", s->n_head);
        s->n_ff      = positive(o, "feedForwardSize", 2 * s->n_embd);
        s->n_ctx     = positive(o, "contextLength", 4096);
        s->type_name = get_str(o, "type", "f16");
        s->type      = parse_weight_type(s->type_name, s->ftype);
        int64_t seed = get_int64(o, "seed", 42);
        if (seed < 0) throw option_error(code::invalid_argument, "seed", "must be >= 0");
        s->seed    = (uint64_t) seed;
        s->threads = get_int(o, "threads", 0);
        if (s->n_embd % s->n_head != 0) {
            throw arg_error(code::invalid_argument, "embeddingSize", "must be a multiple of heads");
        }
        if (s->n_head % s->n_head_kv != 0) {
            throw arg_error(code::invalid_argument, "heads", "must be a multiple of kvHeads");
        }
        const int64_t blck = ggml_blck_size(s->type);
        if (s->n_embd % blck != 0 || s->n_ff % blck != 0) {
            throw bw_error(code::invalid_argument, "embeddingSize and feedForwardSize must be multiples of " +
                           std::to_string(blck) + " for type " + s->type_name);
        }
        return promise_worker::run(env, "batchwise.createRandomModel",
            [s]() { build(*s); },
            [s](Napi::Env env) -> Napi::Value {
                Napi::Object r = Napi::Object::New(env);
                r.Set("path", s->out);
                r.Set("sizeBytes", (double) s->size);
                r.Set("vocabSize", s->n_vocab);
                return r;
            });
    });
}

} // namespace bw
