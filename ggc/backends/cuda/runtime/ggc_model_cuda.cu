// The CUDA runtime of a generated program: the C API of ggc_model.h over one cudaMalloc'd arena.
//
// Arena offsets below GGC_HOST_SIZE are weights kept in pinned, mapped host memory (the token
// embedding, which only GET_ROWS reads): the device allocation holds [GGC_HOST_SIZE, GGC_ARENA_SIZE)
// and `arena` is its base moved down by GGC_HOST_SIZE, so arena + offset is right for every device
// tensor, and the node table points host tensors at the host copy.
//
// A graph's kernel groups are recorded once into a CUDA graph and replayed. The number of KV
// cells attention reads (n_kv) is a run-time value: it is rounded up to a multiple of 256 and
// each value gets its own recorded graph, as llama.cpp rebuilds its graph when n_kv grows.
//
// Host <-> arena copies of a step (inputs in, logits out) go through one pinned staging buffer and
// the program's own stream: pageable cudaMemcpy of a 128k-vocabulary logits row cost a decode step
// more than its attention did, and copies on the legacy stream were not ordered with the kernels.
//
// A program of several ranks (GGC_RANKS > 1, tensor parallelism) is built with GGC_NCCL (make
// NCCL=1) and runs as one process a GPU on one host: each process learns its rank from GGC_RANK
// and GGC_RANKS (or Open MPI's or PMI's variables), takes GPU local rank, loads its share of the
// split weights, and joins the others in an NCCL communicator whose id rank 0 writes to the file
// that GGC_NCCL_ID names (`ggc run --ranks` and `ggc verify --ranks` set all of these). The
// kernels' ALL_REDUCE and ALL_GATHER then queue NCCL collectives on the program's stream, and they
// are recorded into its CUDA graphs with the kernels. NVLink multicast (NVLS) stays off.
#include <cuda_runtime.h>
#ifdef GGC_NCCL
#include <nccl.h>
#include <unistd.h>
#endif

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ggc_cuda.cuh"
#include "ggc_program.h"

namespace {

constexpr int kMaxGraphs = 16;
constexpr int kMaxExecs = 64;  // recorded graphs per program graph (n_kv values)
constexpr int64_t kKvPad = 256;
constexpr size_t kStageMin = size_t(1) << 20;   // pinned staging: grown to the largest copy up to...
constexpr size_t kStageMax = size_t(64) << 20;  // ...this; larger copies (verify dumps) go unstaged
constexpr int kArgmaxBlocks = 128, kArgmaxThreads = 256;

struct ArgmaxPair {
    float v;
    int64_t i;  // -1: none yet
};

thread_local char g_last_error[512] = "";

struct RecordedGraph {
    int64_t n_kv;
    cudaGraphExec_t exec;
};

}  // namespace

struct ggc_model {
    char *arena = nullptr;  // base of the arena's offsets: device + GGC_HOST_SIZE is offset GGC_HOST_SIZE
    char *device = nullptr;  // the device allocation, [GGC_HOST_SIZE, GGC_ARENA_SIZE)
    char *host = nullptr;    // pinned host memory (device-mapped), [0, GGC_HOST_SIZE)
    ggc_node *nodes[kMaxGraphs] = {};
    ggc_cuda_ctx ctx = {};
    RecordedGraph recorded[kMaxGraphs][kMaxExecs] = {};
    int n_recorded[kMaxGraphs] = {};
    int64_t n_kv = 0;
    cudaEvent_t ev_start = nullptr, ev_stop = nullptr;  // around the last graph replay
    float last_ms = 0.0f;
    int64_t *argmax_out = nullptr;  // device: ggc_model_argmax's result and per-block pairs
    // ggc_model_queue_graph_argmax: a ring of queued runs, each with its pinned result and events
    int64_t *q_index = nullptr;  // pinned, GGC_MAX_QUEUED
    cudaEvent_t q_start[GGC_MAX_QUEUED] = {}, q_stop[GGC_MAX_QUEUED] = {}, q_done[GGC_MAX_QUEUED] = {};
    int q_head = 0, q_count = 0;
    char *stage = nullptr;  // pinned host memory
    size_t stage_size = 0, stage_used = 0;  // bytes queued since the stream last went idle
    char error[512] = "";
    int rank = 0;
#ifdef GGC_NCCL
    ncclComm_t comm = nullptr;
#endif
};

static int set_error(char *dst, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, 512, fmt, ap);
    va_end(ap);
    return -1;
}

#define CUDA_OR_FAIL(m, call)                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) return set_error((m)->error, "%s: %s", #call, cudaGetErrorString(e_)); \
    } while (0)

// where arena offset `offset` lives, as the GPU addresses it
static char *at(const ggc_model *m, size_t offset) {
    return offset < GGC_HOST_SIZE ? m->host + offset : m->arena + offset;
}

static void fill_tensor(ggc_tensor *t, const ggc_tensor_info *info, const ggc_model *m) {
    t->data = at(m, info->offset);
    t->type = (ggc_type)info->type;
    for (int i = 0; i < 4; i++) {
        t->ne[i] = info->ne[i];
        t->nb[i] = info->nb[i];
    }
}

static bool valid_graph(int g) { return g >= 0 && g < GGC_N_GRAPHS; }

// An integer from the first of these environment variables that is set; -1 if none is.
static int env_int(const char *a, const char *b, const char *c) {
    for (const char *name : {a, b, c}) {
        const char *v = name ? getenv(name) : nullptr;
        if (v && *v) return atoi(v);
    }
    return -1;
}

// This process's rank and its GPU (the rank on this host), from the launcher's environment: -1
// with g_last_error set when it does not fit the program.
static int find_rank(int *local) {
    const int rank = env_int("GGC_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK");
    const int size = env_int("GGC_RANKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE");
    *local = 0;
    if (GGC_RANKS == 1) return 0;  // a one-rank program ignores a launcher's variables
    if (rank < 0 || size != GGC_RANKS)
        return set_error(g_last_error,
                         "this program is built for %d ranks: start it with ggc run/verify --ranks %d, or set "
                         "GGC_RANK (0..%d), GGC_RANKS=%d and GGC_NCCL_ID (a file path shared by the ranks) in "
                         "each process (found rank %d of %d)",
                         GGC_RANKS, GGC_RANKS, GGC_RANKS - 1, GGC_RANKS, rank, size);
    const int l = env_int("GGC_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID");
    *local = l >= 0 ? l : rank;
    return rank;
}

#ifdef GGC_NCCL
// the first NCCL error a collective met (they run inside the program's replay: checked after it)
static ncclResult_t g_nccl_error = ncclSuccess;
static ncclComm_t g_comm = nullptr;  // the live program's communicator, for the hooks

static void all_reduce_nccl(const float *src, float *dst, int64_t n, cudaStream_t s) {
    // ring and tree all-reduce both compute each element once and send it to every rank: every
    // rank gets the same bits, so they all sample the same token
    const ncclResult_t r = ncclAllReduce(src, dst, (size_t)n, ncclFloat32, ncclSum, g_comm, s);
    if (r != ncclSuccess && g_nccl_error == ncclSuccess) g_nccl_error = r;
}

static void all_gather_nccl(const void *part, size_t bytes, void *all, cudaStream_t s) {
    const ncclResult_t r = ncclAllGather(part, all, bytes, ncclUint8, g_comm, s);
    if (r != ncclSuccess && g_nccl_error == ncclSuccess) g_nccl_error = r;
}

// The communicator's id, from rank 0 to the others through the file GGC_NCCL_ID names: rank 0
// writes it whole (to a temporary name, then renamed), the others wait for it to appear.
static int exchange_id(int rank, ncclUniqueId *id) {
    if (GGC_RANKS == 1) {  // a communicator of one (GGC_NCCL_ONE): nobody to hand the id to
        const ncclResult_t r = ncclGetUniqueId(id);
        return r == ncclSuccess ? 0 : set_error(g_last_error, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    const char *path = getenv("GGC_NCCL_ID");
    if (!path || !*path)
        return set_error(g_last_error, "GGC_NCCL_ID is not set: the ranks of a %d-rank program need a file path, "
                         "the same in each, through which rank 0 hands out the NCCL communicator's id", GGC_RANKS);
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(id);
        if (r != ncclSuccess) return set_error(g_last_error, "ncclGetUniqueId: %s", ncclGetErrorString(r));
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
        FILE *f = fopen(tmp, "wb");
        const bool ok = f && fwrite(id, sizeof *id, 1, f) == 1;
        if (f && fclose(f) != 0) return set_error(g_last_error, "%s: could not write the NCCL id", tmp);
        if (!ok || rename(tmp, path) != 0) return set_error(g_last_error, "%s: could not write the NCCL id", path);
        return 0;
    }
    const char *t = getenv("GGC_NCCL_TIMEOUT");
    const double limit_s = t && *t ? atof(t) : 600.0;  // the other ranks capture and load as this one does
    for (double waited = 0; waited < limit_s; waited += 0.01) {
        FILE *f = fopen(path, "rb");
        if (f) {
            const bool ok = fread(id, sizeof *id, 1, f) == 1;
            fclose(f);
            if (ok) return 0;
        }
        usleep(10000);
    }
    return set_error(g_last_error, "rank %d waited %.0f s for rank 0 to write the NCCL id to %s", rank, limit_s, path);
}

// A one-rank program uses no NCCL, unless GGC_NCCL_ONE=1 asks for a communicator of one: the
// collectives then run through NCCL (copies), which checks this path on a machine of one GPU.
static int nccl_start(ggc_model *m) {
    const char *one = getenv("GGC_NCCL_ONE");
    if (GGC_RANKS == 1 && !(one && strcmp(one, "1") == 0)) return 0;
    setenv("NCCL_NVLS_ENABLE", "0", 1);  // no NVLink multicast: it can take a shared host's GPUs out of service
    ncclUniqueId id;
    if (exchange_id(m->rank, &id) != 0) return -1;
    const ncclResult_t r = ncclCommInitRank(&m->comm, GGC_RANKS, id, m->rank);
    if (r != ncclSuccess)
        return set_error(g_last_error, "rank %d: ncclCommInitRank of %d ranks: %s", m->rank, GGC_RANKS,
                         ncclGetErrorString(r));
    g_comm = m->comm;
    g_nccl_error = ncclSuccess;
    ggc_cuda_all_reduce_hook = all_reduce_nccl;
    ggc_cuda_all_gather_hook = all_gather_nccl;
    // one of each collective now, outside any capture: NCCL connects the ranks lazily, at first use
    float *scratch = reinterpret_cast<float *>(m->argmax_out);  // 8 + 128 x 16 bytes, free until an argmax
    all_reduce_nccl(scratch, scratch, 1, m->ctx.stream);
    all_gather_nccl(scratch, sizeof(float), scratch + 1, m->ctx.stream);
    const cudaError_t e = cudaStreamSynchronize(m->ctx.stream);
    if (g_nccl_error != ncclSuccess || e != cudaSuccess)
        return set_error(g_last_error, "rank %d: the first all-reduce of %d ranks failed: %s", m->rank, GGC_RANKS,
                         g_nccl_error != ncclSuccess ? ncclGetErrorString(g_nccl_error) : cudaGetErrorString(e));
    return 0;
}

static void nccl_stop(ggc_model *m) {
    if (!m->comm) return;
    if (g_comm == m->comm) {
        g_comm = nullptr;
        ggc_cuda_all_reduce_hook = nullptr;
        ggc_cuda_all_gather_hook = nullptr;
    }
    ncclCommDestroy(m->comm);
    m->comm = nullptr;
}

static int nccl_check(ggc_model *m) {
    if (g_nccl_error == ncclSuccess) return 0;
    return set_error(m->error, "NCCL: %s", ncclGetErrorString(g_nccl_error));
}
#else
static int nccl_start(ggc_model *m) {
    (void)m;
    if (GGC_RANKS == 1) return 0;
    return set_error(g_last_error, "this program is built for %d ranks but without NCCL: rebuild it with make NCCL=1 "
                     "NCCL_HOME=... (ggc run/verify --ranks do that)", GGC_RANKS);
}
static void nccl_stop(ggc_model *m) { (void)m; }
static int nccl_check(ggc_model *m) {
    (void)m;
    return 0;
}
#endif

extern "C" {

const char *ggc_last_error(void) { return g_last_error; }
const char *ggc_model_error(const ggc_model *m) { return m->error; }

ggc_model *ggc_model_create(void) {
    if (GGC_N_GRAPHS > kMaxGraphs) {
        set_error(g_last_error, "too many graphs");
        return nullptr;
    }
    int n_dev = 0, local = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        set_error(g_last_error, "no CUDA device");
        return nullptr;
    }
    const int rank = find_rank(&local);
    if (rank < 0) return nullptr;
    if (GGC_RANKS > 1 && local >= n_dev) {  // NCCL refuses two ranks on one GPU
        set_error(g_last_error, "rank %d needs GPU %d, but this machine has %d: a %d-rank program runs one rank a GPU",
                  rank, local, n_dev, GGC_RANKS);
        return nullptr;
    }
    if (cudaSetDevice(local) != cudaSuccess) {
        set_error(g_last_error, "cudaSetDevice(%d) failed", local);
        return nullptr;
    }
    ggc_model *m = new (std::nothrow) ggc_model();
    if (!m) return nullptr;
    m->rank = rank;
    cudaDeviceProp prop;
    size_t work = 0;
    if (cudaGetDeviceProperties(&prop, local) != cudaSuccess) goto fail;
    m->ctx.n_sm = prop.multiProcessorCount;
    if (cudaMalloc(&m->device, GGC_ARENA_SIZE > GGC_HOST_SIZE ? GGC_ARENA_SIZE - GGC_HOST_SIZE : 1) != cudaSuccess) {
        set_error(g_last_error, "cudaMalloc of the %zu-byte arena failed (out of GPU memory?)",
                  GGC_ARENA_SIZE - GGC_HOST_SIZE);
        goto fail;
    }
    m->arena = m->device - GGC_HOST_SIZE;
    if (cudaMemset(m->device, 0, GGC_ARENA_SIZE - GGC_HOST_SIZE) != cudaSuccess) goto fail;
    if (GGC_HOST_SIZE) {
        void *dev = nullptr;
        if (cudaHostAlloc(&m->host, GGC_HOST_SIZE, cudaHostAllocMapped) != cudaSuccess ||
            cudaHostGetDevicePointer(&dev, m->host, 0) != cudaSuccess || dev != m->host) {
            // unified addressing gives one pointer for both sides; without it the node table would differ
            set_error(g_last_error, "cudaHostAlloc of %zu bytes of mapped host memory for the embedding failed",
                      GGC_HOST_SIZE);
            goto fail;
        }
    }
    for (int g = 0; g < GGC_N_GRAPHS; g++) {
        const ggc_graph_desc *G = &GGC_GRAPHS[g];
        m->nodes[g] = static_cast<ggc_node *>(calloc(G->n_nodes ? (size_t)G->n_nodes : 1, sizeof(ggc_node)));
        if (!m->nodes[g]) goto fail;
        for (int i = 0; i < G->n_nodes; i++) {
            const ggc_node_desc *d = &G->nodes[i];
            fill_tensor(&m->nodes[g][i].dst, &G->tensors[d->dst], m);
            for (int j = 0; j < GGC_MAX_SRC; j++)
                if (d->src[j] >= 0) fill_tensor(&m->nodes[g][i].src[j], &G->tensors[d->src[j]], m);
            memcpy(m->nodes[g][i].op_params, d->op_params, sizeof d->op_params);
        }
        size_t w = G->work_size(m->nodes[g]);
        if (w > work) work = w;
    }
    m->ctx.work_size = work;
    if (work && cudaMalloc(&m->ctx.work, work) != cudaSuccess) {
        set_error(g_last_error, "cudaMalloc of %zu bytes of kernel work memory failed", work);
        goto fail;
    }
    if (cudaStreamCreateWithFlags(&m->ctx.stream, cudaStreamNonBlocking) != cudaSuccess) goto fail;
    // the result, then the per-block pairs of ggc_model_argmax
    if (cudaMalloc(&m->argmax_out, sizeof(int64_t) + kArgmaxBlocks * sizeof(ArgmaxPair)) != cudaSuccess) goto fail;
    if (cudaEventCreate(&m->ev_start) != cudaSuccess || cudaEventCreate(&m->ev_stop) != cudaSuccess) goto fail;
    if (cudaMallocHost(&m->q_index, GGC_MAX_QUEUED * sizeof(int64_t)) != cudaSuccess) goto fail;
    for (int i = 0; i < GGC_MAX_QUEUED; i++)
        if (cudaEventCreate(&m->q_start[i]) != cudaSuccess || cudaEventCreate(&m->q_stop[i]) != cudaSuccess ||
            cudaEventCreateWithFlags(&m->q_done[i], cudaEventDisableTiming) != cudaSuccess)
            goto fail;
    if (nccl_start(m) != 0) goto fail;
    return m;
fail:
    if (!g_last_error[0]) set_error(g_last_error, "%s", cudaGetErrorString(cudaGetLastError()));
    ggc_model_free(m);
    return nullptr;
}

void ggc_model_free(ggc_model *m) {
    if (!m) return;
    nccl_stop(m);
    for (int g = 0; g < kMaxGraphs; g++) {
        for (int i = 0; i < m->n_recorded[g]; i++) cudaGraphExecDestroy(m->recorded[g][i].exec);
        free(m->nodes[g]);
    }
    if (m->ev_start) cudaEventDestroy(m->ev_start);
    if (m->ev_stop) cudaEventDestroy(m->ev_stop);
    for (int i = 0; i < GGC_MAX_QUEUED; i++) {
        if (m->q_start[i]) cudaEventDestroy(m->q_start[i]);
        if (m->q_stop[i]) cudaEventDestroy(m->q_stop[i]);
        if (m->q_done[i]) cudaEventDestroy(m->q_done[i]);
    }
    if (m->q_index) cudaFreeHost(m->q_index);
    if (m->ctx.stream) cudaStreamDestroy(m->ctx.stream);
    if (m->stage) cudaFreeHost(m->stage);
    cudaFree(m->argmax_out);
    cudaFree(m->ctx.work);
    cudaFree(m->device);
    if (m->host) cudaFreeHost(m->host);
    delete m;
}

int ggc_model_load_weights(ggc_model *m, const char *path, char *err, size_t err_len) {
    // the weights region starts at offset 0: stage it in host memory, then one copy to the GPU
    char *host = static_cast<char *>(malloc(GGC_STATE_OFFSET ? GGC_STATE_OFFSET : 1));
    if (!host) {
        snprintf(err, err_len, "%s: out of host memory for %zu bytes of weights", path, GGC_STATE_OFFSET);
        return -1;
    }
    int rc = ggc_gguf_load(path, host, m->rank, err, err_len);
    if (rc == 0 && GGC_HOST_SIZE) memcpy(m->host, host, GGC_HOST_SIZE);
    if (rc == 0 && cudaMemcpy(m->device, host + GGC_HOST_SIZE, GGC_STATE_OFFSET - GGC_HOST_SIZE,
                              cudaMemcpyHostToDevice) != cudaSuccess) {
        snprintf(err, err_len, "%s: copying the weights to the GPU failed", path);
        rc = -1;
    }
    free(host);
    return rc;
}

// n bytes of the pinned staging buffer, free to fill: null when n is too large to stage. Waits for
// the stream only when the bytes queued since it last went idle would not fit.
static char *stage(ggc_model *m, size_t n) {
    if (n > kStageMax) return nullptr;
    const size_t need = (n + 255) & ~size_t(255);
    if (m->stage_used + need > m->stage_size) {
        if (cudaStreamSynchronize(m->ctx.stream) != cudaSuccess) return nullptr;
        m->stage_used = 0;
        if (need > m->stage_size) {
            size_t size = m->stage_size ? m->stage_size : kStageMin;
            while (size < need) size *= 2;
            if (m->stage) cudaFreeHost(m->stage);
            m->stage_size = 0;
            if (cudaMallocHost(&m->stage, size) != cudaSuccess) {
                m->stage = nullptr;
                return nullptr;
            }
            m->stage_size = size;
        }
    }
    char *p = m->stage + m->stage_used;
    m->stage_used += need;
    return p;
}

// the host-resident weights: plain copies once the stream is idle (nothing else writes them)
static int host_copy(ggc_model *m, size_t offset, void *dst, const void *src, size_t n) {
    if (offset + n > GGC_HOST_SIZE) return set_error(m->error, "a copy across the host and device parts of the arena");
    CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
    memcpy(dst, src, n);
    return 0;
}

int ggc_model_write(ggc_model *m, size_t offset, const void *src, size_t n) {
    if (offset > GGC_ARENA_SIZE || n > GGC_ARENA_SIZE - offset) return set_error(m->error, "write out of the arena");
    if (offset < GGC_HOST_SIZE) return host_copy(m, offset, m->host + offset, src, n);
    char *p = stage(m, n);
    if (!p) {  // too large to stage: from pageable memory, still in stream order
        CUDA_OR_FAIL(m, cudaMemcpyAsync(m->arena + offset, src, n, cudaMemcpyHostToDevice, m->ctx.stream));
        CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
        return 0;
    }
    memcpy(p, src, n);  // the caller's buffer is free again on return; the copy runs in stream order
    CUDA_OR_FAIL(m, cudaMemcpyAsync(m->arena + offset, p, n, cudaMemcpyHostToDevice, m->ctx.stream));
    return 0;
}

int ggc_model_read(ggc_model *m, size_t offset, void *dst, size_t n) {
    if (offset > GGC_ARENA_SIZE || n > GGC_ARENA_SIZE - offset) return set_error(m->error, "read out of the arena");
    if (offset < GGC_HOST_SIZE) return host_copy(m, offset, dst, m->host + offset, n);
    char *p = stage(m, n);
    if (!p) {
        CUDA_OR_FAIL(m, cudaMemcpyAsync(dst, m->arena + offset, n, cudaMemcpyDeviceToHost, m->ctx.stream));
        CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
        return 0;
    }
    CUDA_OR_FAIL(m, cudaMemcpyAsync(p, m->arena + offset, n, cudaMemcpyDeviceToHost, m->ctx.stream));
    CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
    m->stage_used = 0;
    memcpy(dst, p, n);
    return 0;
}

// Argmax in two launches: kArgmaxBlocks blocks each reduce a contiguous slice to (value, index), then
// one block reduces those. Ties resolve to the lower index, as a left-to-right scan would; NaN
// never wins. (One block over a 128k vocabulary waited on ~125 dependent loads a thread: 90 us.)

__device__ ArgmaxPair argmax_better(ArgmaxPair a, ArgmaxPair b) {
    if (b.i < 0) return a;
    if (a.i < 0 || b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
    return a;
}

__device__ ArgmaxPair argmax_block(ArgmaxPair p) {
    __shared__ float sv[kArgmaxThreads];
    __shared__ int64_t si[kArgmaxThreads];
    sv[threadIdx.x] = p.v;
    si[threadIdx.x] = p.i;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const ArgmaxPair q = argmax_better({sv[threadIdx.x], si[threadIdx.x]}, {sv[threadIdx.x + s], si[threadIdx.x + s]});
            sv[threadIdx.x] = q.v;
            si[threadIdx.x] = q.i;
        }
        __syncthreads();
    }
    return {sv[0], si[0]};
}

__global__ void argmax_slices(const float *x, int64_t n, ArgmaxPair *part) {
    GGC_PDL_BEGIN();
    const int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = min(n, lo + per);
    ArgmaxPair best = {-INFINITY, -1};
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float v = x[i];
        if (v == v) best = argmax_better(best, {v, i});
    }
    best = argmax_block(best);
    if (threadIdx.x == 0) part[blockIdx.x] = best;
}

__global__ void argmax_final(const ArgmaxPair *part, int nparts, int64_t *out) {
    GGC_PDL_BEGIN();
    const ArgmaxPair best = argmax_block(threadIdx.x < nparts ? part[threadIdx.x] : ArgmaxPair{-INFINITY, -1});
    if (threadIdx.x == 0) *out = best.i < 0 ? 0 : best.i;
}

// queue the argmax of n f32 at offset, its index copied into pinned staging (*out)
static int queue_argmax(ggc_model *m, size_t offset, int64_t n, char **out) {
    if (n <= 0 || offset % sizeof(float) || offset > GGC_ARENA_SIZE || (size_t)n > (GGC_ARENA_SIZE - offset) / 4)
        return set_error(m->error, "argmax out of the arena");
    char *p = out ? stage(m, sizeof(int64_t)) : nullptr;
    if (out && !p) return set_error(m->error, "out of pinned host memory");
    ArgmaxPair *part = reinterpret_cast<ArgmaxPair *>(m->argmax_out + 1);
    ggc_launch(argmax_slices, kArgmaxBlocks, kArgmaxThreads, 0, m->ctx.stream, (const float *)at(m, offset), n, part);
    ggc_launch(argmax_final, 1, kArgmaxThreads, 0, m->ctx.stream, part, kArgmaxBlocks, m->argmax_out);
    if (out) {
        CUDA_OR_FAIL(m, cudaMemcpyAsync(p, m->argmax_out, sizeof(int64_t), cudaMemcpyDeviceToHost, m->ctx.stream));
        *out = p;
    }
    return 0;
}

int ggc_model_argmax(ggc_model *m, size_t offset, int64_t n, int64_t *index) {
    char *p = nullptr;
    if (queue_argmax(m, offset, n, &p) != 0) return -1;
    CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
    m->stage_used = 0;
    memcpy(index, p, sizeof(int64_t));
    return 0;
}

void ggc_model_set_n_kv(ggc_model *m, int64_t n_kv) {
    m->n_kv = n_kv <= 0 ? 0 : (n_kv + kKvPad - 1) / kKvPad * kKvPad;
}

int ggc_model_rank(const ggc_model *m) { return m->rank; }

int ggc_model_n_graphs(void) { return GGC_N_GRAPHS; }
const char *ggc_model_graph_name(int g) { return valid_graph(g) ? GGC_GRAPHS[g].name : nullptr; }
int ggc_model_find_graph(const char *name) {
    for (int g = 0; g < GGC_N_GRAPHS; g++)
        if (strcmp(GGC_GRAPHS[g].name, name) == 0) return g;
    return -1;
}

static void *find(ggc_model *m, int g, const char *name, int k, int role) {
    if (!valid_graph(g)) return nullptr;
    for (int i = 0; i < GGC_GRAPHS[g].n_tensors; i++) {
        const ggc_tensor_info *t = &GGC_GRAPHS[g].tensors[i];
        if (t->role == role && strcmp(t->name, name) == 0 && k-- == 0) return at(m, t->offset);
    }
    return nullptr;
}

// device pointers: copy with ggc_model_write / ggc_model_read
void *ggc_model_graph_input(ggc_model *m, int g, const char *name, int k) { return find(m, g, name, k, GGC_ROLE_INPUT); }
const void *ggc_model_graph_output(ggc_model *m, int g, const char *name, int k) {
    return find(m, g, name, k, GGC_ROLE_OUTPUT);
}
void *ggc_model_input(ggc_model *m, const char *name, int k) { return find(m, 0, name, k, GGC_ROLE_INPUT); }
const void *ggc_model_output(ggc_model *m, const char *name, int k) { return find(m, 0, name, k, GGC_ROLE_OUTPUT); }

static int record(ggc_model *m, int g, cudaGraphExec_t *exec) {
    cudaGraph_t graph;
    m->ctx.n_kv = m->n_kv;
    CUDA_OR_FAIL(m, cudaStreamBeginCapture(m->ctx.stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < GGC_GRAPHS[g].n_groups; i++) GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->ctx, m->arena);
    CUDA_OR_FAIL(m, cudaStreamEndCapture(m->ctx.stream, &graph));
    if (nccl_check(m) != 0) {
        cudaGraphDestroy(graph);
        return -1;
    }
    cudaError_t e = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return set_error(m->error, "cudaGraphInstantiate: %s", cudaGetErrorString(e));
    return 0;
}

// queue graph g's recorded replay (recorded first for a new n_kv), between the timing events
static int launch(ggc_model *m, int g, cudaEvent_t start, cudaEvent_t stop) {
    if (!valid_graph(g)) return set_error(m->error, "no graph %d", g);
    cudaGraphExec_t exec = nullptr;
    for (int i = 0; i < m->n_recorded[g]; i++)
        if (m->recorded[g][i].n_kv == m->n_kv) exec = m->recorded[g][i].exec;
    if (!exec) {
        if (m->n_recorded[g] == kMaxExecs) return set_error(m->error, "too many n_kv values");
        if (record(m, g, &exec) != 0) return -1;
        m->recorded[g][m->n_recorded[g]++] = {m->n_kv, exec};
    }
    CUDA_OR_FAIL(m, cudaEventRecord(start, m->ctx.stream));
    CUDA_OR_FAIL(m, cudaGraphLaunch(exec, m->ctx.stream));
    CUDA_OR_FAIL(m, cudaEventRecord(stop, m->ctx.stream));
    return 0;
}

// wait for everything queued; the replay's device time
static int finish(ggc_model *m) {
    CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
    m->stage_used = 0;
    CUDA_OR_FAIL(m, cudaEventElapsedTime(&m->last_ms, m->ev_start, m->ev_stop));
    return 0;
}

int ggc_model_run_graph(ggc_model *m, int g) { return launch(m, g, m->ev_start, m->ev_stop) != 0 ? -1 : finish(m); }

int ggc_model_run_graph_argmax(ggc_model *m, int g, size_t offset, int64_t n, int64_t *index) {
    char *p = nullptr;
    if (launch(m, g, m->ev_start, m->ev_stop) != 0 || queue_argmax(m, offset, n, &p) != 0) return -1;
    if (finish(m) != 0) return -1;
    memcpy(index, p, sizeof(int64_t));  // p's bytes stand until the next staged copy
    return 0;
}

// A queued step: [the last argmax's index into the token input, device to device], the replay, the
// argmax, its index into the slot's pinned word, an event to wait on. Nothing waits here, so the
// host fills the next step's inputs while this one runs.
int ggc_model_queue_graph_argmax(ggc_model *m, int g, size_t offset, int64_t n, size_t feed_offset) {
    if (m->q_count == GGC_MAX_QUEUED) return set_error(m->error, "%d runs queued already", GGC_MAX_QUEUED);
    const int slot = (m->q_head + m->q_count) % GGC_MAX_QUEUED;
    if (feed_offset != SIZE_MAX) {
        if (feed_offset < GGC_HOST_SIZE || feed_offset > GGC_ARENA_SIZE - sizeof(int32_t))
            return set_error(m->error, "token input out of the arena");
        // the index is an int64 in little-endian order: its first 4 bytes are the int32 token
        CUDA_OR_FAIL(m, cudaMemcpyAsync(at(m, feed_offset), m->argmax_out, sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                        m->ctx.stream));
    }
    if (launch(m, g, m->q_start[slot], m->q_stop[slot]) != 0 || queue_argmax(m, offset, n, nullptr) != 0) return -1;
    CUDA_OR_FAIL(m, cudaMemcpyAsync(&m->q_index[slot], m->argmax_out, sizeof(int64_t), cudaMemcpyDeviceToHost,
                                    m->ctx.stream));
    CUDA_OR_FAIL(m, cudaEventRecord(m->q_done[slot], m->ctx.stream));
    m->q_count++;
    return 0;
}

int ggc_model_argmax_result(ggc_model *m, int64_t *index) {
    if (m->q_count == 0) return set_error(m->error, "no queued run");
    const int slot = m->q_head;
    CUDA_OR_FAIL(m, cudaEventSynchronize(m->q_done[slot]));
    *index = m->q_index[slot];
    CUDA_OR_FAIL(m, cudaEventElapsedTime(&m->last_ms, m->q_start[slot], m->q_stop[slot]));
    m->q_head = (m->q_head + 1) % GGC_MAX_QUEUED;
    m->q_count--;
    return 0;
}

double ggc_model_last_run_ms(const ggc_model *m) { return m->last_ms; }

int ggc_model_run(ggc_model *m) { return ggc_model_run_graph(m, 0); }

int ggc_model_run_group(ggc_model *m, int g, int i) {
    if (!valid_graph(g) || i < 0 || i >= GGC_GRAPHS[g].n_groups) return set_error(m->error, "no group %d", i);
    m->ctx.n_kv = m->n_kv;
    GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->ctx, m->arena);
    CUDA_OR_FAIL(m, cudaGetLastError());
    CUDA_OR_FAIL(m, cudaStreamSynchronize(m->ctx.stream));
    return nccl_check(m);
}

// Each kernel group timed with CUDA events (launched one by one, not as a graph): ms[i] for group i.
int ggc_model_profile_graph(ggc_model *m, int g, float *ms) {
    if (!valid_graph(g)) return set_error(m->error, "no graph %d", g);
    const int n = GGC_GRAPHS[g].n_groups;
    cudaEvent_t *ev = static_cast<cudaEvent_t *>(calloc((size_t)n + 1, sizeof(cudaEvent_t)));
    if (!ev) return set_error(m->error, "out of host memory");
    int rc = 0;
    for (int i = 0; i <= n && rc == 0; i++)
        if (cudaEventCreate(&ev[i]) != cudaSuccess) rc = set_error(m->error, "cudaEventCreate failed");
    m->ctx.n_kv = m->n_kv;
    if (rc == 0) {
        cudaEventRecord(ev[0], m->ctx.stream);
        for (int i = 0; i < n; i++) {
            GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->ctx, m->arena);
            cudaEventRecord(ev[i + 1], m->ctx.stream);
        }
        cudaError_t e = cudaStreamSynchronize(m->ctx.stream);
        if (e != cudaSuccess) rc = set_error(m->error, "profiling: %s", cudaGetErrorString(e));
        for (int i = 0; i < n && rc == 0; i++) cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]);
    }
    for (int i = 0; i <= n; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    free(ev);
    return rc;
}

int ggc_model_set_threads(ggc_model *m, int n_threads) {
    (void)m;
    (void)n_threads;
    return 0;
}

void ggc_model_reset_state(ggc_model *m) {  // in stream order, so no kernel of a step can overtake it
    cudaMemsetAsync(m->arena + GGC_STATE_OFFSET, 0, GGC_STATE_SIZE, m->ctx.stream);
}
int ggc_model_n_tensors(int g) { return valid_graph(g) ? GGC_GRAPHS[g].n_tensors : 0; }
const ggc_tensor_info *ggc_model_tensor(int g, int i) {
    return valid_graph(g) && i >= 0 && i < GGC_GRAPHS[g].n_tensors ? &GGC_GRAPHS[g].tensors[i] : nullptr;
}
void *ggc_model_arena(ggc_model *m) { return m->arena; }
size_t ggc_model_arena_size(void) { return GGC_ARENA_SIZE; }
int ggc_model_n_groups(int g) { return valid_graph(g) ? GGC_GRAPHS[g].n_groups : 0; }

}  // extern "C"
