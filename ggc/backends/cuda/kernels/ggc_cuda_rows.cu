/* ggc CUDA: row gathers and copies: GET_ROWS, SET_ROWS, CPY, CONT, DUP, as ggml.
 *
 * Copies move element k of the source, counted in logical order (i0 fastest, through the
 * strides), to element k of the destination; shapes may differ when the element counts agree.
 * A quantized side moves whole blocks: a quantized destination is written one block per thread
 * with ggml's reference quantizer (q8_0 / q4_0 / q4_1 / q5_0 / q5_1), a quantized source is read
 * 8 decoded elements at a time. Same-type copies move units (elements or blocks) as bytes, or the
 * whole span with one cudaMemcpyAsync when both sides are contiguous.
 */
#include "ggc_cuda.cuh"
#include "ggc_cuda_quants.cuh"

/* a tensor counted in units: elements, or blocks of a quantized type */
struct ggc_units {
    uint8_t *data;
    int64_t ne[4], nb[4];
};
typedef ggc_units units;

namespace {

units as_units(const ggc_tensor *t) {
    units u;
    u.data = (uint8_t *)t->data;
    for (int i = 0; i < 4; i++) {
        u.ne[i] = t->ne[i];
        u.nb[i] = (int64_t)t->nb[i];
    }
    u.ne[0] /= ggc_cuda_blck(t->type);
    return u;
}

int64_t nunits(const units &u) { return u.ne[0] * u.ne[1] * u.ne[2] * u.ne[3]; }

bool contiguous(const ggc_tensor *t) { return ggc_cuda_is_contiguous(t); }

}  // namespace

/* byte address of the k-th unit in logical order */
static __device__ __forceinline__ uint8_t *ggc_unit_ptr(const units &u, int64_t k) {
    const int64_t i0 = k % u.ne[0];
    k /= u.ne[0];
    const int64_t i1 = k % u.ne[1];
    k /= u.ne[1];
    const int64_t i2 = k % u.ne[2], i3 = k / u.ne[2];
    return u.data + i0 * u.nb[0] + i1 * u.nb[1] + i2 * u.nb[2] + i3 * u.nb[3];
}

/* elements of f32 / f16 / bf16 / i32 tensors as float (i32 converts, truncating on store, as C) */
static __device__ __forceinline__ float ggc_load_any(const uint8_t *p, ggc_type t) {
    return t == GGC_TYPE_I32 ? (float)*(const int32_t *)p : ggc_load_f(p, t);
}
static __device__ __forceinline__ void ggc_store_any(uint8_t *p, ggc_type t, float v) {
    if (t == GGC_TYPE_I32)
        *(int32_t *)p = (int32_t)v;
    else
        ggc_store_f(p, t, v);
}

/* ------------------------------------------------------------------ same-type unit copies */

static __global__ void ggc_k_copy_units(units s, units d, int64_t n, int usz) {
    GGC_PDL_BEGIN();
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    const uint8_t *src = ggc_unit_ptr(s, k);
    uint8_t *dst = ggc_unit_ptr(d, k);
    switch (usz) {
    case 2: *(uint16_t *)dst = *(const uint16_t *)src; break;
    case 4: *(uint32_t *)dst = *(const uint32_t *)src; break;
    case 8: *(uint64_t *)dst = *(const uint64_t *)src; break;
    default:
        if (((uintptr_t)src | (uintptr_t)dst | (uintptr_t)usz) % 2 == 0)
            for (int j = 0; j < usz / 2; j++) ((uint16_t *)dst)[j] = ((const uint16_t *)src)[j];
        else
            for (int j = 0; j < usz; j++) dst[j] = src[j];
    }
}

/* ------------------------------------------------------------------ converting copies */

/* element by element between non-block types */
static __global__ void ggc_k_copy_convert(units s, ggc_type st, units d, ggc_type dt, int64_t n) {
    GGC_PDL_BEGIN();
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    ggc_store_any(ggc_unit_ptr(d, k), dt, ggc_load_any(ggc_unit_ptr(s, k), st));
}

/* quantized source -> element destination: a thread per 8 source elements */
template <ggc_type T> static __global__ void ggc_k_copy_dequant(units s, units d, ggc_type dt, int64_t n8) {
    GGC_PDL_BEGIN();
    const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n8) return;
    constexpr int B = ggc_cuda_blck(T);
    const int64_t k = c * 8; /* first logical element */
    float v[8];
    ggc_deq8<T>(ggc_unit_ptr(s, k / B), k % B, v);
#pragma unroll
    for (int j = 0; j < 8; j++) ggc_store_any(ggc_unit_ptr(d, k + j), dt, v[j]);
}

/* element source -> quantized destination: a thread per destination block */
template <ggc_type T> static __global__ void ggc_k_copy_quant(units s, ggc_type st, units d, int64_t nblk) {
    GGC_PDL_BEGIN();
    const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblk) return;
    float x[GGC_QK];
    for (int j = 0; j < GGC_QK; j++) x[j] = ggc_load_any(ggc_unit_ptr(s, b * GGC_QK + j), st);
    ggc_quant<T>::quant(x, ggc_unit_ptr(d, b));
}

namespace {

typedef void (*dequant_kernel)(units, units, ggc_type, int64_t);
typedef void (*quant_kernel)(units, ggc_type, units, int64_t);

dequant_kernel pick_dequant(ggc_type t) {
    switch (t) {
    case GGC_TYPE_Q4_0: return ggc_k_copy_dequant<GGC_TYPE_Q4_0>;
    case GGC_TYPE_Q4_1: return ggc_k_copy_dequant<GGC_TYPE_Q4_1>;
    case GGC_TYPE_Q5_0: return ggc_k_copy_dequant<GGC_TYPE_Q5_0>;
    case GGC_TYPE_Q5_1: return ggc_k_copy_dequant<GGC_TYPE_Q5_1>;
    case GGC_TYPE_Q8_0: return ggc_k_copy_dequant<GGC_TYPE_Q8_0>;
    case GGC_TYPE_Q2_K: return ggc_k_copy_dequant<GGC_TYPE_Q2_K>;
    case GGC_TYPE_Q3_K: return ggc_k_copy_dequant<GGC_TYPE_Q3_K>;
    case GGC_TYPE_Q4_K: return ggc_k_copy_dequant<GGC_TYPE_Q4_K>;
    case GGC_TYPE_Q5_K: return ggc_k_copy_dequant<GGC_TYPE_Q5_K>;
    case GGC_TYPE_Q6_K: return ggc_k_copy_dequant<GGC_TYPE_Q6_K>;
    default: return nullptr;
    }
}
quant_kernel pick_quant(ggc_type t) {
    switch (t) {
    case GGC_TYPE_Q4_0: return ggc_k_copy_quant<GGC_TYPE_Q4_0>;
    case GGC_TYPE_Q4_1: return ggc_k_copy_quant<GGC_TYPE_Q4_1>;
    case GGC_TYPE_Q5_0: return ggc_k_copy_quant<GGC_TYPE_Q5_0>;
    case GGC_TYPE_Q5_1: return ggc_k_copy_quant<GGC_TYPE_Q5_1>;
    case GGC_TYPE_Q8_0: return ggc_k_copy_quant<GGC_TYPE_Q8_0>;
    default: return nullptr;
    }
}

void copy_tensor(const ggc_tensor *s, const ggc_tensor *d, cudaStream_t st) {
    const units su = as_units(s), du = as_units(d);
    const bool sq = ggc_cuda_is_quant(s->type), dq = ggc_cuda_is_quant(d->type);
    if (s->type == d->type) {
        const int64_t n = nunits(du);
        if (n == 0) return;
        if (contiguous(s) && contiguous(d)) {
            GGC_CUDA_CHECK(cudaMemcpyAsync(d->data, s->data, (size_t)n * (size_t)ggc_cuda_tsize(d->type),
                                           cudaMemcpyDeviceToDevice, st));
            return;
        }
        ggc_launch(ggc_k_copy_units, ggc_cuda_grid(n, 256), 256, 0, st, su, du, n, ggc_cuda_tsize(d->type));
        return;
    }
    if (sq && dq) return; /* ggml converts only through f32: not an op */
    const int64_t nel = ggc_cuda_nelements(d);
    if (nel == 0) return;
    if (sq) {
        const dequant_kernel k = pick_dequant(s->type);
        if (k) ggc_launch(k, ggc_cuda_grid(nel / 8, 256), 256, 0, st, su, du, d->type, nel / 8);
    } else if (dq) {
        const quant_kernel k = pick_quant(d->type);
        if (k) ggc_launch(k, ggc_cuda_grid(nunits(du), 128), 128, 0, st, su, s->type, du, nunits(du));
    } else {
        ggc_launch(ggc_k_copy_convert, ggc_cuda_grid(nel, 256), 256, 0, st, su, s->type, du, d->type, nel);
    }
}

}  // namespace

extern "C" void ggc_cuda_op_cpy(const ggc_node *n, const ggc_cuda_ctx *c) { copy_tensor(&n->src[0], &n->dst, c->stream); }
extern "C" void ggc_cuda_op_cont(const ggc_node *n, const ggc_cuda_ctx *c) { copy_tensor(&n->src[0], &n->dst, c->stream); }
extern "C" void ggc_cuda_op_dup(const ggc_node *n, const ggc_cuda_ctx *c) { copy_tensor(&n->src[0], &n->dst, c->stream); }

/* ------------------------------------------------------------------ GET_ROWS */

/* dst[:, i10, i11, i12] = src0 row (ids[i10, i11, i12], i11, i12); a thread per 8 elements of a
 * quantized row, or per element of a float / i32 row. */
template <ggc_type T>
static __global__ void ggc_k_get_rows(const uint8_t *src, ggc_cuda_shape s, ggc_type stype, const uint8_t *ids,
                               ggc_cuda_shape is, uint8_t *dst, ggc_cuda_shape ds, ggc_type dtype, int64_t per_row,
                               int64_t total) {
    GGC_PDL_BEGIN();
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= total) return;
    const int64_t r = g / per_row, c = g % per_row;
    const int64_t i10 = r % is.ne[0], i11 = (r / is.ne[0]) % is.ne[1], i12 = r / (is.ne[0] * is.ne[1]);
    const int64_t row = *(const int32_t *)(ids + i10 * is.nb[0] + i11 * is.nb[1] + i12 * is.nb[2]);
    if (row < 0 || row >= s.ne[1]) return; /* ggml asserts */
    const uint8_t *srow = src + row * s.nb[1] + i11 * s.nb[2] + i12 * s.nb[3];
    uint8_t *drow = dst + i10 * ds.nb[1] + i11 * ds.nb[2] + i12 * ds.nb[3];
    if constexpr (ggc_cuda_is_quant(T)) {
        float v[8];
        ggc_deq8<T>(srow, c * 8, v);
#pragma unroll
        for (int j = 0; j < 8; j++) ggc_store_any(drow + (c * 8 + j) * ds.nb[0], dtype, v[j]);
    } else {
        const uint8_t *p = srow + c * s.nb[0];
        if (stype == GGC_TYPE_I32 && dtype == GGC_TYPE_I32)
            *(int32_t *)(drow + c * ds.nb[0]) = *(const int32_t *)p;
        else
            ggc_store_any(drow + c * ds.nb[0], dtype, ggc_load_any(p, stype));
    }
}

extern "C" void ggc_cuda_op_get_rows(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *ix = &n->src[1], *d = &n->dst;
    const int64_t nidx = ix->ne[0] * ix->ne[1] * ix->ne[2];
    const bool q = ggc_cuda_is_quant(a->type);
    const int64_t per_row = q ? a->ne[0] / 8 : a->ne[0], total = nidx * per_row;
    if (total == 0) return;
    const ggc_cuda_shape s = ggc_cuda_shape_of(a), is = ggc_cuda_shape_of(ix), ds = ggc_cuda_shape_of(d);
    const uint8_t *src = (const uint8_t *)a->data, *ids = (const uint8_t *)ix->data;
    uint8_t *dst = (uint8_t *)d->data;
    const unsigned grid = ggc_cuda_grid(total, 256);
    switch (a->type) {
#define X(T)                                                                                                           \
    case T: ggc_launch(ggc_k_get_rows<T>, grid, 256, 0, c->stream, src, s, a->type, ids, is, dst, ds, d->type, per_row, total); break;
        X(GGC_TYPE_Q4_0) X(GGC_TYPE_Q4_1) X(GGC_TYPE_Q5_0) X(GGC_TYPE_Q5_1) X(GGC_TYPE_Q8_0) X(GGC_TYPE_Q2_K)
        X(GGC_TYPE_Q3_K) X(GGC_TYPE_Q4_K) X(GGC_TYPE_Q5_K) X(GGC_TYPE_Q6_K)
#undef X
    default:
        ggc_launch(ggc_k_get_rows<GGC_TYPE_F32>, grid, 256, 0, c->stream, src, s, a->type, ids, is, dst, ds, d->type, per_row,
                                                                 total);
    }
}

/* ------------------------------------------------------------------ SET_ROWS */

/* dst row (ids[i, i02 % ne11, i03 % ne12], i02, i03) = src0 row (i, i02, i03) in dst's type; the
 * other rows of dst keep their content (dst is a view of the written tensor). A thread per
 * destination unit (element, or block of a quantized destination). */
template <ggc_type T>
static __global__ void ggc_k_set_rows(const uint8_t *src, ggc_cuda_shape s, ggc_type stype, const uint8_t *ids,
                               ggc_cuda_shape is, bool i64, uint8_t *dst, ggc_cuda_shape ds, ggc_type dtype,
                               int64_t per_row, int64_t total) {
    GGC_PDL_BEGIN();
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= total) return;
    const int64_t r = g / per_row, c = g % per_row;
    int64_t i, i02, i03;
    ggc_cuda_unravel_row(s, r, i, i02, i03);
    const uint8_t *ip = ids + i * is.nb[0] + (i02 % is.ne[1]) * is.nb[1] + (i03 % is.ne[2]) * is.nb[2];
    const int64_t row = i64 ? *(const int64_t *)ip : *(const int32_t *)ip;
    if (row < 0 || row >= ds.ne[1]) return; /* ggml asserts */
    const uint8_t *srow = src + i * s.nb[1] + i02 * s.nb[2] + i03 * s.nb[3];
    uint8_t *drow = dst + row * ds.nb[1] + i02 * ds.nb[2] + i03 * ds.nb[3];
    if constexpr (ggc_cuda_is_quant(T)) {
        float x[GGC_QK];
        for (int j = 0; j < GGC_QK; j++) x[j] = ggc_load_any(srow + (c * GGC_QK + j) * s.nb[0], stype);
        ggc_quant<T>::quant(x, drow + c * ggc_cuda_tsize(T));
    } else {
        ggc_store_any(drow + c * ds.nb[0], dtype, ggc_load_any(srow + c * s.nb[0], stype));
    }
}

extern "C" void ggc_cuda_op_set_rows(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *a = &n->src[0], *ix = &n->src[1], *d = &n->dst;
    const bool q = ggc_cuda_is_quant(d->type);
    const int64_t per_row = q ? a->ne[0] / ggc_cuda_blck(d->type) : a->ne[0];
    const int64_t total = per_row * ggc_cuda_nrows(a);
    if (total == 0) return;
    const ggc_cuda_shape s = ggc_cuda_shape_of(a), is = ggc_cuda_shape_of(ix), ds = ggc_cuda_shape_of(d);
    const uint8_t *src = (const uint8_t *)a->data, *ids = (const uint8_t *)ix->data;
    uint8_t *dst = (uint8_t *)d->data;
    const bool i64 = ix->type == GGC_TYPE_I64;
    const unsigned grid = ggc_cuda_grid(total, 128);
    switch (d->type) {
#define X(T)                                                                                                           \
    case T:                                                                                                            \
        ggc_launch(ggc_k_set_rows<T>, grid, 128, 0, c->stream, src, s, a->type, ids, is, i64, dst, ds, d->type, per_row, total); \
        break;
        X(GGC_TYPE_Q4_0) X(GGC_TYPE_Q4_1) X(GGC_TYPE_Q5_0) X(GGC_TYPE_Q5_1) X(GGC_TYPE_Q8_0)
#undef X
    default:
        if (!q)
            ggc_launch(ggc_k_set_rows<GGC_TYPE_F32>, grid, 128, 0, c->stream, src, s, a->type, ids, is, i64, dst, ds, d->type,
                                                                     per_row, total);
    }
}
