/* ggc CUDA kernel library: the common header.
 *
 * The CUDA backend uses the same node ABI as the C backend (ggc.h: ggc_tensor {data, type, ne[4],
 * nb[4]}, ggc_node {dst, src[10], op_params[16]}); the tensors of a node hold DEVICE pointers.
 * Every kernel is a host function with C linkage that launches its work on ctx->stream:
 *
 *   extern "C" void ggc_cuda_op_<op>(const ggc_node *n, const ggc_cuda_ctx *c);   e.g. ggc_cuda_op_mul_mat
 *   extern "C" void ggc_cuda_op_unary_<name>(...), ggc_cuda_op_glu_<name>(...)
 *   extern "C" size_t ggc_cuda_work_<op>(const ggc_node *n);   bytes of device work memory (ops that need it)
 *
 * The node struct itself lives in host memory (kernels read shapes/strides on the host and pass
 * what the device needs by value). ctx->work is device memory of at least ctx->work_size bytes,
 * 256-byte aligned; ggc_cuda_work_<op> says how much an op needs.
 *
 * Numerics: within test-backend-ops' NMSE thresholds of ggml's CPU backend, node by node; not
 * bit-identical (tensor-core f16 products, different summation order).
 */
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "ggc.h"
}

struct ggc_cuda_ctx {
    cudaStream_t stream;
    void *work;       /* device scratch, 256-byte aligned */
    size_t work_size; /* bytes of work */
    int64_t n_kv;     /* KV cells attended at run time; 0 = all */
    int n_sm;         /* streaming multiprocessors of the device (0 = unknown) */
    int act_ready;    /* MUL_MAT: the work buffer holds src1 converted already (by the previous MUL_MAT of
                         the same src1 and weight type; the generated program decides) */
    int w_const;      /* MUL_MAT: its weights (src[0], and src[3], src[4], src[6] when present) are constants
                         of the model that no kernel writes, so they may be read before the PDL wait */
    int quant_out;    /* FLASH_ATTN_EXT of one output row: also leave that row as q8_0 activations (q8a) at
                         the start of the work buffer, for the product right after it (its act_ready) */
};

/* ---- ranks (ggc_cuda_comm.cu): the collectives of a tensor-parallel program, queued on stream s.
 * The runtime sets them (ggc_model_cuda.cu with GGC_NCCL); NULL = one rank.
 * all_reduce: dst = the sum of n floats at src over the ranks, the same bits on every rank (dst may be src).
 * all_gather: every rank's `bytes` at part, into all in rank order (ranks x bytes). */
typedef void (*ggc_cuda_all_reduce_fn)(const float *src, float *dst, int64_t n, cudaStream_t s);
typedef void (*ggc_cuda_all_gather_fn)(const void *part, size_t bytes, void *all, cudaStream_t s);
extern "C" ggc_cuda_all_reduce_fn ggc_cuda_all_reduce_hook;
extern "C" ggc_cuda_all_gather_fn ggc_cuda_all_gather_hook;

/* ---- error checking (host) */
#define GGC_CUDA_CHECK(call)                                                                         \
    do {                                                                                             \
        cudaError_t err_ = (call);                                                                   \
        if (err_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "ggc cuda: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__,         \
                    cudaGetErrorString(err_));                                                       \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)
/* Kernel launches are not checked in the op functions (cudaGetLastError would clear the error):
 * whoever runs the ops checks cudaGetLastError / the stream's synchronization after them. */

/* a node this library cannot run (the compiler should not have emitted it) */
#define GGC_UNSUPPORTED(...)                                                                         \
    do {                                                                                             \
        fprintf(stderr, "ggc cuda: unsupported: " __VA_ARGS__);                                     \
        fputc('\n', stderr);                                                                         \
        abort();                                                                                     \
    } while (0)

/* ---- programmatic dependent launch (sm_90+). Every kernel is launched with ggc_launch, which lets
 * the next kernel of the stream (or of the recorded CUDA graph) be scheduled while this one still
 * runs; every kernel starts with GGC_PDL_BEGIN(): wait until the kernel before it has finished and
 * its writes are visible (before reading or writing anything), then let the one after it launch.
 * The hundreds of small kernels of a decode step then no longer pay a launch gap each. Without
 * PDL (older GPUs, GGC_PDL=0) the wait returns at once and launches are ordinary. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GGC_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define GGC_PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" :::)
#else
#define GGC_PDL_WAIT() \
    do {               \
    } while (0)
#define GGC_PDL_LAUNCH() \
    do {                 \
    } while (0)
#endif
#define GGC_PDL_BEGIN()   \
    do {                  \
        GGC_PDL_WAIT();   \
        GGC_PDL_LAUNCH(); \
    } while (0)
/* A kernel whose first reads are of constant memory alone (a product's weights, which no kernel
 * writes) may issue them before the wait, so that they overlap the tail of the kernel before it:
 * it starts with GGC_PDL_WAIT_UNLESS(early) and, once those loads are issued, GGC_PDL_AFTER_PREFETCH(early).
 * When early is false it waits at the start as every other kernel does. */
#define GGC_PDL_WAIT_UNLESS(early) \
    do {                           \
        if (!(early)) GGC_PDL_WAIT(); \
    } while (0)
#define GGC_PDL_AFTER_PREFETCH(early) \
    do {                              \
        if (early) GGC_PDL_WAIT();    \
        GGC_PDL_LAUNCH();             \
    } while (0)

/* whether launches may overlap their predecessor: compute capability 9.0 or later, unless GGC_PDL=0 */
static inline bool ggc_pdl_enabled(void) {
    static int on = -1;
    if (on < 0) {
        int dev = 0, major = 0;
        const char *env = getenv("GGC_PDL");
        on = !(env && env[0] == '0') && cudaGetDevice(&dev) == cudaSuccess &&
             cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
    }
    return on != 0;
}

/* whether kernels may load constants before the PDL wait (GGC_PDL_WAIT_UNLESS): with PDL, unless
 * GGC_PDL_PREFETCH=0 (for measuring what it gains) */
static inline bool ggc_pdl_prefetch(void) {
    static int on = -1;
    if (on < 0) {
        const char *env = getenv("GGC_PDL_PREFETCH");
        on = ggc_pdl_enabled() && !(env && env[0] == '0');
    }
    return on != 0;
}

/* a kernel launch (grid, block, dynamic shared memory, stream), as a programmatic dependent launch where enabled */
template <typename... Params, typename... Args>
static inline void ggc_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                              Args &&...args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = ggc_pdl_enabled() ? 1 : 0;
    cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
}

#define GGC_WARP 32
#define GGC_QK 32 /* elements per block of the 32-element formats */

static inline int64_t ggc_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- f16 / bf16 <-> f32 (device and host) */
static __device__ __forceinline__ float ggc_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
static __device__ __forceinline__ uint16_t ggc_f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
static __device__ __forceinline__ float ggc_bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
/* round to nearest even, NaN kept quiet: as ggml's GGML_FP32_TO_BF16 */
static __device__ __forceinline__ uint16_t ggc_f2bf(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* a float element of an f32 / f16 / bf16 tensor at byte address p */
static __device__ __forceinline__ float ggc_load_f(const void *p, ggc_type t) {
    switch (t) {
    case GGC_TYPE_F16: return ggc_h2f(*(const uint16_t *)p);
    case GGC_TYPE_BF16: return ggc_bf2f(*(const uint16_t *)p);
    default: return *(const float *)p;
    }
}
static __device__ __forceinline__ void ggc_store_f(void *p, ggc_type t, float v) {
    switch (t) {
    case GGC_TYPE_F16: *(uint16_t *)p = ggc_f2h(v); break;
    case GGC_TYPE_BF16: *(uint16_t *)p = ggc_f2bf(v); break;
    default: *(float *)p = v;
    }
}

/* elements per block and bytes per block of a type, usable in device code and templates */
static __host__ __device__ constexpr int ggc_cuda_blck(ggc_type t) {
    return t == GGC_TYPE_Q4_0 || t == GGC_TYPE_Q4_0R8 || t == GGC_TYPE_Q4_1 || t == GGC_TYPE_Q5_0 || t == GGC_TYPE_Q5_1 ||
                   t == GGC_TYPE_Q8_0 || t == GGC_TYPE_Q8_1
               ? GGC_QK
           : t == GGC_TYPE_Q2_K || t == GGC_TYPE_Q3_K || t == GGC_TYPE_Q4_K || t == GGC_TYPE_Q5_K ||
                   t == GGC_TYPE_Q6_K || t == GGC_TYPE_Q6_KR8 || t == GGC_TYPE_Q8_K
               ? GGC_QK_K
               : 1;
}
static __host__ __device__ constexpr int ggc_cuda_tsize(ggc_type t) {
    return t == GGC_TYPE_F32 ? 4 : t == GGC_TYPE_F16 ? 2 : t == GGC_TYPE_BF16 ? 2 : t == GGC_TYPE_I8 ? 1
         : t == GGC_TYPE_I16 ? 2 : t == GGC_TYPE_I32 ? 4 : t == GGC_TYPE_I64 ? 8 : t == GGC_TYPE_F64 ? 8
         : t == GGC_TYPE_Q4_0 || t == GGC_TYPE_Q4_0R8 ? 18 : t == GGC_TYPE_Q4_1 ? 20 : t == GGC_TYPE_Q5_0 ? 22 : t == GGC_TYPE_Q5_1 ? 24
         : t == GGC_TYPE_Q8_0 ? 34 : t == GGC_TYPE_Q8_1 ? 36 : t == GGC_TYPE_Q2_K ? 84 : t == GGC_TYPE_Q3_K ? 110
         : t == GGC_TYPE_Q4_K ? 144 : t == GGC_TYPE_Q5_K ? 176 : t == GGC_TYPE_Q6_K || t == GGC_TYPE_Q6_KR8 ? 210 : t == GGC_TYPE_Q8_K ? 292
         : 0;
}

/* bytes of a row of ne0 elements (host and device; the C library's ggc_row_size is not linked here) */
static __host__ __device__ constexpr size_t ggc_cuda_row_size(ggc_type t, int64_t ne0) {
    return (size_t)(ne0 / ggc_cuda_blck(t)) * (size_t)ggc_cuda_tsize(t);
}
static __host__ __device__ constexpr bool ggc_cuda_is_quant(ggc_type t) { return ggc_cuda_blck(t) > 1; }

/* ---- shapes and strides passed to kernels by value (ggc_tensor minus data/type) */
struct ggc_cuda_shape {
    int64_t ne[4];
    int64_t nb[4]; /* bytes */
};
static inline ggc_cuda_shape ggc_cuda_shape_of(const ggc_tensor *t) {
    ggc_cuda_shape s;
    for (int i = 0; i < 4; i++) {
        s.ne[i] = t->ne[i];
        s.nb[i] = (int64_t)t->nb[i];
    }
    return s;
}
static inline int64_t ggc_cuda_nrows(const ggc_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static inline int64_t ggc_cuda_nelements(const ggc_tensor *t) { return t->ne[0] * ggc_cuda_nrows(t); }
static inline bool ggc_cuda_is_contiguous(const ggc_tensor *t) {
    size_t expect = (size_t)ggc_cuda_tsize(t->type);
    if (t->nb[0] != expect) return false;
    expect = ggc_cuda_row_size(t->type, t->ne[0]);
    for (int i = 1; i < 4; i++) {
        if (t->ne[i] != 1 && t->nb[i] != expect) return false;
        expect *= (size_t)t->ne[i];
    }
    return true;
}
/* the byte address of element (i0, i1, i2, i3) (i0 in elements: only for non-block types) */
static __host__ __device__ __forceinline__ char *ggc_cuda_ptr(void *base, const ggc_cuda_shape &s, int64_t i0,
                                                            int64_t i1, int64_t i2, int64_t i3) {
    return (char *)base + i0 * s.nb[0] + i1 * s.nb[1] + i2 * s.nb[2] + i3 * s.nb[3];
}
/* the row (i1, i2, i3) */
static __host__ __device__ __forceinline__ char *ggc_cuda_row(void *base, const ggc_cuda_shape &s, int64_t i1,
                                                            int64_t i2, int64_t i3) {
    return (char *)base + i1 * s.nb[1] + i2 * s.nb[2] + i3 * s.nb[3];
}
/* flat row index r -> (i1, i2, i3) */
static __host__ __device__ __forceinline__ void ggc_cuda_unravel_row(const ggc_cuda_shape &s, int64_t r, int64_t &i1,
                                                                    int64_t &i2, int64_t &i3) {
    i1 = r % s.ne[1];
    r /= s.ne[1];
    i2 = r % s.ne[2];
    i3 = r / s.ne[2];
}
static inline float ggc_cuda_param_f32(const ggc_node *n, int i) {
    float f;
    memcpy(&f, &n->op_params[i], sizeof f);
    return f;
}

/* ---- warp reductions */
static __device__ __forceinline__ float ggc_warp_sum(float v) {
#pragma unroll
    for (int o = GGC_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float ggc_warp_max(float v) {
#pragma unroll
    for (int o = GGC_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ int ggc_warp_sum_i(int v) {
#pragma unroll
    for (int o = GGC_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* the sum of v over the block (blockDim.x threads, a multiple of 32, y = z = 1), in every thread;
 * red holds 32 floats of shared memory, free again when this returns */
static __device__ __forceinline__ float ggc_block_sum(float v, float *red) {
    v = ggc_warp_sum(v);
    if (blockDim.x <= 32) return v;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f;
    v = ggc_warp_sum(v);
    __syncthreads();
    return v;
}

/* ---- quantized blocks (GGUF / ggml layouts; d, m, dmin are IEEE half bits) */
struct ggc_blk_q4_0 { uint16_t d; uint8_t qs[GGC_QK / 2]; };
struct ggc_blk_q4_1 { uint16_t d, m; uint8_t qs[GGC_QK / 2]; };
struct ggc_blk_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[GGC_QK / 2]; };
struct ggc_blk_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[GGC_QK / 2]; };
struct ggc_blk_q8_0 { uint16_t d; int8_t qs[GGC_QK]; };
struct ggc_blk_q8_1 { uint16_t d, s; int8_t qs[GGC_QK]; }; /* s = d * sum(qs) */
struct ggc_blk_q2_K { uint8_t scales[GGC_QK_K / 16]; uint8_t qs[GGC_QK_K / 4]; uint16_t d, dmin; };
struct ggc_blk_q3_K { uint8_t hmask[GGC_QK_K / 8]; uint8_t qs[GGC_QK_K / 4]; uint8_t scales[12]; uint16_t d; };
struct ggc_blk_q4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[GGC_QK_K / 2]; };
struct ggc_blk_q5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[GGC_QK_K / 8]; uint8_t qs[GGC_QK_K / 2]; };
struct ggc_blk_q6_K { uint8_t ql[GGC_QK_K / 2]; uint8_t qh[GGC_QK_K / 4]; int8_t scales[GGC_QK_K / 16]; uint16_t d; };
struct ggc_blk_q8_K { float d; int8_t qs[GGC_QK_K]; int16_t bsums[GGC_QK_K / 16]; };

static_assert(sizeof(ggc_blk_q4_0) == 18, "q4_0 block size");
static_assert(sizeof(ggc_blk_q4_1) == 20, "q4_1 block size");
static_assert(sizeof(ggc_blk_q5_0) == 22, "q5_0 block size");
static_assert(sizeof(ggc_blk_q5_1) == 24, "q5_1 block size");
static_assert(sizeof(ggc_blk_q8_0) == 34, "q8_0 block size");
static_assert(sizeof(ggc_blk_q8_1) == 36, "q8_1 block size");
static_assert(sizeof(ggc_blk_q2_K) == 84, "q2_K block size");
static_assert(sizeof(ggc_blk_q3_K) == 110, "q3_K block size");
static_assert(sizeof(ggc_blk_q4_K) == 144, "q4_K block size");
static_assert(sizeof(ggc_blk_q5_K) == 176, "q5_K block size");
static_assert(sizeof(ggc_blk_q6_K) == 210, "q6_K block size");
static_assert(sizeof(ggc_blk_q8_K) == 292, "q8_K block size");

/* ---- launch helpers */
static inline unsigned ggc_cuda_grid(int64_t n, int block) {
    int64_t g = ggc_cdiv(n, block);
    return (unsigned)(g < 1 ? 1 : g > 0x7fffffff ? 0x7fffffff : g);
}
