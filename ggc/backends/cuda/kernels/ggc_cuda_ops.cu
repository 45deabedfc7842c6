/* ggc CUDA kernels: elementwise, reductions, sort, norms, rope, soft_max.
 *
 *   ADD SUB MUL DIV (ggml broadcasting: src1 repeats along every dim where its size divides dst's),
 *   ADD_ID, SCALE, CLAMP, SUM_ROWS, CONCAT, ARGSORT, TOP_K, every UNARY and GLU op,
 *   RMS_NORM, NORM, L2_NORM, ROPE (all modes), SOFT_MAX (scale, f16/f32 mask, ALiBi, sinks).
 *
 * Semantics and numerics follow ggml's CPU backend (the C kernels in ../../c/kernels are the
 * reference), within test-backend-ops' NMSE thresholds:
 *  - sums and maxima are f32 warp/block tree reductions (the CPU sums in double: the difference
 *    is far below the thresholds);
 *  - GELU and GELU_QUICK reproduce ggml's f16 lookup table (input and result rounded to f16; the
 *    f32 GELU path returns 0 below -10 and x above 10), so they match the CPU to the ulp of f16;
 *  - ROPE reproduces ggml's angle recurrence exactly: theta starts at the position and is
 *    multiplied by theta_scale once per pair in f32 (not powf per pair), then YaRN as rope_yarn;
 *  - accurate libdevice math (expf, tanhf, erff, sinf, cosf): build without --use_fast_math.
 *
 * Tensors may be strided (any nb) and of type f32, f16 or bf16 where ggml allows it; an all-f32
 * node with unit element stride takes a specialized path.
 *
 * In place: binary ops, SCALE, CLAMP, UNARY, SOFT_MAX, ROPE, RMS_NORM (and NORM, L2_NORM, GLU with
 * two sources) are safe when dst aliases src0 exactly (same data pointer and strides): every
 * output element is written by the thread that read the inputs it depends on, after it read them.
 *
 * ARGSORT / TOP_K: a bitonic sort per row on (value, index) keys; equal values come out by
 * ascending index (ascending and descending order alike). ggml's CPU (std::sort) leaves ties in an
 * implementation-defined order, so rows with ties may differ from it; rows without ties match
 * exactly. TOP_K returns ggml's order: the k largest in descending order, then the first two
 * swapped ("the order is not important"). Rows of up to 16384 elements sort in shared memory;
 * longer rows need work memory (ggc_cuda_work_argsort / ggc_cuda_work_top_k).
 */
#include "ggc_cuda.cuh"
#include "ggc_cuda_rope.cuh"

#include <math.h>

namespace {

/* ------------------------------------------------------------------ small helpers */

__device__ __forceinline__ const char *row_of(const void *base, const ggc_cuda_shape &s, int64_t i1, int64_t i2,
                                              int64_t i3) {
    return (const char *)base + i1 * s.nb[1] + i2 * s.nb[2] + i3 * s.nb[3];
}
__device__ __forceinline__ char *row_of(void *base, const ggc_cuda_shape &s, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)base + i1 * s.nb[1] + i2 * s.nb[2] + i3 * s.nb[3];
}
/* element i0 of a row: an f32 unit-stride row when F32, else any float type and stride */
template <bool F32>
__device__ __forceinline__ float ld(const char *row, int64_t i0, int64_t nb0, ggc_type t) {
    if (F32) return ((const float *)row)[i0];
    return ggc_load_f(row + i0 * nb0, t);
}
template <bool F32>
__device__ __forceinline__ void st(char *row, int64_t i0, int64_t nb0, ggc_type t, float v) {
    if (F32) ((float *)row)[i0] = v;
    else ggc_store_f(row + i0 * nb0, t, v);
}

inline bool is_float_type(ggc_type t) { return t == GGC_TYPE_F32 || t == GGC_TYPE_F16 || t == GGC_TYPE_BF16; }
inline bool f32_unit(const ggc_tensor *t) { return t->type == GGC_TYPE_F32 && t->nb[0] == sizeof(float); }
inline int64_t nrows_of(const ggc_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
inline bool same_view(const ggc_tensor *a, const ggc_tensor *b) {
    if (a->data != b->data) return false;
    for (int i = 0; i < 4; i++)
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i]) return false;
    return true;
}
inline float param_f(const ggc_node *n, int i) { return ggc_cuda_param_f32(n, i); }

/* Rows of ne0 elements: blockDim (bx, by), by rows per block; grid.x over a row, grid.y over rows. */
struct rows_cfg {
    dim3 grid, block;
};
inline rows_cfg rows_config(int64_t ne0, int64_t nrows) {
    int bx = ne0 >= 256 ? 256 : (int)((ne0 + 31) / 32) * 32;
    if (bx < 32) bx = 32;
    const int by = 256 / bx;
    int64_t gx = ggc_cdiv(ne0, bx), gy = ggc_cdiv(nrows, by);
    if (gx > 0x7fffffff) gx = 0x7fffffff;
    if (gy > 65535) gy = 65535;
    rows_cfg c;
    c.block = dim3((unsigned)bx, (unsigned)by, 1);
    c.grid = dim3((unsigned)(gx < 1 ? 1 : gx), (unsigned)(gy < 1 ? 1 : gy), 1);
    return c;
}

/* the row loop shared by the elementwise kernels: F::row(i1, i2, i3) then F::elem(row, i0) */
template <class F>
__global__ void k_rows(F f, int64_t ne0, int64_t ne1, int64_t ne2, int64_t nrows) {
    GGC_PDL_BEGIN();
    for (int64_t r = (int64_t)blockIdx.y * blockDim.y + threadIdx.y; r < nrows; r += (int64_t)gridDim.y * blockDim.y) {
        int64_t i1, i2, i3;
        if (nrows <= 0xffffffffll) { /* 32-bit division is several times cheaper */
            const uint32_t r32 = (uint32_t)r, t = r32 / (uint32_t)ne1;
            i1 = r32 - t * (uint32_t)ne1;
            i2 = t % (uint32_t)ne2;
            i3 = t / (uint32_t)ne2;
        } else {
            i1 = r % ne1;
            const int64_t t = r / ne1;
            i2 = t % ne2;
            i3 = t / ne2;
        }
        const typename F::row_t row = f.row(i1, i2, i3);
        for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < ne0; i0 += (int64_t)gridDim.x * blockDim.x)
            f.elem(row, i0);
    }
}

template <class F>
void launch_rows(const F &f, const ggc_tensor *d, cudaStream_t s) {
    const int64_t nr = nrows_of(d);
    if (d->ne[0] <= 0 || nr <= 0) return;
    const rows_cfg c = rows_config(d->ne[0], nr);
    ggc_launch(k_rows<F>, c.grid, c.block, 0, s, f, d->ne[0], d->ne[1], d->ne[2], nr);
}

/* The fast path of the elementwise ops: f32 tensors whose rows (flat index r over dims 1..3) lie at
 * one stride (row r at r * rs floats), ne0 a multiple of 4, 16-byte aligned: float4 accesses and no
 * index arithmetic beyond r * rs + c. */
bool uniform_rows(const ggc_tensor *t, int64_t &rs) {
    if (t->type != GGC_TYPE_F32 || t->nb[0] != sizeof(float)) return false;
    rs = -1;
    int64_t prod = 1;
    for (int k = 1; k < 4; k++) {
        if (t->ne[k] != 1) {
            const int64_t unit = 4 * prod;
            if ((int64_t)t->nb[k] % unit != 0) return false;
            const int64_t s = (int64_t)t->nb[k] / unit;
            if (rs < 0) rs = s;
            else if (s != rs) return false;
        }
        prod *= t->ne[k];
    }
    if (rs < 0) rs = t->ne[0]; /* a single row */
    return true;
}
/* uniform rows usable as float4 rows: rs4 in float4 units; off: element offset into each row */
bool rows4(const ggc_tensor *t, int64_t off, int64_t &rs4) {
    int64_t rs;
    if (!uniform_rows(t, rs) || rs % 4 != 0 || off % 4 != 0 || t->ne[0] % 4 != 0) return false;
    if (((uintptr_t)t->data + (uintptr_t)off * 4) % 16 != 0) return false;
    rs4 = rs / 4;
    return true;
}
inline bool same_rows(const ggc_tensor *a, const ggc_tensor *b) {
    return a->ne[1] == b->ne[1] && a->ne[2] == b->ne[2] && a->ne[3] == b->ne[3];
}

template <class F>
__global__ void k_rows4(F f, int64_t n4, int64_t nrows) {
    GGC_PDL_BEGIN();
    for (int64_t r = (int64_t)blockIdx.y * blockDim.y + threadIdx.y; r < nrows; r += (int64_t)gridDim.y * blockDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n4; c += (int64_t)gridDim.x * blockDim.x)
            f(r, c);
}
template <class F>
void launch_rows4(const F &f, int64_t ne0, int64_t nrows, cudaStream_t s) {
    if (ne0 <= 0 || nrows <= 0) return;
    const rows_cfg c = rows_config(ne0 / 4, nrows);
    ggc_launch(k_rows4<F>, c.grid, c.block, 0, s, f, ne0 / 4, nrows);
}

/* ------------------------------------------------------------------ reductions */

/* sum / max over the threads of one row: blockDim.x threads per row. With blockDim.x == 32 a warp
 * reduction only (several rows per block, no barrier); else one row per block, through sbuf[32]. */
__device__ __forceinline__ float row_sum(float v, float *sbuf) {
    v = ggc_warp_sum(v);
    if (blockDim.x <= 32) return v;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    __syncthreads(); /* sbuf may still be read by a previous reduction */
    if (lane == 0) sbuf[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? sbuf[lane] : 0.0f;
    return ggc_warp_sum(v);
}
__device__ __forceinline__ float row_max(float v, float *sbuf) {
    v = ggc_warp_max(v);
    if (blockDim.x <= 32) return v;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) sbuf[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? sbuf[lane] : -INFINITY;
    return ggc_warp_max(v);
}

/* threads per row for a row reduction kernel: a warp for short rows (4 rows per block), else a
 * whole block per row */
struct red_cfg {
    dim3 grid, block;
};
inline red_cfg red_config(int64_t ne0, int64_t nrows, int64_t warp_max_ne0 = 512) {
    red_cfg c;
    if (ne0 <= warp_max_ne0) {
        c.block = dim3(32, 4, 1);
        int64_t g = ggc_cdiv(nrows, 4);
        c.grid = dim3((unsigned)(g > 0x7fffffff ? 0x7fffffff : g), 1, 1);
    } else {
        c.block = dim3(ne0 < 2048 ? 256 : 1024, 1, 1);
        c.grid = dim3((unsigned)(nrows > 0x7fffffff ? 0x7fffffff : nrows), 1, 1);
    }
    return c;
}

/* ------------------------------------------------------------------ binary ops */

/* i modulo a broadcast size n (n divides the full size): the usual n == 1 and i < n cost nothing */
__device__ __forceinline__ int64_t bmod(int64_t i, int64_t n) {
    if (n == 1) return 0;
    if (i < n) return i;
    return n <= 0x7fffffff && i <= 0x7fffffff ? (int64_t)((uint32_t)i % (uint32_t)n) : i % n;
}

struct op_add { static __device__ __forceinline__ float f(float a, float b) { return a + b; } };
struct op_sub { static __device__ __forceinline__ float f(float a, float b) { return a - b; } };
struct op_mul { static __device__ __forceinline__ float f(float a, float b) { return a * b; } };
struct op_div { static __device__ __forceinline__ float f(float a, float b) { return a / b; } };

template <class OP, bool F32>
struct bin_f {
    const char *a, *b;
    char *d;
    ggc_cuda_shape sa, sb, sd;
    ggc_type ta, tb, td;
    struct row_t {
        const char *a, *b;
        char *d;
    };
    __device__ row_t row(int64_t i1, int64_t i2, int64_t i3) const {
        return {row_of(a, sa, i1, i2, i3), row_of(b, sb, bmod(i1, sb.ne[1]), bmod(i2, sb.ne[2]), bmod(i3, sb.ne[3])),
                row_of(d, sd, i1, i2, i3)};
    }
    __device__ void elem(const row_t &r, int64_t i0) const {
        const int64_t j0 = bmod(i0, sb.ne[0]);
        const float x = ld<F32>(r.a, i0, sa.nb[0], ta), y = ld<F32>(r.b, j0, sb.nb[0], tb);
        st<F32>(r.d, i0, sd.nb[0], td, OP::f(x, y));
    }
};

template <class OP>
struct bin4_f {
    const float4 *a, *b;
    float4 *d;
    int64_t ra, rb, rd; /* row strides in float4 (rb = 0: one row of src1 for every row) */
    __device__ void operator()(int64_t r, int64_t c) const {
        const float4 x = a[r * ra + c], y = b[r * rb + c];
        d[r * rd + c] = make_float4(OP::f(x.x, y.x), OP::f(x.y, y.y), OP::f(x.z, y.z), OP::f(x.w, y.w));
    }
};

template <class OP>
void binary(const ggc_node *n, const ggc_cuda_ctx *c, const char *name) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    if (!is_float_type(a->type) || !is_float_type(b->type) || !is_float_type(d->type))
        GGC_UNSUPPORTED("%s of types %d, %d -> %d (float types only)", name, a->type, b->type, d->type);
    int64_t ra, rb, rd;
    if (b->ne[0] == d->ne[0] && (same_rows(b, d) || nrows_of(b) == 1) && rows4(a, 0, ra) && rows4(b, 0, rb) &&
        rows4(d, 0, rd)) {
        launch_rows4(bin4_f<OP>{(const float4 *)a->data, (const float4 *)b->data, (float4 *)d->data, ra,
                                nrows_of(b) == 1 ? 0 : rb, rd}, d->ne[0], nrows_of(d), c->stream);
        return;
    }
    const bool f32 = f32_unit(a) && f32_unit(b) && f32_unit(d);
    const ggc_cuda_shape sa = ggc_cuda_shape_of(a), sb = ggc_cuda_shape_of(b), sd = ggc_cuda_shape_of(d);
    if (f32) launch_rows(bin_f<OP, true>{(const char *)a->data, (const char *)b->data, (char *)d->data, sa, sb, sd,
                                         a->type, b->type, d->type}, d, c->stream);
    else launch_rows(bin_f<OP, false>{(const char *)a->data, (const char *)b->data, (char *)d->data, sa, sb, sd,
                                      a->type, b->type, d->type}, d, c->stream);
}

/* ADD_ID: dst[:, i1, i2] = src0[:, i1, i2] + src1[:, ids[i1, i2]] */
struct add_id_f {
    const char *a, *b, *ids;
    char *d;
    ggc_cuda_shape sa, sb, si, sd;
    ggc_type ta, tb, td;
    struct row_t {
        const char *a, *b;
        char *d;
    };
    __device__ row_t row(int64_t i1, int64_t i2, int64_t i3) const {
        const int32_t e = *(const int32_t *)(ids + i1 * si.nb[0] + i2 * si.nb[1]);
        return {row_of(a, sa, i1, i2, i3), b + e * sb.nb[1], row_of(d, sd, i1, i2, i3)};
    }
    __device__ void elem(const row_t &r, int64_t i0) const {
        ggc_store_f(r.d + i0 * sd.nb[0], td,
                    ggc_load_f(r.a + i0 * sa.nb[0], ta) + ggc_load_f(r.b + i0 * sb.nb[0], tb));
    }
};

/* ------------------------------------------------------------------ unary ops (and SCALE, CLAMP) */

struct uparams {
    float p[5];
    ggc_type t; /* the source type (GELU's numerics depend on it) */
};

constexpr float GELU_COEF_A = 0.044715f;
constexpr float GELU_QUICK_COEF = -1.702f;
constexpr float SQRT_2_OVER_PI = 0.79788456080286535587989211986876f;
constexpr float SQRT_2_INV = 0.70710678118654752440084436210484f;

__device__ __forceinline__ float f16r(float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float gelu_f32(float x) {
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * fmaf(GELU_COEF_A * x, x, 1.0f)));
}
__device__ __forceinline__ float gelu_quick_f32(float x) { return x * (1.0f / (1.0f + expf(GELU_QUICK_COEF * x))); }
/* ggml's f16 tables: the f16 value of the function at the f16 rounding of x */
__device__ __forceinline__ float gelu_of(ggc_type t, float x) {
    if (t == GGC_TYPE_BF16) return gelu_f32(x);
    if (t == GGC_TYPE_F16) return f16r(gelu_f32(f16r(x)));
    return x <= -10.0f ? 0.0f : x >= 10.0f ? x : f16r(gelu_f32(f16r(x)));
}
__device__ __forceinline__ float gelu_quick_of(ggc_type t, float x) {
    return t == GGC_TYPE_BF16 ? gelu_quick_f32(x) : f16r(gelu_quick_f32(f16r(x)));
}
__device__ __forceinline__ float silu_f32(float x) { return x / (1.0f + expf(-x)); }

#define UOP(name, expr)                                                                              \
    struct u_##name {                                                                                \
        static __device__ __forceinline__ float f(float x, const uparams &p) {                       \
            (void)p;                                                                                 \
            return (expr);                                                                           \
        }                                                                                            \
    };

UOP(abs, fabsf(x))
UOP(sgn, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f))
UOP(neg, -x)
UOP(step, x > 0.0f ? 1.0f : 0.0f)
UOP(tanh, tanhf(x))
UOP(elu, x > 0.0f ? x : expm1f(x))
UOP(relu, x > 0.0f ? x : 0.0f)
UOP(sigmoid, 1.0f / (1.0f + expf(-x)))
UOP(gelu, gelu_of(p.t, x))
UOP(gelu_quick, gelu_quick_of(p.t, x))
UOP(gelu_erf, 0.5f * x * (1.0f + erff(x * SQRT_2_INV)))
UOP(silu, silu_f32(x))
UOP(hardswish, x * fminf(1.0f, fmaxf(0.0f, (x + 3.0f) / 6.0f)))
UOP(hardsigmoid, fminf(1.0f, fmaxf(0.0f, (x + 3.0f) / 6.0f)))
UOP(exp, expf(x))
UOP(expm1, expf(x) - 1.0f)
UOP(softplus, x > 20.0f ? x : logf(1.0f + expf(x)))
UOP(floor, floorf(x))
UOP(ceil, ceilf(x))
UOP(round, roundf(x))
UOP(trunc, truncf(x))
/* XIELU: p 1..4 = alpha_n, alpha_p, beta, eps (as ggml_xielu stores them) */
UOP(xielu, x > 0.0f ? fmaf(p.p[2] * x, x, p.p[3] * x) : fmaf(expm1f(fminf(x, p.p[4])) - x, p.p[1], p.p[3] * x))
/* SCALE: x * s (+ b, fused as ggml) ; CLAMP: max(min(x, hi), lo) with ggml's MIN/MAX (NaN -> hi) */
UOP(scale, p.p[1] == 0.0f ? x * p.p[0] : fmaf(x, p.p[0], p.p[1]))
UOP(clamp, (x < p.p[1] ? x : p.p[1]) > p.p[0] ? (x < p.p[1] ? x : p.p[1]) : p.p[0])

template <class OP, bool F32>
struct un_f {
    const char *a;
    char *d;
    ggc_cuda_shape sa, sd;
    ggc_type ta, td;
    uparams p;
    struct row_t {
        const char *a;
        char *d;
    };
    __device__ row_t row(int64_t i1, int64_t i2, int64_t i3) const {
        return {row_of(a, sa, i1, i2, i3), row_of(d, sd, i1, i2, i3)};
    }
    __device__ void elem(const row_t &r, int64_t i0) const {
        st<F32>(r.d, i0, sd.nb[0], td, OP::f(ld<F32>(r.a, i0, sa.nb[0], ta), p));
    }
};

template <class OP>
struct un4_f {
    const float4 *a;
    float4 *d;
    int64_t ra, rd;
    uparams p;
    __device__ void operator()(int64_t r, int64_t c) const {
        const float4 x = a[r * ra + c];
        d[r * rd + c] = make_float4(OP::f(x.x, p), OP::f(x.y, p), OP::f(x.z, p), OP::f(x.w, p));
    }
};

template <class OP>
void unary(const ggc_node *n, const ggc_cuda_ctx *c, uparams p) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    if (!is_float_type(a->type) || !is_float_type(d->type))
        GGC_UNSUPPORTED("unary op on types %d -> %d (float types only)", a->type, d->type);
    p.t = a->type;
    int64_t ra, rd;
    if (rows4(a, 0, ra) && rows4(d, 0, rd)) {
        launch_rows4(un4_f<OP>{(const float4 *)a->data, (float4 *)d->data, ra, rd, p}, d->ne[0], nrows_of(d), c->stream);
        return;
    }
    const ggc_cuda_shape sa = ggc_cuda_shape_of(a), sd = ggc_cuda_shape_of(d);
    if (f32_unit(a) && f32_unit(d))
        launch_rows(un_f<OP, true>{(const char *)a->data, (char *)d->data, sa, sd, a->type, d->type, p}, d, c->stream);
    else
        launch_rows(un_f<OP, false>{(const char *)a->data, (char *)d->data, sa, sd, a->type, d->type, p}, d, c->stream);
}

inline uparams params_of(const ggc_node *n) {
    uparams p;
    for (int i = 0; i < 5; i++) p.p[i] = param_f(n, i);
    p.t = n->src[0].type;
    return p;
}

/* ------------------------------------------------------------------ GLU ops
 * dst = act(x) * g. One source: each row holds x and g as halves (op_params[1] = swapped puts g
 * first); two sources: x from src0, g from src1. op_params[2], [3]: alpha, limit. */

__device__ __forceinline__ float min_f(float a, float b) { return b < a ? b : a; }                               /* std::min */
__device__ __forceinline__ float clamp_f(float v, float lo, float hi) { return v < lo ? lo : (hi < v ? hi : v); } /* std::clamp */

#define GOP(name, expr)                                                                              \
    struct g_##name {                                                                                \
        static __device__ __forceinline__ float f(float x, float g, const uparams &p) {              \
            (void)p;                                                                                 \
            return (expr);                                                                           \
        }                                                                                            \
    };

__device__ __forceinline__ float geglu_f(float x, float g, ggc_type t) {
    if (t == GGC_TYPE_F32 && x <= -10.0f) return 0.0f;
    if (t == GGC_TYPE_F32 && x >= 10.0f) return x * g;
    return gelu_of(t, x) * g;
}
__device__ __forceinline__ float swiglu_oai_f(float x, float g, float alpha, float limit) {
    x = min_f(x, limit);
    g = clamp_f(g, -limit, limit);
    return x / (1.0f + expf(alpha * (-x))) * (g + 1.0f);
}
__device__ __forceinline__ float swiglu_clamp_f(float x, float g, float limit) {
    x = min_f(x, limit);
    g = clamp_f(g, -limit, limit);
    return x / (1.0f + expf(-x)) * g;
}

GOP(reglu, x > 0.0f ? x * g : 0.0f)
GOP(geglu, geglu_f(x, g, p.t))
GOP(swiglu, silu_f32(x) * g)
GOP(swiglu_oai, swiglu_oai_f(x, g, p.p[2], p.p[3]))
GOP(geglu_erf, 0.5f * x * (1.0f + erff(x * SQRT_2_INV)) * g)
GOP(geglu_quick, gelu_quick_of(p.t, x) * g)
GOP(swiglu_clamp, swiglu_clamp_f(x, g, p.p[3]))

template <class OP, bool F32>
struct glu_f {
    const char *a, *b;
    char *d;
    ggc_cuda_shape sa, sb, sd;
    ggc_type ta, tb, td;
    int64_t ox, og; /* element offsets of x and g in their rows */
    uparams p;
    struct row_t {
        const char *x, *g;
        char *d;
    };
    __device__ row_t row(int64_t i1, int64_t i2, int64_t i3) const {
        return {row_of(a, sa, i1, i2, i3) + ox * sa.nb[0], row_of(b, sb, i1, i2, i3) + og * sb.nb[0],
                row_of(d, sd, i1, i2, i3)};
    }
    __device__ void elem(const row_t &r, int64_t i0) const {
        st<F32>(r.d, i0, sd.nb[0], td, OP::f(ld<F32>(r.x, i0, sa.nb[0], ta), ld<F32>(r.g, i0, sb.nb[0], tb), p));
    }
};

template <class OP>
struct glu4_f {
    const float4 *x, *g;
    float4 *d;
    int64_t rx, rg, rd;
    uparams p;
    __device__ void operator()(int64_t r, int64_t c) const {
        const float4 u = x[r * rx + c], v = g[r * rg + c];
        d[r * rd + c] = make_float4(OP::f(u.x, v.x, p), OP::f(u.y, v.y, p), OP::f(u.z, v.z, p), OP::f(u.w, v.w, p));
    }
};

template <class OP>
void glu(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const bool two = n->src[1].data != nullptr;
    const ggc_tensor *b = two ? &n->src[1] : a;
    if (!is_float_type(a->type) || !is_float_type(b->type) || !is_float_type(d->type))
        GGC_UNSUPPORTED("glu op on types %d, %d -> %d (float types only)", a->type, b->type, d->type);
    const int64_t nc = d->ne[0];
    const bool swapped = !two && n->op_params[1] != 0;
    const int64_t ox = two ? 0 : (swapped ? nc : 0), og = two ? 0 : (swapped ? 0 : nc);
    uparams p = params_of(n);
    int64_t rx, rg, rd;
    if (same_rows(a, d) && same_rows(b, d) && rows4(a, ox, rx) && rows4(b, og, rg) && rows4(d, 0, rd)) {
        launch_rows4(glu4_f<OP>{(const float4 *)((const float *)a->data + ox), (const float4 *)((const float *)b->data + og),
                                (float4 *)d->data, rx, rg, rd, p}, d->ne[0], nrows_of(d), c->stream);
        return;
    }
    const ggc_cuda_shape sa = ggc_cuda_shape_of(a), sb = ggc_cuda_shape_of(b), sd = ggc_cuda_shape_of(d);
    if (f32_unit(a) && f32_unit(b) && f32_unit(d))
        launch_rows(glu_f<OP, true>{(const char *)a->data, (const char *)b->data, (char *)d->data, sa, sb, sd, a->type,
                                    b->type, d->type, ox, og, p}, d, c->stream);
    else
        launch_rows(glu_f<OP, false>{(const char *)a->data, (const char *)b->data, (char *)d->data, sa, sb, sd,
                                     a->type, b->type, d->type, ox, og, p}, d, c->stream);
}

/* ------------------------------------------------------------------ SUM_ROWS, norms */

/* KIND: 0 NORM, 1 RMS_NORM, 2 L2_NORM, 3 SUM_ROWS */
template <int KIND>
__global__ void k_norm(const char *a, ggc_cuda_shape sa, ggc_type ta, char *d, ggc_cuda_shape sd, ggc_type td,
                       int64_t nrows, float eps) {
    GGC_PDL_BEGIN();
    __shared__ float sbuf[32];
    const int64_t ne0 = sa.ne[0];
    const int tx = threadIdx.x, bx = blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; r < nrows; r += (int64_t)gridDim.x * blockDim.y) {
        const int64_t i1 = r % sa.ne[1], t = r / sa.ne[1], i2 = t % sa.ne[2], i3 = t / sa.ne[2];
        const char *x = row_of(a, sa, i1, i2, i3);
        char *y = row_of(d, sd, i1, i2, i3);
        float s = 0.0f;
        for (int64_t i = tx; i < ne0; i += bx) {
            const float v = ggc_load_f(x + i * sa.nb[0], ta);
            s += KIND == 0 || KIND == 3 ? v : v * v;
        }
        s = row_sum(s, sbuf);
        if (KIND == 3) {
            if (tx == 0) ggc_store_f(y, td, s);
            continue;
        }
        float scale, mean = 0.0f;
        if (KIND == 0) {
            mean = s / (float)ne0;
            float v2 = 0.0f;
            for (int64_t i = tx; i < ne0; i += bx) {
                const float v = ggc_load_f(x + i * sa.nb[0], ta) - mean;
                v2 = fmaf(v, v, v2);
            }
            v2 = row_sum(v2, sbuf);
            scale = 1.0f / sqrtf(v2 / (float)ne0 + eps);
        } else if (KIND == 1) {
            scale = 1.0f / sqrtf(s / (float)ne0 + eps);
        } else {
            scale = 1.0f / fmaxf(sqrtf(s), eps);
        }
        for (int64_t i = tx; i < ne0; i += bx)
            ggc_store_f(y + i * sd.nb[0], td, (ggc_load_f(x + i * sa.nb[0], ta) - mean) * scale);
    }
}

template <int KIND>
void norm_op(const ggc_node *n, const ggc_cuda_ctx *c, const char *name) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    if (!is_float_type(a->type) || !is_float_type(d->type)) GGC_UNSUPPORTED("%s on types %d -> %d", name, a->type, d->type);
    const int64_t nr = nrows_of(a);
    if (nr <= 0 || a->ne[0] <= 0) return;
    const red_cfg rc = red_config(a->ne[0], nr);
    ggc_launch(k_norm<KIND>, rc.grid, rc.block, 0, c->stream, (const char *)a->data, ggc_cuda_shape_of(a), a->type,
                                                      (char *)d->data, ggc_cuda_shape_of(d), d->type, nr,
                                                      KIND == 3 ? 0.0f : param_f(n, 0));
}

/* ------------------------------------------------------------------ CONCAT */

template <typename W>
__global__ void k_concat(const char *a, ggc_cuda_shape sa, const char *b, ggc_cuda_shape sb, char *d,
                         ggc_cuda_shape sd, int64_t ne0, int64_t a0, int64_t o1, int64_t o2, int64_t o3, int64_t o0,
                         int words, int64_t total) {
    GGC_PDL_BEGIN();
    /* ne0, a0, o0 in elements (blocks for quantized types); sd.ne[1..3] are dst's */
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i0 = idx % ne0, r = idx / ne0;
        const int64_t i1 = r % sd.ne[1], t = r / sd.ne[1], i2 = t % sd.ne[2], i3 = t / sd.ne[2];
        const bool in_a = i1 < sa.ne[1] && i2 < sa.ne[2] && i3 < sa.ne[3] && i0 < a0;
        const W *src = in_a ? (const W *)(a + i0 * sa.nb[0] + i1 * sa.nb[1] + i2 * sa.nb[2] + i3 * sa.nb[3])
                            : (const W *)(b + (i0 - o0) * sb.nb[0] + (i1 - o1) * sb.nb[1] + (i2 - o2) * sb.nb[2] +
                                          (i3 - o3) * sb.nb[3]);
        W *dst = (W *)(d + i0 * sd.nb[0] + i1 * sd.nb[1] + i2 * sd.nb[2] + i3 * sd.nb[3]);
        for (int w = 0; w < words; w++) dst[w] = src[w];
    }
}

/* ------------------------------------------------------------------ ARGSORT, TOP_K (bitonic) */

constexpr int SORT_SMEM_MAX = 16384; /* elements (padded) of a row sorted in shared memory at once */
constexpr int SORT_TILE = 2048;      /* tile of the work-memory path */

struct sort_key {
    float v;
    int i;
};

/* a before b: by value (ascending, or descending), ties by index; padding (i >= n) last */
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib, int n, bool desc) {
    if (ia >= n) return false;
    if (ib >= n) return true;
    if (va == vb) return ia < ib;
    return desc ? va > vb : va < vb;
}

__device__ __forceinline__ void cswap(float *sv, int *si, int i, int l, bool up, int n, bool desc) {
    const float vi = sv[i], vl = sv[l];
    const int ii = si[i], il = si[l];
    const bool sw = up ? before(vl, il, vi, ii, n, desc) : before(vi, ii, vl, il, n, desc);
    if (sw) {
        sv[i] = vl;
        sv[l] = vi;
        si[i] = il;
        si[l] = ii;
    }
}

/* the bitonic network on len elements in shared memory, whose first has global index base: stages
 * k = k_lo .. k_hi (powers of two), the first starting at j = min(j_first, k_lo / 2) */
__device__ void bitonic_local(float *sv, int *si, int len, int base, int k_lo, int k_hi, int j_first, int n, bool desc) {
    for (int k = k_lo; k <= k_hi; k <<= 1) {
        for (int j = k == k_lo ? min(j_first, k >> 1) : k >> 1; j > 0; j >>= 1) {
            for (int t = threadIdx.x; t < len / 2; t += blockDim.x) {
                const int i = 2 * t - (t & (j - 1)), l = i + j;
                cswap(sv, si, i, l, ((base + i) & k) == 0, n, desc);
            }
            __syncthreads();
        }
    }
}

/* write the sorted indices of a row: all (ARGSORT) or the first k with the first two swapped (TOP_K) */
__device__ __forceinline__ void sort_out(char *drow, int64_t nb0, const int *si, int kout, bool topk) {
    for (int i = threadIdx.x; i < kout; i += blockDim.x) {
        int src = i;
        if (topk && kout > 1 && i < 2) src = 1 - i;
        *(int32_t *)(drow + i * nb0) = si[src];
    }
}

/* a whole row in shared memory: one block per row */
__global__ void k_sort_rows(const char *a, ggc_cuda_shape sa, char *d, ggc_cuda_shape sd, int n, int n_pad, int kout,
                            bool desc, bool topk) {
    GGC_PDL_BEGIN();
    extern __shared__ float smem_sort[];
    float *sv = smem_sort;
    int *si = (int *)(smem_sort + n_pad);
    const int64_t r = blockIdx.x;
    const int64_t i1 = r % sa.ne[1], t = r / sa.ne[1], i2 = t % sa.ne[2], i3 = t / sa.ne[2];
    const char *x = row_of(a, sa, i1, i2, i3);
    for (int i = threadIdx.x; i < n_pad; i += blockDim.x) {
        sv[i] = i < n ? *(const float *)(x + i * sa.nb[0]) : 0.0f;
        si[i] = i;
    }
    __syncthreads();
    bitonic_local(sv, si, n_pad, 0, 2, n_pad, 1, n, desc);
    sort_out(row_of(d, sd, i1, i2, i3), sd.nb[0], si, kout, topk);
}

/* work-memory path: rows padded to n_pad in wv/wi */
__global__ void k_sort_init(const char *a, ggc_cuda_shape sa, float *wv, int *wi, int n, int n_pad, int64_t total) {
    GGC_PDL_BEGIN();
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = idx / n_pad;
        const int i = (int)(idx % n_pad);
        const int64_t i1 = r % sa.ne[1], t = r / sa.ne[1], i2 = t % sa.ne[2], i3 = t / sa.ne[2];
        wv[idx] = i < n ? *(const float *)(row_of(a, sa, i1, i2, i3) + i * sa.nb[0]) : 0.0f;
        wi[idx] = i;
    }
}
/* tiles of SORT_TILE elements through shared memory; grid: (tiles per row, rows) */
__global__ void k_sort_tile(float *wv, int *wi, int n, int n_pad, int k_lo, int k_hi, int j_first, bool desc) {
    GGC_PDL_BEGIN();
    __shared__ float sv[SORT_TILE];
    __shared__ int si[SORT_TILE];
    const int64_t off = (int64_t)blockIdx.y * n_pad + (int64_t)blockIdx.x * SORT_TILE;
    for (int i = threadIdx.x; i < SORT_TILE; i += blockDim.x) {
        sv[i] = wv[off + i];
        si[i] = wi[off + i];
    }
    __syncthreads();
    bitonic_local(sv, si, SORT_TILE, blockIdx.x * SORT_TILE, k_lo, k_hi, j_first, n, desc);
    for (int i = threadIdx.x; i < SORT_TILE; i += blockDim.x) {
        wv[off + i] = sv[i];
        wi[off + i] = si[i];
    }
}
/* one compare-exchange step (k, j) over every row, in global memory */
__global__ void k_sort_step(float *wv, int *wi, int n, int n_pad, int k, int j, bool desc, int64_t total_pairs) {
    GGC_PDL_BEGIN();
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < total_pairs; p += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = p / (n_pad / 2);
        const int t = (int)(p % (n_pad / 2));
        const int i = 2 * t - (t & (j - 1));
        cswap(wv + r * n_pad, wi + r * n_pad, i, i + j, (i & k) == 0, n, desc);
    }
}
__global__ void k_sort_out(const int *wi, char *d, ggc_cuda_shape sd, int n_pad, int kout, bool topk) {
    GGC_PDL_BEGIN();
    const int64_t r = blockIdx.x;
    const int64_t i1 = r % sd.ne[1], t = r / sd.ne[1], i2 = t % sd.ne[2], i3 = t / sd.ne[2];
    sort_out(row_of(d, sd, i1, i2, i3), sd.nb[0], wi + r * n_pad, kout, topk);
}

inline int next_pow2(int64_t n) {
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

size_t sort_work(const ggc_node *n) {
    const int n_pad = next_pow2(n->src[0].ne[0]);
    if (n_pad <= SORT_SMEM_MAX) return 0;
    return (size_t)nrows_of(&n->src[0]) * (size_t)n_pad * (sizeof(float) + sizeof(int));
}

void sort_op(const ggc_node *n, const ggc_cuda_ctx *c, bool desc, bool topk) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    if (a->type != GGC_TYPE_F32 || d->type != GGC_TYPE_I32) GGC_UNSUPPORTED("argsort/top_k: f32 -> i32 only");
    if (a->ne[0] > 0x3fffffff) GGC_UNSUPPORTED("argsort/top_k: rows longer than 2^30");
    const int n0 = (int)a->ne[0], n_pad = next_pow2(n0), kout = (int)d->ne[0];
    const int64_t nr = nrows_of(a);
    if (nr <= 0 || n0 <= 0) return;
    const ggc_cuda_shape sa = ggc_cuda_shape_of(a), sd = ggc_cuda_shape_of(d);
    if (n_pad <= SORT_SMEM_MAX) {
        const size_t smem = (size_t)n_pad * (sizeof(float) + sizeof(int));
        if (smem > 48 * 1024)
            GGC_CUDA_CHECK(cudaFuncSetAttribute(k_sort_rows, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        const int threads = n_pad / 2 < 32 ? 32 : n_pad / 2 > 1024 ? 1024 : n_pad / 2;
        if (nr > 0x7fffffff) GGC_UNSUPPORTED("argsort/top_k: more than 2^31 rows");
        ggc_launch(k_sort_rows, (unsigned)nr, threads, smem, c->stream, (const char *)a->data, sa, (char *)d->data, sd, n0, n_pad,
                                                                 kout, desc, topk);
        return;
    }
    const size_t need = sort_work(n);
    if (c->work == nullptr || c->work_size < need)
        GGC_UNSUPPORTED("argsort/top_k of %d elements needs %zu bytes of work memory, have %zu", n0, need, c->work_size);
    float *wv = (float *)c->work;
    int *wi = (int *)(wv + (size_t)nr * n_pad);
    const int64_t total = nr * n_pad;
    ggc_launch(k_sort_init, ggc_cuda_grid(total, 256), 256, 0, c->stream, (const char *)a->data, sa, wv, wi, n0, n_pad, total);
    const dim3 tiles((unsigned)(n_pad / SORT_TILE), (unsigned)nr, 1);
    ggc_launch(k_sort_tile, tiles, 1024, 0, c->stream, wv, wi, n0, n_pad, 2, SORT_TILE, 1, desc);
    for (int k = 2 * SORT_TILE; k <= n_pad; k <<= 1) {
        for (int j = k >> 1; j >= SORT_TILE; j >>= 1) {
            ggc_launch(k_sort_step, ggc_cuda_grid(total / 2, 256), 256, 0, c->stream, wv, wi, n0, n_pad, k, j, desc, total / 2);
        }
        ggc_launch(k_sort_tile, tiles, 1024, 0, c->stream, wv, wi, n0, n_pad, k, k, SORT_TILE / 2, desc);
    }
    ggc_launch(k_sort_out, (unsigned)nr, 256, 0, c->stream, wi, (char *)d->data, sd, n_pad, kout, topk);
}

/* ------------------------------------------------------------------ ROPE */

enum { MODE_NEOX = 2, MODE_MROPE = 8, MODE_VISION = 24, MODE_IMROPE = 40 };

struct rope_args {
    const char *a;
    char *d;
    ggc_cuda_shape sa, sd;
    ggc_type ta, td;
    const int32_t *pos;
    const float *ff;
    int mode, n_dims, n_offs, sections[4];
    ggc_rope_yarn y;
    int64_t n_pairs, first, step, offset;
    bool copy_rest;
    /* rows mode (a ROPE and the SET_ROWS that stores it, fused): token i2's heads go side by side
     * into row rows[i2] (i32 / i64) of d, a cache of n_rows rows of row_nb bytes; sd then has a's
     * shape with nb0 = the cache's element size and nb1 = a head's bytes there */
    const char *rows;
    bool rows64;
    int64_t n_rows, row_nb;
    int64_t head_tiles; /* grid z blocks of this ROPE: > 1 splits its heads into tiles of blockDim.y */
};
/* one launch of one or two ROPEs (twins: the same positions and parameters, Q's and K's heads); grid z
 * blocks [0, z_split) are the first's head tiles, the rest the second's */
struct rope_launch {
    rope_args s[2];
    unsigned z_split;
};

/* where head i1 of token (i2, i3) goes */
__device__ __forceinline__ char *rope_out(const rope_args &p, int64_t i1, int64_t i2, int64_t i3) {
    if (!p.rows) return row_of(p.d, p.sd, i1, i2, i3);
    const int64_t r = p.rows64 ? ((const int64_t *)p.rows)[i2] : ((const int32_t *)p.rows)[i2];
    return r >= 0 && r < p.n_rows ? p.d + r * p.row_nb + i1 * p.sd.nb[1] : nullptr; /* ggml asserts the range */
}

/* the angle of pair pp for this token, by ggml's recurrence (ggml_rope_cache_init /
 * ggml_mrope_cache_init): the streams start at the positions and are multiplied by theta_scale
 * once per pair, in f32 */
__device__ float rope_theta(const rope_args &p, int64_t i2, int64_t pp) {
    const int64_t ne2 = p.sa.ne[2];
    if (!(p.mode & MODE_MROPE)) {
        return ggc_rope_theta((float)p.pos[i2], pp, p.y.theta_scale);
    }
    float th[4], base[4];
    for (int k = 0; k < 4; k++) base[k] = th[k] = (float)p.pos[i2 + k * ne2];
    const int *sec = p.sections;
    const int sect_dims = sec[0] + sec[1] + sec[2] + sec[3], sec_w = sec[0] + sec[1], sec_e = sec_w + sec[2];
    float theta = th[0];
    for (int64_t q = 0; q <= pp; q++) {
        const int sector = (int)(q % sect_dims);
        if (p.mode == MODE_VISION) {
            if (sector == 0) th[0] = base[0];
            else if (sector == sec[0]) th[1] = base[1];
            else if (sector == sec_w) th[2] = base[2];
            else if (sector == sec_e) th[3] = base[3];
        }
        theta = th[0];
        if (p.mode == MODE_IMROPE) {
            if (sector % 3 == 1 && sector < 3 * sec[1]) theta = th[1];
            else if (sector % 3 == 2 && sector < 3 * sec[2]) theta = th[2];
            else if (sector % 3 == 0 && sector < 3 * sec[0]) theta = th[0];
            else theta = th[3];
        } else {
            if (sector >= sec[0] && sector < sec_w) theta = th[1];
            else if (sector >= sec_w && sector < sec_w + sec[2]) theta = th[2];
            else if (sector >= sec_w + sec[2]) theta = th[3];
        }
        for (int k = 0; k < 4; k++) th[k] *= p.y.theta_scale;
    }
    return theta;
}

/* grid: x = token (i2 + ne2 * i3), y = pair tiles, z = head tiles; block (pairs, heads): a decode
 * step's one token still spreads over many blocks (a block per token alone ran its heads serially).
 * z: this ROPE's head tile */
__device__ __forceinline__ void rope_block(const rope_args &p, int64_t z) {
    const int64_t t = blockIdx.x, ne2 = p.sd.ne[2], i2 = t % ne2, i3 = t / ne2, ne1 = p.sd.ne[1];
    const int64_t pp = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    const bool tiled = p.head_tiles > 1;
    const int64_t h0 = tiled ? z * blockDim.y : 0, h1 = tiled ? min(ne1, h0 + (int64_t)blockDim.y) : ne1;
    if (pp < p.n_pairs && h0 < ne1) {
        const float2 cs = ggc_rope_cs(rope_theta(p, i2, pp), pp, p.ff, p.y);
        const int64_t j = p.first + pp * p.step;
        for (int64_t i1 = h0 + threadIdx.y; i1 < h1; i1 += blockDim.y) {
            const char *x = row_of(p.a, p.sa, i1, i2, i3);
            char *y = rope_out(p, i1, i2, i3);
            if (!y) continue;
            const float x0 = ggc_load_f(x + j * p.sa.nb[0], p.ta), x1 = ggc_load_f(x + (j + p.offset) * p.sa.nb[0], p.ta);
            ggc_store_f(y + j * p.sd.nb[0], p.td, ggc_rope_first(x0, x1, cs));
            ggc_store_f(y + (j + p.offset) * p.sd.nb[0], p.td, ggc_rope_second(x0, x1, cs));
        }
    }
    if (p.copy_rest && blockIdx.y == 0 && z == 0) { /* channels outside the rotated span pass through */
        const int64_t nrest = p.sd.ne[0] - p.n_dims;
        const int nt = blockDim.x * blockDim.y;
        for (int64_t idx = threadIdx.y * blockDim.x + threadIdx.x; idx < ne1 * nrest; idx += nt) {
            const int64_t i1 = idx / nrest, cc = idx % nrest;
            const int64_t i0 = cc < p.n_offs ? cc : cc + p.n_dims;
            const float v = ggc_load_f(row_of(p.a, p.sa, i1, i2, i3) + i0 * p.sa.nb[0], p.ta);
            char *y = rope_out(p, i1, i2, i3);
            if (y) ggc_store_f(y + i0 * p.sd.nb[0], p.td, v);
        }
    }
}

__global__ void k_rope(const rope_launch L) {
    GGC_PDL_BEGIN();
    if (blockIdx.z < L.z_split) rope_block(L.s[0], blockIdx.z); /* each branch reads its arguments in place */
    else rope_block(L.s[1], blockIdx.z - L.z_split);
}

/* ------------------------------------------------------------------ SOFT_MAX */

struct softmax_args {
    const char *a, *mask;
    char *d;
    const float *sinks;
    ggc_cuda_shape sa, sm, sd;
    ggc_type tm;
    float scale, max_bias, m0, m1;
    uint32_t n_head_log2;
    int64_t nrows;
    bool cache; /* block mode: the row's logits staged in dynamic shared memory */
};

__device__ __forceinline__ float alibi_slope(float max_bias, float m0, float m1, uint32_t n_head_log2, uint32_t h) {
    if (!(max_bias > 0.0f)) return 1.0f;
    return h < n_head_log2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n_head_log2) + 1));
}

/* threads of blockDim.x per row (a warp: 4 rows per block; more: one row per block) */
__global__ void k_soft_max(softmax_args p) {
    GGC_PDL_BEGIN();
    extern __shared__ float smem_row[];
    __shared__ float sbuf[32];
    const int64_t ne0 = p.sa.ne[0];
    const int tx = threadIdx.x, bx = blockDim.x;
    float *cache = smem_row + threadIdx.y * ne0; /* this row's logits (warp mode: one row per warp) */
    for (int64_t r = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; r < p.nrows; r += (int64_t)gridDim.x * blockDim.y) {
        const int64_t i1 = r % p.sa.ne[1], t = r / p.sa.ne[1], i2 = t % p.sa.ne[2], i3 = t / p.sa.ne[2];
        const char *x = row_of(p.a, p.sa, i1, i2, i3);
        char *y = row_of(p.d, p.sd, i1, i2, i3);
        const char *m = p.mask ? row_of(p.mask, p.sm, i1, i2 % p.sm.ne[2], i3 % p.sm.ne[3]) : nullptr;
        const float slope = alibi_slope(p.max_bias, p.m0, p.m1, p.n_head_log2, (uint32_t)i2);
        const bool alibi = p.max_bias > 0.0f;
        auto logit = [&](int64_t i) {
            float v = *(const float *)(x + i * p.sa.nb[0]) * p.scale;
            if (m) {
                const float mv = ggc_load_f(m + i * p.sm.nb[0], p.tm);
                v = alibi ? fmaf(slope, mv, v) : v + mv;
            }
            return v;
        };
        float mx = -INFINITY;
        for (int64_t i = tx; i < ne0; i += bx) {
            const float v = logit(i);
            if (p.cache) cache[i] = v;
            mx = fmaxf(mx, v);
        }
        mx = row_max(mx, sbuf);
        const float sink = p.sinks ? p.sinks[i2] : 0.0f;
        if (p.sinks) mx = fmaxf(mx, sink);
        float sum = 0.0f;
        for (int64_t i = tx; i < ne0; i += bx) sum += expf((p.cache ? cache[i] : logit(i)) - mx);
        sum = row_sum(sum, sbuf);
        if (p.sinks) sum += expf(sink - mx);
        const float inv = 1.0f / sum;
        for (int64_t i = tx; i < ne0; i += bx)
            *(float *)(y + i * p.sd.nb[0]) = expf((p.cache ? cache[i] : logit(i)) - mx) * inv;
        if (p.cache) { /* the next row overwrites the cache */
            if (bx > 32) __syncthreads();
            else __syncwarp();
        }
    }
}

} // namespace

/* ================================================================== entry points */

extern "C" {

void ggc_cuda_op_add(const ggc_node *n, const ggc_cuda_ctx *c) { binary<op_add>(n, c, "ADD"); }
void ggc_cuda_op_sub(const ggc_node *n, const ggc_cuda_ctx *c) { binary<op_sub>(n, c, "SUB"); }
void ggc_cuda_op_mul(const ggc_node *n, const ggc_cuda_ctx *c) { binary<op_mul>(n, c, "MUL"); }
void ggc_cuda_op_div(const ggc_node *n, const ggc_cuda_ctx *c) { binary<op_div>(n, c, "DIV"); }

void ggc_cuda_op_add_id(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *ids = &n->src[2], *d = &n->dst;
    if (!is_float_type(a->type) || !is_float_type(b->type) || ids->type != GGC_TYPE_I32)
        GGC_UNSUPPORTED("ADD_ID of types %d, %d, %d", a->type, b->type, ids->type);
    launch_rows(add_id_f{(const char *)a->data, (const char *)b->data, (const char *)ids->data, (char *)d->data,
                         ggc_cuda_shape_of(a), ggc_cuda_shape_of(b), ggc_cuda_shape_of(ids), ggc_cuda_shape_of(d),
                         a->type, b->type, d->type}, d, c->stream);
}

void ggc_cuda_op_scale(const ggc_node *n, const ggc_cuda_ctx *c) { unary<u_scale>(n, c, params_of(n)); }
void ggc_cuda_op_clamp(const ggc_node *n, const ggc_cuda_ctx *c) { unary<u_clamp>(n, c, params_of(n)); }

void ggc_cuda_op_sum_rows(const ggc_node *n, const ggc_cuda_ctx *c) { norm_op<3>(n, c, "SUM_ROWS"); }
void ggc_cuda_op_norm(const ggc_node *n, const ggc_cuda_ctx *c) { norm_op<0>(n, c, "NORM"); }
void ggc_cuda_op_rms_norm(const ggc_node *n, const ggc_cuda_ctx *c) { norm_op<1>(n, c, "RMS_NORM"); }
void ggc_cuda_op_l2_norm(const ggc_node *n, const ggc_cuda_ctx *c) { norm_op<2>(n, c, "L2_NORM"); }

void ggc_cuda_op_concat(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    const int dim = n->op_params[0];
    if (dim < 0 || dim > 3 || a->type != d->type || b->type != d->type) GGC_UNSUPPORTED("CONCAT dim %d", dim);
    const int blck = ggc_cuda_blck(d->type), esize = ggc_cuda_tsize(d->type);
    const int64_t ne0 = d->ne[0] / blck, a0 = a->ne[0] / blck;
    int64_t o[4] = {0, 0, 0, 0};
    o[dim] = dim == 0 ? a0 : a->ne[dim];
    const int64_t total = ne0 * nrows_of(d);
    if (total <= 0) return;
    uintptr_t al = (uintptr_t)a->data | (uintptr_t)b->data | (uintptr_t)d->data | (uintptr_t)esize;
    for (int i = 0; i < 4; i++) al |= a->nb[i] | b->nb[i] | d->nb[i];
    const ggc_cuda_shape sa = ggc_cuda_shape_of(a), sb = ggc_cuda_shape_of(b), sd = ggc_cuda_shape_of(d);
    const unsigned grid = ggc_cuda_grid(total, 256);
    if (al % 4 == 0)
        ggc_launch(k_concat<uint32_t>, grid, 256, 0, c->stream, (const char *)a->data, sa, (const char *)b->data, sb,
                                                         (char *)d->data, sd, ne0, a0, o[1], o[2], o[3], o[0], esize / 4, total);
    else if (al % 2 == 0)
        ggc_launch(k_concat<uint16_t>, grid, 256, 0, c->stream, (const char *)a->data, sa, (const char *)b->data, sb,
                                                         (char *)d->data, sd, ne0, a0, o[1], o[2], o[3], o[0], esize / 2, total);
    else
        ggc_launch(k_concat<uint8_t>, grid, 256, 0, c->stream, (const char *)a->data, sa, (const char *)b->data, sb,
                                                        (char *)d->data, sd, ne0, a0, o[1], o[2], o[3], o[0], esize, total);
}

size_t ggc_cuda_work_argsort(const ggc_node *n) { return sort_work(n); }
size_t ggc_cuda_work_top_k(const ggc_node *n) { return sort_work(n); }
void ggc_cuda_op_argsort(const ggc_node *n, const ggc_cuda_ctx *c) { sort_op(n, c, n->op_params[0] == 1, false); }
void ggc_cuda_op_top_k(const ggc_node *n, const ggc_cuda_ctx *c) { sort_op(n, c, true, true); }

#define UNARY_ENTRY(name)                                                                            \
    void ggc_cuda_op_unary_##name(const ggc_node *n, const ggc_cuda_ctx *c) { unary<u_##name>(n, c, params_of(n)); }
UNARY_ENTRY(abs)
UNARY_ENTRY(sgn)
UNARY_ENTRY(neg)
UNARY_ENTRY(step)
UNARY_ENTRY(tanh)
UNARY_ENTRY(elu)
UNARY_ENTRY(relu)
UNARY_ENTRY(sigmoid)
UNARY_ENTRY(gelu)
UNARY_ENTRY(gelu_quick)
UNARY_ENTRY(gelu_erf)
UNARY_ENTRY(silu)
UNARY_ENTRY(hardswish)
UNARY_ENTRY(hardsigmoid)
UNARY_ENTRY(exp)
UNARY_ENTRY(expm1)
UNARY_ENTRY(softplus)
UNARY_ENTRY(floor)
UNARY_ENTRY(ceil)
UNARY_ENTRY(round)
UNARY_ENTRY(trunc)
UNARY_ENTRY(xielu)

#define GLU_ENTRY(name)                                                                              \
    void ggc_cuda_op_glu_##name(const ggc_node *n, const ggc_cuda_ctx *c) { glu<g_##name>(n, c); }
GLU_ENTRY(reglu)
GLU_ENTRY(geglu)
GLU_ENTRY(swiglu)
GLU_ENTRY(swiglu_oai)
GLU_ENTRY(geglu_erf)
GLU_ENTRY(geglu_quick)
GLU_ENTRY(swiglu_clamp)

namespace {
/* one ROPE of node n's parameters: a -> d, or (ix: SET_ROWS' indices) into the rows of cache d that ix
 * picks; block (bx, by) and its pair tiles are the same for every ROPE of these parameters */
rope_args rope_of(const ggc_node *n, const ggc_tensor *a, const ggc_tensor *d, const ggc_tensor *ix) {
    const ggc_tensor *pos = &n->src[1];
    const bool to_rows = ix && ix->data != nullptr;
    if (!is_float_type(a->type) || !is_float_type(d->type) || (!to_rows && a->type != d->type) ||
        pos->type != GGC_TYPE_I32)
        GGC_UNSUPPORTED("ROPE of types %d -> %d, positions %d", a->type, d->type, pos->type);
    rope_args p;
    p.a = (const char *)a->data;
    p.d = (char *)d->data;
    p.sa = ggc_cuda_shape_of(a);
    p.sd = ggc_cuda_shape_of(d);
    p.rows = nullptr;
    if (to_rows) {
        if (a->ne[3] != 1 || ix->ne[0] != a->ne[2] || ggc_cuda_nelements(ix) != a->ne[2] ||
            d->ne[0] != a->ne[0] * a->ne[1] || d->nb[0] != (size_t)ggc_cuda_tsize(d->type) ||
            (ix->type != GGC_TYPE_I32 && ix->type != GGC_TYPE_I64) || (ix->type == GGC_TYPE_I64 ? 8 : 4) != ix->nb[0])
            GGC_UNSUPPORTED("ROPE into SET_ROWS rows: one sequence, a row per token, rows of all heads");
        p.rows = (const char *)ix->data;
        p.rows64 = ix->type == GGC_TYPE_I64;
        p.n_rows = d->ne[1];
        p.row_nb = (int64_t)d->nb[1];
        p.sd = p.sa; /* the logical shape is src0's; addresses come from rope_out */
        p.sd.nb[0] = d->nb[0];
        p.sd.nb[1] = (int64_t)d->nb[0] * a->ne[0];
    }
    p.ta = a->type;
    p.td = d->type;
    p.pos = (const int32_t *)pos->data;
    p.ff = n->src[2].data ? (const float *)n->src[2].data : nullptr;
    p.n_dims = n->op_params[1];
    p.mode = n->op_params[2];
    p.n_offs = n->op_params[15];
    for (int k = 0; k < 4; k++) p.sections[k] = n->op_params[11 + k];
    p.y = ggc_rope_yarn_of(n, p.n_dims);
    const bool vision = p.mode == MODE_VISION;
    p.n_pairs = vision ? p.sd.ne[0] / 2 : p.n_dims / 2;
    p.first = vision ? 0 : p.n_offs;
    p.step = (p.mode & MODE_NEOX) || (p.mode & MODE_MROPE) ? 1 : 2;
    p.offset = vision ? p.n_dims : p.step == 1 ? p.n_dims / 2 : 1;
    p.copy_rest = !vision && p.sd.ne[0] > p.n_dims && !same_view(a, d);
    p.head_tiles = 1;
    return p;
}
} // namespace

/* src[3], when present (the generated program adds it for a ROPE whose only reader is a SET_ROWS
 * of its rows, and checked the shapes): SET_ROWS' row indices, one per token; dst is then the
 * SET_ROWS' destination (a float cache, [ne0 * ne1 of src0, rows]) and the roped rows go there.
 * src[4], when present: a twin ROPE (the same positions, frequency factors and parameters, as the
 * generated program checked) of input src[4] into src[5], or into the cache rows src[6] picks. */
void ggc_cuda_op_rope(const ggc_node *n, const ggc_cuda_ctx *c) {
    const bool twin = n->src[4].data != nullptr;
    rope_launch L;
    L.s[0] = rope_of(n, &n->src[0], &n->dst, &n->src[3]);
    L.s[1] = twin ? rope_of(n, &n->src[4], &n->src[5], &n->src[6]) : L.s[0];
    const rope_args &p = L.s[0];
    const int64_t tokens = p.sd.ne[2] * p.sd.ne[3];
    if (twin && L.s[1].sd.ne[2] * L.s[1].sd.ne[3] != tokens) GGC_UNSUPPORTED("twin ROPEs of different token counts");
    if (tokens <= 0) return;
    if (p.n_pairs < 1 && !p.copy_rest && !L.s[1].copy_rest) return;
    int bx = (int)((p.n_pairs + 31) / 32) * 32;
    if (bx < 32) bx = 32;
    if (bx > 128) bx = 128;
    const int by = 128 / bx;
    const int64_t gy = p.n_pairs > 0 ? ggc_cdiv(p.n_pairs, bx) : 1;
    /* head tiles: enough blocks to fill the GPU for one token, one tile for long batches */
    int64_t gz = 0;
    for (int k = 0; k < (twin ? 2 : 1); k++) {
        const int64_t heads = L.s[k].sd.ne[1];
        L.s[k].head_tiles = tokens >= 64 ? 1 : ggc_cdiv(heads, by);
        if (heads <= 0) L.s[k].head_tiles = 0; /* nothing to rope: no blocks */
        if (k == 0) L.z_split = (unsigned)L.s[0].head_tiles;
        gz += L.s[k].head_tiles;
    }
    if (gz == 0) return;
    if (tokens > 0x7fffffff || gy > 65535 || gz > 65535) GGC_UNSUPPORTED("ROPE grid too large");
    ggc_launch(k_rope, dim3((unsigned)tokens, (unsigned)gy, (unsigned)gz), dim3(bx, by, 1), 0, c->stream, L);
}

void ggc_cuda_op_soft_max(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const ggc_tensor *mask = n->src[1].data ? &n->src[1] : nullptr, *sinks = n->src[2].data ? &n->src[2] : nullptr;
    if (a->type != GGC_TYPE_F32 || d->type != GGC_TYPE_F32) GGC_UNSUPPORTED("SOFT_MAX: f32 only");
    if (mask && mask->type != GGC_TYPE_F16 && mask->type != GGC_TYPE_F32) GGC_UNSUPPORTED("SOFT_MAX mask type %d", mask->type);
    softmax_args p;
    p.a = (const char *)a->data;
    p.mask = mask ? (const char *)mask->data : nullptr;
    p.d = (char *)d->data;
    p.sinks = sinks ? (const float *)sinks->data : nullptr;
    p.sa = ggc_cuda_shape_of(a);
    p.sm = mask ? ggc_cuda_shape_of(mask) : p.sa;
    p.sd = ggc_cuda_shape_of(d);
    p.tm = mask ? mask->type : GGC_TYPE_F32;
    p.scale = param_f(n, 0);
    p.max_bias = param_f(n, 1);
    const uint32_t n_head = (uint32_t)a->ne[2];
    p.n_head_log2 = n_head > 0 ? 1u << (uint32_t)floor(log2((double)n_head)) : 1u;
    p.m0 = powf(2.0f, -(p.max_bias) / (float)p.n_head_log2);
    p.m1 = powf(2.0f, -(p.max_bias / 2.0f) / (float)p.n_head_log2);
    p.nrows = nrows_of(a);
    if (p.nrows <= 0 || a->ne[0] <= 0) return;
    const red_cfg rc = red_config(a->ne[0], p.nrows, 1024); /* a warp per row up to 1024 */
    size_t smem = (size_t)a->ne[0] * rc.block.y * sizeof(float);
    p.cache = smem <= 48 * 1024;
    if (!p.cache) smem = 0;
    ggc_launch(k_soft_max, rc.grid, rc.block, smem, c->stream, p);
}

} // extern "C"
