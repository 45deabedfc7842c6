// Greedy tokens from llama.cpp itself (llama.h only), with the model on the CUDA backend (n_gpu_layers > 0) or on
// the CPU: the other side of bench/llama_cuda_check.sh. It mirrors `ggc run --check` (ggc/cli.py, _check) and
// the llama.cpp context that ggc's LlamaSession (ggc/capture/llama.py) makes:
//   model:   n_gpu_layers as given, use_extra_bufts = false (no CPU weight repacking); with n_gpu_layers 0 no GPU
//            device at all (an empty device list) and no op offload, so the run is the CPU backend alone
//   context: n_ctx, n_batch = n_ubatch as given, n_seq_max 1, flash attention enabled, K and V cache f16,
//            n_threads = n_threads_batch = min(4, cores), no_perf, offload_kqv as kqv= says (LlamaSession: 0;
//            here by default 1 when n_gpu_layers > 0, as llama.cpp's CUDA backend runs), an eval callback that
//            asks for nothing (LlamaSession's outside recording; cb=0 leaves it out)
//   decode:  the prompt in full chunks of n_batch (when n_batch > 1), the rest one token at a time, logits of the
//            last token only; then n_predict tokens, each the argmax of the last logits (the first index of the
//            maximum, as numpy's argmax), fed back one at a time. End-of-generation tokens do not stop it.
//
// usage: llama_greedy MODEL N_GPU_LAYERS N_CTX N_BATCH N_PREDICT PROMPT_IDS_FILE [kqv=0|1] [cb=0|1]
// stdout: '#' lines (settings, llama.cpp's system info), then per generated token
//         "INDEX TOKEN LOGIT SECOND_TOKEN SECOND_LOGIT" (the top two of the logits it was picked from)
// stderr: llama.cpp's errors and warnings, and its lines on offloading (all of its log with LLAMA_GREEDY_LOG=1)

#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

static void on_log(ggml_log_level level, const char * text, void *) {
    static const bool all = std::getenv("LLAMA_GREEDY_LOG") && std::atoi(std::getenv("LLAMA_GREEDY_LOG"));
    static bool keep = false;  // a CONT line continues the line before it
    if (level != GGML_LOG_LEVEL_CONT) {
        keep = all || level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN || std::strstr(text, "offload") ||
               std::strstr(text, "flash_attn") || std::strstr(text, "using device");
    }
    if (keep) {
        std::fputs(text, stderr);
    }
}

static bool ask_nothing(ggml_tensor *, bool, void *) { return false; }

static int fail(const char * what) {
    std::fprintf(stderr, "llama_greedy: %s\n", what);
    return 1;
}

// one llama_decode of tokens at positions pos0.., logits for the last token only (LlamaSession.decode)
static bool decode(llama_context * ctx, const llama_token * tokens, int n, int pos0) {
    llama_batch b = llama_batch_init(n, 0, 1);
    b.n_tokens = n;
    for (int i = 0; i < n; i++) {
        b.token[i]     = tokens[i];
        b.pos[i]       = pos0 + i;
        b.n_seq_id[i]  = 1;
        b.seq_id[i][0] = 0;
        b.logits[i]    = i == n - 1;
    }
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) {
        std::fprintf(stderr, "llama_greedy: llama_decode failed with status %d (positions %d..%d)\n", rc, pos0,
                     pos0 + n - 1);
    }
    return rc == 0;
}

int main(int argc, char ** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s MODEL N_GPU_LAYERS N_CTX N_BATCH N_PREDICT PROMPT_IDS_FILE [kqv=0|1] [cb=0|1]\n",
                     argv[0]);
        return 2;
    }
    const char * path     = argv[1];
    const int    ngl      = std::atoi(argv[2]);
    const int    n_ctx    = std::atoi(argv[3]);
    const int    n_batch  = std::atoi(argv[4]);
    const int    n_pred   = std::atoi(argv[5]);
    int          kqv      = ngl > 0;
    int          cb       = 1;
    for (int i = 7; i < argc; i++) {
        if (std::strncmp(argv[i], "kqv=", 4) == 0) {
            kqv = std::atoi(argv[i] + 4);
        } else if (std::strncmp(argv[i], "cb=", 3) == 0) {
            cb = std::atoi(argv[i] + 3);
        } else {
            return fail((std::string("unknown option ") + argv[i]).c_str());
        }
    }
    if (n_ctx < 1 || n_batch < 1 || n_batch > n_ctx || n_pred < 0) {
        return fail("need 1 <= N_BATCH <= N_CTX and N_PREDICT >= 0");
    }
    std::vector<llama_token> prompt;
    {
        std::ifstream f(argv[6]);
        if (!f) {
            return fail((std::string("cannot read ") + argv[6]).c_str());
        }
        long t;
        while (f >> t) {
            prompt.push_back((llama_token) t);
        }
        if (!f.eof()) {
            return fail((std::string(argv[6]) + ": not whitespace-separated token ids").c_str());
        }
    }
    if (prompt.empty() || (int) prompt.size() + n_pred - 1 > n_ctx) {
        return fail("the prompt is empty, or the prompt and the generated tokens do not fit N_CTX");
    }

    llama_log_set(on_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers       = ngl;
    mp.use_extra_bufts    = false;
    ggml_backend_dev_t no_devices[1] = { nullptr };
    if (ngl == 0) {
        mp.devices = no_devices;  // the CPU backend only, even in a build with CUDA
    }
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        return fail("cannot load the model");
    }
    const llama_vocab * vocab   = llama_model_get_vocab(model);
    const int           n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx                = n_ctx;
    cp.n_batch              = n_batch;
    cp.n_ubatch             = n_batch;
    cp.n_seq_max            = 1;
    const unsigned cores    = std::thread::hardware_concurrency();
    cp.n_threads = cp.n_threads_batch = (int) std::max(1u, std::min(4u, cores ? cores : 1u));
    cp.flash_attn_type                = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.type_k                         = GGML_TYPE_F16;
    cp.type_v                         = GGML_TYPE_F16;
    cp.cb_eval                        = cb ? ask_nothing : nullptr;
    cp.cb_eval_user_data              = nullptr;
    cp.no_perf                        = true;
    cp.offload_kqv                    = kqv != 0;
    if (ngl == 0) {
        cp.op_offload = false;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        llama_model_free(model);
        return fail("cannot create the context");
    }

    std::printf("# model %s\n# n_gpu_layers %d, n_ctx %d, n_batch = n_ubatch %d, n_threads %d, flash_attn enabled, "
                "kv f16, offload_kqv %d, op_offload %d, eval callback %d, prompt %zu tokens, n_predict %d\n",
                path, ngl, n_ctx, n_batch, cp.n_threads, (int) cp.offload_kqv, (int) cp.op_offload, cb, prompt.size(),
                n_pred);
    std::printf("# system: %s\n", llama_print_system_info());

    const int n = (int) prompt.size();
    int       pos = 0;
    bool      ok  = true;
    while (ok && n - pos >= n_batch && n_batch > 1) {
        ok = decode(ctx, prompt.data() + pos, n_batch, pos);
        pos += n_batch;
    }
    for (; ok && pos < n; pos++) {
        ok = decode(ctx, prompt.data() + pos, 1, pos);
    }
    for (int i = 0; ok && i < n_pred; i++) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (!logits) {
            ok = false;
            break;
        }
        int top = 0, second = -1;
        for (int k = 1; k < n_vocab; k++) {  // strict '>': the first index of a maximum wins
            if (logits[k] > logits[top]) {
                second = top;
                top    = k;
            } else if (second < 0 || logits[k] > logits[second]) {
                second = k;
            }
        }
        std::printf("%d %d %.6f %d %.6f\n", i, top, logits[top], second, second >= 0 ? logits[second] : 0.0f);
        std::fflush(stdout);
        if (i + 1 < n_pred) {
            const llama_token t = top;
            ok                  = decode(ctx, &t, 1, pos);
            pos++;
        }
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return ok ? 0 : 1;
}
