/* ggc CUDA: single-node test harness (used by ggc/backends/cuda/abi.py).
 *
 * ggc_cuda_run_node runs one kernel on host bytes: it copies every present source and the
 * destination's initial content to fresh device buffers, points a copy of the node at them, asks
 * the op's work function (if any) for scratch, calls the op on a new stream, synchronizes, and
 * copies the destination back over the host buffer. n_kv becomes ctx.n_kv (the KV cells attention
 * reads; 0 = all), as given: the harness does not round it. Errors (allocation, launch, faults)
 * come back as a nonzero return and a message; the process stays usable only for non-sticky errors.
 */
#include "ggc_cuda.cuh"

typedef void (*ggc_cuda_op_fn)(const ggc_node *, const ggc_cuda_ctx *);
typedef size_t (*ggc_cuda_work_fn)(const ggc_node *);

/* CUDA devices visible, 0 when there is no driver or no device */
extern "C" int ggc_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

/* "name (sm_XY)" of device 0, or an empty string */
extern "C" void ggc_cuda_device_name(char *out, size_t len) {
    cudaDeviceProp p;
    if (len == 0) return;
    out[0] = 0;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    snprintf(out, len, "%s (sm_%d%d)", p.name, p.major, p.minor);
}

#define GGC_PAD 256 /* bytes after each buffer: kernels may read whole 16-byte granules */

/* Run op on node (host pointers) once, or `iters` times after `warmup` runs, timing them with
 * events (ms_out: mean milliseconds per run, when iters > 0). */
static int run_node_impl(ggc_cuda_op_fn op, ggc_cuda_work_fn work_fn, ggc_node *node, const size_t *src_sizes,
                         size_t dst_size, int64_t n_kv, int warmup, int iters, float *ms_out, char *err,
                         size_t err_len, int quant_out = 0, void *work_out = nullptr, size_t work_out_size = 0) {
    cudaEvent_t ev0 = nullptr, ev1 = nullptr;
    void *dev[GGC_MAX_SRC] = {nullptr};
    void *ddst = nullptr, *dwork = nullptr;
    cudaStream_t stream = nullptr;
    ggc_node dn = *node;
    ggc_cuda_ctx ctx = {};
    size_t wsize = 0;
    cudaError_t e = cudaSuccess;
    const char *what = "";
#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        e = (call);                                                                                                    \
        if (e != cudaSuccess) {                                                                                        \
            what = #call;                                                                                              \
            goto done;                                                                                                 \
        }                                                                                                              \
    } while (0)
    TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int j = 0; j < GGC_MAX_SRC; j++) {
        if (node->src[j].data == nullptr) continue;
        TRY(cudaMalloc(&dev[j], src_sizes[j] + GGC_PAD));
        TRY(cudaMemsetAsync(dev[j], 0, src_sizes[j] + GGC_PAD, stream));
        TRY(cudaMemcpyAsync(dev[j], node->src[j].data, src_sizes[j], cudaMemcpyHostToDevice, stream));
        dn.src[j].data = dev[j];
    }
    TRY(cudaMalloc(&ddst, dst_size + GGC_PAD));
    TRY(cudaMemsetAsync(ddst, 0, dst_size + GGC_PAD, stream));
    TRY(cudaMemcpyAsync(ddst, node->dst.data, dst_size, cudaMemcpyHostToDevice, stream));
    dn.dst.data = ddst;
    /* a source that is the destination itself (in-place ops) keeps pointing at it */
    for (int j = 0; j < GGC_MAX_SRC; j++)
        if (node->src[j].data != nullptr && node->src[j].data == node->dst.data) dn.src[j].data = ddst;
    wsize = work_fn ? work_fn(&dn) : 0;
    if (wsize) TRY(cudaMalloc(&dwork, wsize + GGC_PAD));
    ctx.stream = stream;
    ctx.work = dwork;
    ctx.work_size = wsize;
    ctx.n_kv = n_kv;
    ctx.w_const = 1; /* nothing writes the sources during the call: products load weights before the PDL wait */
    ctx.quant_out = quant_out;
    {
        int dev_id = 0;
        TRY(cudaGetDevice(&dev_id));
        TRY(cudaDeviceGetAttribute(&ctx.n_sm, cudaDevAttrMultiProcessorCount, dev_id));
    }
    TRY(cudaStreamSynchronize(stream));
    if (iters > 0) {
        TRY(cudaEventCreate(&ev0));
        TRY(cudaEventCreate(&ev1));
        for (int i = 0; i < warmup; i++) op(&dn, &ctx);
        TRY(cudaEventRecord(ev0, stream));
        for (int i = 0; i < iters; i++) op(&dn, &ctx);
        TRY(cudaEventRecord(ev1, stream));
    } else {
        op(&dn, &ctx);
    }
    what = "the kernel launch";
    TRY(cudaGetLastError());
    what = "the kernel";
    TRY(cudaStreamSynchronize(stream));
    if (iters > 0) {
        float ms = 0.0f;
        TRY(cudaEventElapsedTime(&ms, ev0, ev1));
        *ms_out = ms / (float)iters;
    }
    TRY(cudaMemcpy(node->dst.data, ddst, dst_size, cudaMemcpyDeviceToHost));
    if (work_out && work_out_size) {
        what = "reading the work buffer back";
        if (work_out_size > wsize) TRY(cudaErrorInvalidValue);
        TRY(cudaMemcpy(work_out, dwork, work_out_size, cudaMemcpyDeviceToHost));
    }
done:
    if (e != cudaSuccess && err && err_len) snprintf(err, err_len, "%s: %s", what, cudaGetErrorString(e));
    for (int j = 0; j < GGC_MAX_SRC; j++)
        if (dev[j]) cudaFree(dev[j]);
    if (ddst) cudaFree(ddst);
    if (dwork) cudaFree(dwork);
    if (stream) cudaStreamDestroy(stream);
    if (ev0) cudaEventDestroy(ev0);
    if (ev1) cudaEventDestroy(ev1);
#undef TRY
    return e == cudaSuccess ? 0 : (int)e;
}

/* n_kv last, so that callers of the older signature that pad their arguments with zeros still work */
extern "C" int ggc_cuda_run_node(ggc_cuda_op_fn op, ggc_cuda_work_fn work_fn, ggc_node *node, const size_t *src_sizes,
                                 size_t dst_size, char *err, size_t err_len, int64_t n_kv) {
    return run_node_impl(op, work_fn, node, src_sizes, dst_size, n_kv, 0, 0, nullptr, err, err_len);
}

/* as ggc_cuda_run_node with the context's quant_out set (an op that also leaves its result as the
 * next product's q8a activations at the start of the work buffer), and the first work_out_size
 * bytes of the work buffer copied to work_out */
extern "C" int ggc_cuda_run_node_quant_out(ggc_cuda_op_fn op, ggc_cuda_work_fn work_fn, ggc_node *node,
                                           const size_t *src_sizes, size_t dst_size, char *err, size_t err_len,
                                           int64_t n_kv, void *work_out, size_t work_out_size) {
    return run_node_impl(op, work_fn, node, src_sizes, dst_size, n_kv, 0, 0, nullptr, err, err_len, 1, work_out,
                         work_out_size);
}

/* as ggc_cuda_run_node, timing `iters` back-to-back runs after `warmup` ones (the op, its src1
 * conversion included; not the copies): mean milliseconds per run in *ms */
extern "C" int ggc_cuda_bench_node(ggc_cuda_op_fn op, ggc_cuda_work_fn work_fn, ggc_node *node,
                                   const size_t *src_sizes, size_t dst_size, int warmup, int iters, float *ms,
                                   char *err, size_t err_len) {
    return run_node_impl(op, work_fn, node, src_sizes, dst_size, 0, warmup, iters < 1 ? 1 : iters, ms, err,
                         err_len);
}

// ---- stand-ins for a runtime's collectives (ggc_cuda_comm.cu's hooks), to test ALL_REDUCE and
// ALL_GATHER on one GPU: as if `ranks` ranks ran, rank r holding this rank's f32 values plus 100 r.
static int g_test_ranks = 1;

__global__ void test_reduce_kernel(const float *src, float *dst, int64_t n, int ranks) {
    GGC_PDL_BEGIN();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i] * ranks + 100.0f * (ranks * (ranks - 1) / 2);
}

__global__ void test_gather_kernel(const float *part, int64_t n, float *all, int ranks) {
    GGC_PDL_BEGIN();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        for (int r = 0; r < ranks; r++) all[r * n + i] = part[i] + 100.0f * r;
}

static void test_all_reduce(const float *src, float *dst, int64_t n, cudaStream_t s) {
    ggc_launch(test_reduce_kernel, (unsigned)((n + 255) / 256), 256, 0, s, src, dst, n, g_test_ranks);
}

static void test_all_gather(const void *part, size_t bytes, void *all, cudaStream_t s) {
    const int64_t n = (int64_t)(bytes / sizeof(float));
    ggc_launch(test_gather_kernel, (unsigned)((n + 255) / 256), 256, 0, s, (const float *)part, n, (float *)all,
               g_test_ranks);
}

// ranks > 1: set the hooks to the stand-ins for that many ranks; 1: unset them (one rank)
extern "C" void ggc_cuda_test_collectives(int ranks) {
    g_test_ranks = ranks;
    ggc_cuda_all_reduce_hook = ranks > 1 ? test_all_reduce : nullptr;
    ggc_cuda_all_gather_hook = ranks > 1 ? test_all_gather : nullptr;
}
