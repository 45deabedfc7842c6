/* Elementwise kernels: ADD SUB MUL DIV (ggml broadcasting; ADD also with a quantized src0),
 * ADD_ID, SCALE, CLAMP, SUM_ROWS, CONCAT, ARGSORT, TOP_K, and every UNARY and GLU op.
 *
 * Numerics follow ggml's CPU backend as llama-cpp-python builds it here (x86-64, AVX2 + FMA):
 *  - GELU and GELU_QUICK go through ggml's f16 lookup table (GGML_GELU_FP16): the input is rounded
 *    to f16 and the table holds f16(gelu(x)); the f32 GELU path returns 0 below -10 and x above 10.
 *  - SILU / SWIGLU on f32 rows use ggml's vector expf (ggml_v_expf) on every full group of 8
 *    elements and libm expf on the tail; ggc_expf_vec below reproduces that routine lane by lane.
 *  - ARGSORT / TOP_K reproduce libstdc++'s std::sort / std::partial_sort step by step, so ties
 *    come out in ggml's order.
 * Sources may be strided (any nb); f32 rows with unit stride take a fast path.
 */
#include <math.h>

#include "ggc.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* shared with ggc_softmax.c and ggc_attention.c */


static inline int f32_rows(const ggc_tensor *t) { return t->type == GGC_TYPE_F32 && t->nb[0] == sizeof(float); }



/* ggml_v_expf (AVX2 + FMA build): exp via 2^n * poly(b); max error ~1.5 ulp, not libm's. One lane. */
float ggc_expf_vec(float x) {
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = ggc_f32_bits(z) << 23;
    const float k = ggc_bits_f32(e + ggc_f32_bits(1.0f));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) return fmaf(j, k, k);
    /* out of the direct range: scale in two steps, or saturate to 0 / inf */
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = ggc_bits_f32(g + 0x7f000000u);
    const float s2 = ggc_bits_f32(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* ------------------------------------------------------------------ binary ops */

typedef enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV } bin_op;

static inline float bin_apply(bin_op op, float a, float b) {
    switch (op) {
    case OP_ADD: return a + b;
    case OP_SUB: return a - b;
    case OP_MUL: return a * b;
    default: return a / b;
    }
}

/* dst = src0 op src1, src1 repeated along every dim where its size divides dst's (ggml_can_repeat) */
static void binary(const ggc_node *n, bin_op op) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    const int fast = f32_rows(a) && f32_rows(b) && f32_rows(d);
    const int64_t ne0 = d->ne[0], ne10 = b->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const int64_t j1 = i1 % b->ne[1], j2 = i2 % b->ne[2], j3 = i3 % b->ne[3];
        if (fast) {
            const float *x = ggc_row(a, i1, i2, i3), *y = ggc_row(b, j1, j2, j3);
            float *z = ggc_row(d, i1, i2, i3);
            for (int64_t o = 0; o < ne0; o += ne10)
                for (int64_t i = 0; i < ne10; i++) z[o + i] = bin_apply(op, x[o + i], y[i]);
        } else {
            for (int64_t i0 = 0; i0 < ne0; i0++)
                ggc_set_f(d, i0, i1, i2, i3,
                          bin_apply(op, ggc_get_f(a, i0, i1, i2, i3), ggc_get_f(b, i0 % ne10, j1, j2, j3)));
        }
    }
}

/* ADD with a quantized src0 (ggml_compute_forward_add_q_f32): same shapes, src1 f32; each row is
 * dequantized, added to, and quantized back to dst's type. Work: one f32 row per thread. */
size_t ggc_work_add(const ggc_node *n) {
    return ggc_blck_size(n->src[0].type) > 1 ? (size_t)n->src[0].ne[0] * sizeof(float) : 0;
}

static void add_quantized(const ggc_node *n, ggc_work *w) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    const size_t per = ggc_work_add(n);
    #pragma omp parallel for num_threads(ggc_work_threads(w, per))
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        float *row = ggc_work_slice(w, per);
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        ggc_to_float(a->type, ggc_row(a, i1, i2, i3), row, a->ne[0]);
        for (int64_t i0 = 0; i0 < a->ne[0]; i0++) row[i0] += ggc_get_f(b, i0, i1, i2, i3);
        if (ggc_blck_size(d->type) > 1) ggc_from_float(d->type, row, ggc_row(d, i1, i2, i3), d->ne[0]);
        else
            for (int64_t i0 = 0; i0 < d->ne[0]; i0++) ggc_set_f(d, i0, i1, i2, i3, row[i0]);
    }
}

void ggc_op_add(const ggc_node *n, ggc_work *w) {
    if (ggc_blck_size(n->src[0].type) > 1) add_quantized(n, w);
    else binary(n, OP_ADD);
}
void ggc_op_sub(const ggc_node *n, ggc_work *w) { (void)w; binary(n, OP_SUB); }
void ggc_op_mul(const ggc_node *n, ggc_work *w) { (void)w; binary(n, OP_MUL); }
void ggc_op_div(const ggc_node *n, ggc_work *w) { (void)w; binary(n, OP_DIV); }

/* ADD_ID: dst[:, i1, i2] = src0[:, i1, i2] + src1[:, ids[i1, i2]]  (a bias per selected expert) */
void ggc_op_add_id(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *ids = &n->src[2], *d = &n->dst;
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const int64_t e = *(const int32_t *)ggc_ptr(ids, i1, i2, 0, 0);
        for (int64_t i0 = 0; i0 < d->ne[0]; i0++)
            ggc_set_f(d, i0, i1, i2, i3, ggc_get_f(a, i0, i1, i2, i3) + ggc_get_f(b, i0, e, 0, 0));
    }
}

/* ------------------------------------------------------------------ scale, clamp, sums */

/* SCALE: dst = src0 * s (+ b). With a bias ggml uses a fused multiply-add. */
void ggc_op_scale(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float s = ggc_param_f32(n, 0), b = ggc_param_f32(n, 1);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        for (int64_t i0 = 0; i0 < d->ne[0]; i0++) {
            const float x = ggc_get_f(a, i0, i1, i2, i3);
            ggc_set_f(d, i0, i1, i2, i3, b == 0.0f ? x * s : fmaf(x, s, b));
        }
    }
}

/* CLAMP: max(min(x, hi), lo) with ggml's MIN/MAX macros (a NaN becomes hi) */
void ggc_op_clamp(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float lo = ggc_param_f32(n, 0), hi = ggc_param_f32(n, 1);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        for (int64_t i0 = 0; i0 < d->ne[0]; i0++) {
            const float x = ggc_get_f(a, i0, i1, i2, i3);
            const float m = x < hi ? x : hi;
            ggc_set_f(d, i0, i1, i2, i3, m > lo ? m : lo);
        }
    }
}

/* SUM_ROWS: each row summed in double (ggml_float), stored as float */
void ggc_op_sum_rows(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        double sum = 0.0;
        for (int64_t i0 = 0; i0 < a->ne[0]; i0++) sum += (double)ggc_get_f(a, i0, i1, i2, i3);
        ggc_set_f(d, 0, i1, i2, i3, (float)sum);
    }
}

/* CONCAT along op_params[0]: a byte copy of every element (or block, for quantized rows) */
void ggc_op_concat(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    const int dim = n->op_params[0];
    const int64_t blck = ggc_blck_size(d->type);
    const size_t esize = ggc_type_size(d->type);
    int64_t o[4] = {0, 0, 0, 0};
    o[dim] = dim == 0 ? a->ne[0] / blck : a->ne[dim];
    const int64_t ne0 = d->ne[0] / blck, a0 = a->ne[0] / blck;
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const int in_a = i1 < a->ne[1] && i2 < a->ne[2] && i3 < a->ne[3];
        for (int64_t i0 = 0; i0 < ne0; i0++) {
            const void *src = in_a && i0 < a0 ? ggc_ptr(a, i0, i1, i2, i3)
                                  : ggc_ptr(b, i0 - o[0], i1 - o[1], i2 - o[2], i3 - o[3]);
            memcpy(ggc_ptr(d, i0, i1, i2, i3), src, esize);
        }
    }
}

/* ------------------------------------------------------------------ argsort, top_k
 * libstdc++'s introsort (std::sort) and heap select (std::partial_sort), step by step, on an
 * index array compared through the row's values: equal values end up where ggml puts them. */

typedef struct {
    const char *x;
    size_t nb;
    int desc;
} sort_ctx;

static inline int before(const sort_ctx *c, int32_t a, int32_t b) {
    const float va = *(const float *)(c->x + (size_t)a * c->nb), vb = *(const float *)(c->x + (size_t)b * c->nb);
    return c->desc ? va > vb : va < vb;
}
static inline void swap_i32(int32_t *a, int32_t *b) {
    const int32_t t = *a;
    *a = *b;
    *b = t;
}

static void push_heap(const sort_ctx *c, int32_t *f, int64_t hole, int64_t top, int32_t v) {
    int64_t parent = (hole - 1) / 2;
    while (hole > top && before(c, f[parent], v)) {
        f[hole] = f[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    f[hole] = v;
}

static void adjust_heap(const sort_ctx *c, int32_t *f, int64_t hole, int64_t len, int32_t v) {
    const int64_t top = hole;
    int64_t child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (before(c, f[child], f[child - 1])) child--;
        f[hole] = f[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        f[hole] = f[child - 1];
        hole = child - 1;
    }
    push_heap(c, f, hole, top, v);
}

/* the heap is f[0..len); its top goes to *out and *out's old value is sifted in */
static void pop_heap(const sort_ctx *c, int32_t *f, int64_t len, int32_t *out) {
    const int32_t v = *out;
    *out = f[0];
    adjust_heap(c, f, 0, len, v);
}

/* after this, f[0..mid) holds the mid first elements of f[0..len) as a heap */
static void heap_select(const sort_ctx *c, int32_t *f, int64_t mid, int64_t len) {
    if (mid >= 2)
        for (int64_t parent = (mid - 2) / 2;; parent--) {
            adjust_heap(c, f, parent, mid, f[parent]);
            if (parent == 0) break;
        }
    for (int64_t i = mid; i < len; i++)
        if (before(c, f[i], f[0])) pop_heap(c, f, mid, &f[i]);
}

static void sort_heap(const sort_ctx *c, int32_t *f, int64_t len) {
    while (len > 1) {
        len--;
        pop_heap(c, f, len, &f[len]);
    }
}

static void move_median_to_first(const sort_ctx *c, int32_t *res, int32_t *a, int32_t *b, int32_t *d) {
    if (before(c, *a, *b)) {
        if (before(c, *b, *d)) swap_i32(res, b);
        else if (before(c, *a, *d)) swap_i32(res, d);
        else swap_i32(res, a);
    } else if (before(c, *a, *d)) swap_i32(res, a);
    else if (before(c, *b, *d)) swap_i32(res, d);
    else swap_i32(res, b);
}

static int32_t *unguarded_partition(const sort_ctx *c, int32_t *first, int32_t *last, const int32_t *pivot) {
    for (;;) {
        while (before(c, *first, *pivot)) first++;
        last--;
        while (before(c, *pivot, *last)) last--;
        if (!(first < last)) return first;
        swap_i32(first, last);
        first++;
    }
}

enum { SORT_THRESHOLD = 16 };

static void introsort_loop(const sort_ctx *c, int32_t *first, int32_t *last, int depth) {
    while (last - first > SORT_THRESHOLD) {
        if (depth == 0) { /* too deep: heap sort the rest */
            heap_select(c, first, last - first, last - first);
            sort_heap(c, first, last - first);
            return;
        }
        depth--;
        int32_t *mid = first + (last - first) / 2;
        move_median_to_first(c, first, first + 1, mid, last - 1);
        int32_t *cut = unguarded_partition(c, first + 1, last, first);
        introsort_loop(c, cut, last, depth);
        last = cut;
    }
}

static void linear_insert(const sort_ctx *c, int32_t *last) {
    const int32_t v = *last;
    int32_t *next = last - 1;
    while (before(c, v, *next)) {
        *last = *next;
        last = next--;
    }
    *last = v;
}

static void insertion_sort(const sort_ctx *c, int32_t *first, int32_t *last) {
    if (first == last) return;
    for (int32_t *i = first + 1; i != last; i++) {
        if (before(c, *i, *first)) {
            const int32_t v = *i;
            memmove(first + 1, first, (size_t)(i - first) * sizeof *i);
            *first = v;
        } else {
            linear_insert(c, i);
        }
    }
}

static void std_sort(const sort_ctx *c, int32_t *f, int64_t len) {
    if (len < 2) return;
    int lg = 0;
    while ((len >> (lg + 1)) != 0) lg++;
    introsort_loop(c, f, f + len, 2 * lg);
    if (len > SORT_THRESHOLD) {
        insertion_sort(c, f, f + SORT_THRESHOLD);
        for (int32_t *i = f + SORT_THRESHOLD; i != f + len; i++) linear_insert(c, i);
    } else {
        insertion_sort(c, f, f + len);
    }
}

/* ARGSORT: i32 indices of each row sorted by value; op_params[0]: 0 ascending, 1 descending */
void ggc_op_argsort(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const int desc = n->op_params[0] == 1;
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const sort_ctx c = {(const char *)ggc_row(a, i1, i2, i3), a->nb[0], desc};
        int32_t *idx = ggc_row(d, i1, i2, i3);
        for (int64_t i = 0; i < d->ne[0]; i++) idx[i] = (int32_t)i;
        std_sort(&c, idx, d->ne[0]);
    }
}

/* TOP_K: i32 indices of the k largest values of each row, as ggml leaves them: std::partial_sort
 * (descending) then the first two swapped ("the order is not important"). Work: one index row per
 * thread, ggc_work_top_k bytes each. */
size_t ggc_work_top_k(const ggc_node *n) { return (size_t)n->src[0].ne[0] * sizeof(int32_t); }

void ggc_op_top_k(const ggc_node *n, ggc_work *w) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const int64_t ne00 = a->ne[0], k = d->ne[0];
    const size_t per = ggc_work_top_k(n);
    #pragma omp parallel for num_threads(ggc_work_threads(w, per))
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        int32_t *tmp = ggc_work_slice(w, per);
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const sort_ctx c = {(const char *)ggc_row(a, i1, i2, i3), a->nb[0], 1};
        for (int64_t i = 0; i < ne00; i++) tmp[i] = (int32_t)i;
        heap_select(&c, tmp, k, ne00);
        sort_heap(&c, tmp, k);
        int32_t *out = ggc_row(d, i1, i2, i3);
        for (int64_t i = 0; i < k; i++) *(int32_t *)((char *)out + i * d->nb[0]) = tmp[i];
        if (k > 1) swap_i32(out, (int32_t *)((char *)out + d->nb[0]));
    }
}

/* ------------------------------------------------------------------ unary ops */

static const float GELU_COEF_A = 0.044715f;
static const float GELU_QUICK_COEF = -1.702f;
static const float SQRT_2_OVER_PI = 0.79788456080286535587989211986876f;
static const float SQRT_2_INV = 0.70710678118654752440084436210484f;

static inline float f16_round(float x) { return ggc_fp16_to_fp32(ggc_fp32_to_fp16(x)); }

static inline float gelu_f32(float x) {
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * fmaf(GELU_COEF_A * x, x, 1.0f)));
}
static inline float gelu_quick_f32(float x) { return x * (1.0f / (1.0f + expf(GELU_QUICK_COEF * x))); }

/* ggml's f16 tables: the f16 value of the function at the f16 rounding of x */
static inline float gelu_table(float x) { return f16_round(gelu_f32(f16_round(x))); }
static inline float gelu_quick_table(float x) { return f16_round(gelu_quick_f32(f16_round(x))); }

/* GELU as ggml computes it for a source of type t */
static inline float gelu_of(ggc_type t, float x) {
    if (t == GGC_TYPE_BF16) return gelu_f32(x);
    if (t == GGC_TYPE_F16) return gelu_table(x);
    return x <= -10.0f ? 0.0f : x >= 10.0f ? x : gelu_table(x);
}
static inline float gelu_quick_of(ggc_type t, float x) {
    return t == GGC_TYPE_BF16 ? gelu_quick_f32(x) : gelu_quick_table(x);
}

static inline float silu_f32(float x) { return x / (1.0f + expf(-x)); }

/* ggml_vec_silu_f32: vector expf on full groups of 8, libm on the tail */
static void silu_row(int64_t n, float *y, const float *x) {
    const int64_t nv = n & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i++) y[i] = x[i] / (1.0f + ggc_expf_vec(0.0f - x[i]));
    for (int64_t i = nv; i < n; i++) y[i] = silu_f32(x[i]);
}

typedef float (*map1_fn)(float x, const ggc_node *n);
typedef void (*row1_fn)(int64_t n, float *y, const float *x);

/* dst = f(src0) elementwise; row_f32, when given, handles whole unit-stride f32 rows */
static void unary_map(const ggc_node *n, map1_fn f, row1_fn row_f32) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const int fast = f32_rows(a) && f32_rows(d);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        if (fast) {
            const float *x = ggc_row(a, i1, i2, i3);
            float *y = ggc_row(d, i1, i2, i3);
            if (row_f32) row_f32(d->ne[0], y, x);
            else
                for (int64_t i0 = 0; i0 < d->ne[0]; i0++) y[i0] = f(x[i0], n);
        } else {
            for (int64_t i0 = 0; i0 < d->ne[0]; i0++) ggc_set_f(d, i0, i1, i2, i3, f(ggc_get_f(a, i0, i1, i2, i3), n));
        }
    }
}

#define UNARY(name, expr, row)                                                                       \
    static float u_##name(float x, const ggc_node *n) {                                             \
        (void)n;                                                                                     \
        return (expr);                                                                               \
    }                                                                                                \
    void ggc_op_unary_##name(const ggc_node *n, ggc_work *w) {                                       \
        (void)w;                                                                                     \
        unary_map(n, u_##name, row);                                                                 \
    }

UNARY(abs, fabsf(x), NULL)
UNARY(sgn, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f), NULL)
UNARY(neg, -x, NULL)
UNARY(step, x > 0.0f ? 1.0f : 0.0f, NULL)
UNARY(tanh, tanhf(x), NULL)
UNARY(elu, x > 0.0f ? x : expm1f(x), NULL)
UNARY(relu, x > 0.0f ? x : 0.0f, NULL)
UNARY(sigmoid, 1.0f / (1.0f + expf(-x)), NULL)
UNARY(gelu, gelu_of(n->src[0].type, x), NULL)
UNARY(gelu_quick, gelu_quick_of(n->src[0].type, x), NULL)
UNARY(gelu_erf, 0.5f * x * (1.0f + erff(x * SQRT_2_INV)), NULL)
UNARY(silu, silu_f32(x), silu_row)
UNARY(hardswish, x * fminf(1.0f, fmaxf(0.0f, (x + 3.0f) / 6.0f)), NULL)
UNARY(hardsigmoid, fminf(1.0f, fmaxf(0.0f, (x + 3.0f) / 6.0f)), NULL)
UNARY(exp, expf(x), NULL)
UNARY(expm1, expf(x) - 1.0f, NULL)
UNARY(softplus, x > 20.0f ? x : logf(1.0f + expf(x)), NULL)
UNARY(floor, floorf(x), NULL)
UNARY(ceil, ceilf(x), NULL)
UNARY(round, roundf(x), NULL)
UNARY(trunc, truncf(x), NULL)

/* XIELU: op_params 1..4 = alpha_n, alpha_p, beta, eps (ggml_xielu stores them already transformed) */
static float u_xielu(float x, const ggc_node *n) {
    const float alpha_n = ggc_param_f32(n, 1), alpha_p = ggc_param_f32(n, 2);
    const float beta = ggc_param_f32(n, 3), eps = ggc_param_f32(n, 4);
    if (x > 0.0f) return fmaf(alpha_p * x, x, beta * x);
    return fmaf(expm1f(fminf(x, eps)) - x, alpha_n, beta * x);
}
void ggc_op_unary_xielu(const ggc_node *n, ggc_work *w) {
    (void)w;
    unary_map(n, u_xielu, NULL);
}

/* ------------------------------------------------------------------ GLU ops
 * dst = act(x) * g. One source: each row holds x and g as halves (op_params[1] = swapped puts g
 * first); two sources: x from src0, g from src1. op_params[2], [3]: alpha, limit. */

typedef float (*map2_fn)(float x, float g, const ggc_node *n);
typedef void (*row2_fn)(int64_t n, float *y, const float *x, const float *g);

static void glu_map(const ggc_node *n, map2_fn f, row2_fn row_f32) {
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const ggc_tensor *b = n->src[1].data ? &n->src[1] : a;
    const int64_t nc = d->ne[0];
    const int swapped = n->src[1].data == NULL && n->op_params[1] != 0;
    const int64_t ox = n->src[1].data ? 0 : (swapped ? nc : 0), og = n->src[1].data ? 0 : (swapped ? 0 : nc);
    const int fast = f32_rows(a) && f32_rows(b) && f32_rows(d);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        if (fast) {
            const float *x = (const float *)ggc_row(a, i1, i2, i3) + ox;
            const float *g = (const float *)ggc_row(b, i1, i2, i3) + og;
            float *y = ggc_row(d, i1, i2, i3);
            if (row_f32) row_f32(nc, y, x, g);
            else
                for (int64_t i0 = 0; i0 < nc; i0++) y[i0] = f(x[i0], g[i0], n);
        } else {
            for (int64_t i0 = 0; i0 < nc; i0++)
                ggc_set_f(d, i0, i1, i2, i3,
                          f(ggc_get_f(a, i0 + ox, i1, i2, i3), ggc_get_f(b, i0 + og, i1, i2, i3), n));
        }
    }
}

/* ggml_vec_swiglu_f32: vector silu on full groups of 8, libm on the tail */
static void swiglu_row(int64_t n, float *y, const float *x, const float *g) {
    const int64_t nv = n & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i++) y[i] = x[i] / (1.0f + ggc_expf_vec(0.0f - x[i])) * g[i];
    for (int64_t i = nv; i < n; i++) y[i] = silu_f32(x[i]) * g[i];
}

static inline float min_f(float a, float b) { return b < a ? b : a; }                               /* std::min */
static inline float clamp_f(float v, float lo, float hi) { return v < lo ? lo : (hi < v ? hi : v); } /* std::clamp */

/* the f32 GEGLU path skips the table outside (-10, 10), like GELU */
static float geglu(float x, float g, const ggc_node *n) {
    const ggc_type t = n->src[0].type;
    if (t == GGC_TYPE_F32 && x <= -10.0f) return 0.0f;
    if (t == GGC_TYPE_F32 && x >= 10.0f) return x * g;
    return gelu_of(t, x) * g;
}

static float swiglu_oai(float x, float g, const ggc_node *n) {
    const float alpha = ggc_param_f32(n, 2), limit = ggc_param_f32(n, 3);
    x = min_f(x, limit);
    g = clamp_f(g, -limit, limit);
    return x / (1.0f + expf(alpha * (-x))) * (g + 1.0f);
}

static float swiglu_clamp(float x, float g, const ggc_node *n) {
    const float limit = ggc_param_f32(n, 3);
    x = min_f(x, limit);
    g = clamp_f(g, -limit, limit);
    return x / (1.0f + expf(-x)) * g;
}

#define GLU(name, expr, row)                                                                         \
    static float g_##name(float x, float g, const ggc_node *n) {                                    \
        (void)n;                                                                                     \
        return (expr);                                                                               \
    }                                                                                                \
    void ggc_op_glu_##name(const ggc_node *n, ggc_work *w) {                                         \
        (void)w;                                                                                     \
        glu_map(n, g_##name, row);                                                                   \
    }

GLU(reglu, x > 0.0f ? x * g : 0.0f, NULL)
GLU(geglu, geglu(x, g, n), NULL)
GLU(swiglu, silu_f32(x) * g, swiglu_row)
GLU(swiglu_oai, swiglu_oai(x, g, n), NULL)
GLU(geglu_erf, 0.5f * x * (1.0f + erff(x * SQRT_2_INV)) * g, NULL)
GLU(geglu_quick, gelu_quick_of(n->src[0].type, x) * g, NULL)
GLU(swiglu_clamp, swiglu_clamp(x, g, n), NULL)
