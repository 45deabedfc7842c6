/* ggc C kernel library: the common ABI.
 *
 * Every kernel has the shape of ggml's own compute functions: it reads the sources and op_params
 * of one node and writes its destination, all described by ggc_tensor (data pointer, type, sizes
 * and byte strides, exactly ggml's ne/nb). The generated program fills these descriptors with
 * constants (arena offsets, shapes, strides) and calls the kernels in order.
 *
 *   void ggc_op_<op>(const ggc_node *node, ggc_work *work);   e.g. ggc_op_mul_mat
 *   void ggc_op_unary_<name>(...), ggc_op_glu_<name>(...)      e.g. ggc_op_unary_silu, ggc_op_glu_swiglu
 *   size_t ggc_work_<op>(const ggc_node *node);               bytes of work memory, for ops that need it
 *
 * Build with floating-point contraction off (-ffp-contract=off) and never -ffast-math: where ggml
 * fuses a multiply-add, the kernels call fmaf explicitly.
 *
 * Numerics follow ggml's CPU backend (its reference path), so that results match it node by
 * node: e.g. a quantized matrix product quantizes its activations to the weight type's dot
 * partner (q8_0, q8_1 or q8_K) first, and an f16 one rounds its activations to f16.
 *
 * C11, libc and libm only. OpenMP is optional: kernels parallelize rows with `omp parallel for`
 * pragmas that are ignored without -fopenmp.
 */
#ifndef GGC_H
#define GGC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGC_MAX_DIMS 4
#define GGC_MAX_SRC 10
#define GGC_MAX_OP_PARAMS 16
#define GGC_QK_K 256

/* ggc's own type numbering (not ggml's). Python names them in ggc/backends/c/kernels.py. */
typedef enum {
    GGC_TYPE_F32, GGC_TYPE_F16, GGC_TYPE_BF16, GGC_TYPE_I8, GGC_TYPE_I16, GGC_TYPE_I32, GGC_TYPE_I64,
    GGC_TYPE_F64, GGC_TYPE_Q4_0, GGC_TYPE_Q4_1, GGC_TYPE_Q5_0, GGC_TYPE_Q5_1, GGC_TYPE_Q8_0,
    GGC_TYPE_Q8_1, GGC_TYPE_Q2_K, GGC_TYPE_Q3_K, GGC_TYPE_Q4_K, GGC_TYPE_Q5_K, GGC_TYPE_Q6_K,
    GGC_TYPE_Q8_K, GGC_TYPE_COUNT,
    /* A layout for GPU programs only (the C kernels never see it): q4_0 rows regrouped by 8 blocks,
     * the 8 f16 scales (16 bytes) then the 8 blocks' 16 quant bytes each, 144 bytes a group, so that
     * every block's quants are one aligned 16-byte load. Same bytes a row as q4_0; the GGUF loader
     * makes it from q4_0 (ggc_gguf.c). */
    GGC_TYPE_Q4_0R8 = 32,
    /* q6_K rows regrouped by 8 blocks (2048 elements, 1680 bytes a group), for one-column products
     * only: the 8 blocks' ql (128 bytes each), then their qh (64), their scales (16), their f16 d
     * (2), so that a 32-element sub-block's quants are 16-byte aligned loads. Same bytes a row as
     * q6_K; the GGUF loader makes it from q6_K. */
    GGC_TYPE_Q6_KR8 = 33
} ggc_type;

typedef struct {
    void *data;              /* first byte of the tensor (arena base + offset) */
    ggc_type type;
    int64_t ne[GGC_MAX_DIMS]; /* elements per dimension, fastest first */
    size_t nb[GGC_MAX_DIMS];  /* stride in bytes per dimension (nb[1] counts whole blocks for quantized types) */
} ggc_tensor;

typedef struct {
    ggc_tensor dst;
    ggc_tensor src[GGC_MAX_SRC]; /* an absent source has data == NULL */
    int32_t op_params[GGC_MAX_OP_PARAMS]; /* ggml's op_params words, as the .ggraph decodes them */
} ggc_node;

/* The C kernels' context: work memory, threads, and the run-time KV length. */
typedef struct {
    void *data;    /* scratch for kernels (quantized activations, attention rows, ...), 64-byte aligned */
    size_t size;   /* at least n_threads times the largest ggc_work_<op> of the program */
    int n_threads; /* OpenMP threads; 1 without OpenMP */
    int64_t n_kv;  /* KV cells attention reads this run: 0 = all (see ggc_attention.c) */
} ggc_work;

/* ---- type traits */
int64_t ggc_blck_size(ggc_type t);   /* elements per block */
size_t ggc_type_size(ggc_type t);    /* bytes per block */
size_t ggc_row_size(ggc_type t, int64_t ne0);
/* the type a weight type's matrix product quantizes activations to (ggml's vec_dot_type) */
ggc_type ggc_vec_dot_type(ggc_type t);

/* ---- conversions (ggc_quants.c) */
float ggc_fp16_to_fp32(uint16_t h);
uint16_t ggc_fp32_to_fp16(float f);  /* round to nearest even, as ggml */
float ggc_bf16_to_fp32(uint16_t h);
uint16_t ggc_fp32_to_bf16(float f);  /* round to nearest even, NaN kept quiet, as ggml */
/* a row of n elements (n a multiple of the block size) to and from float */
void ggc_to_float(ggc_type t, const void *src, float *dst, int64_t n);
void ggc_from_float(ggc_type t, const float *src, void *dst, int64_t n); /* ggml's from_float for t */
/* dot product of n elements: x in weight type t, y in ggc_vec_dot_type(t); as ggml's vec_dot */
float ggc_vec_dot(ggc_type t, int64_t n, const void *x, const void *y);

/* ---- bits of a float, and the row (i1, i2, i3) of flat row index r of tensor t */
static inline uint32_t ggc_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float ggc_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define GGC_ROW_INDEX(t, r, i1, i2, i3)                                                              \
    const int64_t i1 = (r) % (t)->ne[1], i2 = ((r) / (t)->ne[1]) % (t)->ne[2],                       \
                  i3 = (r) / ((t)->ne[1] * (t)->ne[2])

/* ---- shared numeric routines */
float ggc_alibi_slope(float max_bias, uint32_t n_head, uint32_t h); /* ALiBi slope of head h (ggc_softmax.c) */
float ggc_expf_vec(float x); /* ggml's vectorized expf, lane by lane (ggc_elementwise.c) */
/* y = exp(x - max) over a row, returning the sum in double, as ggml's soft_max (ggc_softmax.c) */
double ggc_softmax_exp_row(int64_t n, float *y, const float *x, float max);

/* ---- ranks (ggc_comm.c): sums n floats over the ranks of a tensor-parallel program in place, the
 * same bits on every rank; the runtime sets it (ggc_model.c with GGC_MPI), NULL = one rank */
extern void (*ggc_all_reduce_hook)(float *data, int64_t n);
/* every rank's `bytes` at part, into all in rank order (ranks x bytes); NULL = one rank */
extern void (*ggc_all_gather_hook)(const void *part, size_t bytes, void *all);

/* ---- per-thread work memory: `per` bytes for each thread */
#ifdef _OPENMP
#include <omp.h>
#endif
/* as many threads as the work buffer has slices of `per` bytes, at most work->n_threads */
static inline int ggc_work_threads(const ggc_work *w, size_t per) {
    const int nt = w->n_threads < 1 ? 1 : w->n_threads;
    const size_t fit = per ? w->size / per : (size_t)nt;
    return fit < 1 ? 1 : fit < (size_t)nt ? (int)fit : nt;
}
/* this thread's slice */
static inline void *ggc_work_slice(const ggc_work *w, size_t per) {
#ifdef _OPENMP
    return (char *)w->data + (size_t)omp_get_thread_num() * per;
#else
    (void)per;
    return w->data;
#endif
}

/* ---- strided element access */
static inline void *ggc_ptr(const ggc_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i0 * (int64_t)t->nb[0] + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] +
           i3 * (int64_t)t->nb[3];
}
static inline void *ggc_row(const ggc_tensor *t, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] + i3 * (int64_t)t->nb[3];
}
static inline int64_t ggc_nrows(const ggc_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static inline int64_t ggc_nelements(const ggc_tensor *t) { return t->ne[0] * ggc_nrows(t); }
static inline float ggc_param_f32(const ggc_node *n, int i) {
    float f;
    memcpy(&f, &n->op_params[i], sizeof f);
    return f;
}
/* a float element of an f32 / f16 / bf16 tensor */
static inline float ggc_get_f(const ggc_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const void *p = ggc_ptr(t, i0, i1, i2, i3);
    switch (t->type) {
    case GGC_TYPE_F16: return ggc_fp16_to_fp32(*(const uint16_t *)p);
    case GGC_TYPE_BF16: return ggc_bf16_to_fp32(*(const uint16_t *)p);
    default: return *(const float *)p;
    }
}
static inline void ggc_set_f(const ggc_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3, float v) {
    void *p = ggc_ptr(t, i0, i1, i2, i3);
    switch (t->type) {
    case GGC_TYPE_F16: *(uint16_t *)p = ggc_fp32_to_fp16(v); break;
    case GGC_TYPE_BF16: *(uint16_t *)p = ggc_fp32_to_bf16(v); break;
    default: *(float *)p = v;
    }
}

#ifdef __cplusplus
}
#endif
#endif
