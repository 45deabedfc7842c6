/* MUL_MAT and MUL_MAT_ID, bit for bit as ggml's CPU backend computes them
 * (ggml-cpu.c: ggml_compute_forward_mul_mat, ggml_compute_forward_mul_mat_id) in the build this
 * project checks against: x86-64 with AVX2 + FMA + F16C (no AVX512), llamafile's sgemm and the
 * tiled K-quant matmul compiled in, weights in a plain CPU buffer (no repacking).
 *
 * dst[i0, i1, i2, i3] = dot(src0 row i0 of matrix (i2 / r2, i3 / r3), src1 row (i1, i2, i3)) with
 * r2 = ne12 / ne02, r3 = ne13 / ne03 (src0 broadcast over src1's batches, as in GQA). src1 is
 * converted to the weight type's vec_dot_type first: quantized to q8_0 / q8_1 / q8_K, or rounded
 * to f16 / bf16, into the work buffer (one converted row per src1 row, contiguous), exactly as
 * ggml does; it is read in place only when it already has that type with adjacent elements.
 *
 * ggml then computes each node with one of three kernels, and each sums a dot product in its
 * own order (ggc_quants.c emulates each one lane by lane):
 *   tiled     ggml_compute_forward_mul_mat_tiled: q2_K .. q6_K weights with ne11 >= 8 (MUL_MAT_ID:
 *             an expert with >= 8 routed rows); on unless GGML_CPU_TILED_MM=0 in the environment
 *   tinyBLAS  llamafile_sgemm, MUL_MAT only, ne11 >= 2: f32 / f16 / bf16 weights when ne00 % 8 == 0
 *             and ne01 % 4 == 0; q8_0 / q4_0 / q5_0 always (tinyBLAS_Q0_AVX, whose sums are
 *             exactly their vec_dot's)
 *   vec_dot   everything else: one src1 row, other types, tinyBLAS declining, MUL_MAT_ID
 * Every kernel's result for one element is a fixed function of its two rows: ggml's tiles and
 * thread split choose which elements a thread computes, never how, so ggml's thread count does
 * not matter.
 *
 * src0 rows must be contiguous within a row (nb00 == type size, as ggml asserts); its nb1..nb3 and
 * all of src1's strides are free. Work is split over weight rows, each read once per call.
 */
#include <math.h>

#include "ggc.h"

/* src1 used in place: already in the dot type, elements adjacent */
static int src1_in_place(const ggc_tensor *b, ggc_type vt) {
    return b->type == vt && b->nb[0] == ggc_type_size(vt);
}

/* Row (i1, i2, i3) of src1 (f32 / f16 / bf16, any element stride) converted to type vt. It goes
 * through a float buffer a chunk of whole blocks at a time: every from_float works block by
 * block, so this equals ggml's conversion of the whole row. */
static void convert_row(const ggc_tensor *b, int64_t i1, int64_t i2, int64_t i3, ggc_type vt, char *out) {
    enum { CHUNK = 256 }; /* a multiple of every block size */
    float buf[CHUNK];
    const int64_t ne0 = b->ne[0];
    if (b->type == GGC_TYPE_F32 && b->nb[0] == sizeof(float)) {
        ggc_from_float(vt, (const float *)ggc_row(b, i1, i2, i3), out, ne0);
        return;
    }
    for (int64_t c = 0; c < ne0; c += CHUNK) {
        const int64_t m = ne0 - c < CHUNK ? ne0 - c : CHUNK;
        for (int64_t j = 0; j < m; j++) buf[j] = ggc_get_f(b, c + j, i1, i2, i3);
        ggc_from_float(vt, buf, out + ggc_row_size(vt, c), m);
    }
}

/* Convert every src1 row into the work buffer, row r = i1 + ne1 * (i2 + ne2 * i3). */
static void convert_src1(const ggc_tensor *b, ggc_type vt, char *wdata) {
    const size_t rs = ggc_row_size(vt, b->ne[0]);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(b); r++) {
        const int64_t i1 = r % b->ne[1], i2 = (r / b->ne[1]) % b->ne[2], i3 = r / (b->ne[1] * b->ne[2]);
        convert_row(b, i1, i2, i3, vt, wdata + (size_t)r * rs);
    }
}

/* ---- which kernel ggml uses */

/* defined in ggc_quants.c */
float ggc_dot_tinyblas(ggc_type t, int64_t k, const void *a, const void *b);
float ggc_dot_tiled(ggc_type t, int64_t n, const void *x, const void *y);

typedef enum { MM_VEC_DOT, MM_TINYBLAS, MM_TILED } mm_kernel;

/* the src0 types of the tiled matmul (ggml_tiled_supported) that ggc has */
static int tiled_type(ggc_type t) { return t >= GGC_TYPE_Q2_K && t <= GGC_TYPE_Q6_K; }

/* ggml_is_contiguous */
static int contiguous(const ggc_tensor *t) {
    size_t next = ggc_type_size(t->type);
    if (t->ne[0] != ggc_blck_size(t->type) && t->nb[0] != next) return 0;
    next *= (size_t)(t->ne[0] / ggc_blck_size(t->type));
    for (int i = 1; i < GGC_MAX_DIMS; i++) {
        if (t->ne[i] != 1 && t->nb[i] != next) return 0;
        next *= (size_t)t->ne[i];
    }
    return 1;
}

/* Whether llamafile_sgemm (AVX2 build) computes weights of type a (k columns, m rows) against
 * src1 rows of type b: tinyBLAS<8, __m256> for f32 / f16 / bf16 against the same type, unless
 * k % 8 or m % 4 (then tinyBLAS::matmul returns false); tinyBLAS_Q0_AVX for q8_0 / q4_0 / q5_0
 * against q8_0, always. */
static int sgemm_takes(ggc_type a, ggc_type b, int64_t k, int64_t m) {
    switch (a) {
    case GGC_TYPE_F32:
    case GGC_TYPE_F16:
    case GGC_TYPE_BF16: return b == a && k % 8 == 0 && m % 4 == 0;
    case GGC_TYPE_Q8_0:
    case GGC_TYPE_Q4_0:
    case GGC_TYPE_Q5_0: return b == GGC_TYPE_Q8_0;
    default: return 0;
    }
}

/* ggml_compute_forward_mul_mat's choice: the tiled path first; then llamafile_sgemm, tried on
 * src1 itself (if contiguous) and again on src1 converted to the vec_dot_type (if it was not
 * that type), but only with ne11 >= 2 ("only enable sgemm for prompt processing"); else vec_dot. */
static mm_kernel mul_mat_kernel(const ggc_tensor *a, const ggc_tensor *b) {
    if (tiled_type(a->type) && b->ne[1] >= 8) return MM_TILED;
    if (b->ne[1] < 2) return MM_VEC_DOT;
    const ggc_type vt = ggc_vec_dot_type(a->type);
    const int64_t k = a->ne[0], m = a->ne[1];
    if ((contiguous(b) && sgemm_takes(a->type, b->type, k, m)) || (b->type != vt && sgemm_takes(a->type, vt, k, m)))
        return MM_TINYBLAS;
    return MM_VEC_DOT;
}

/* one output element: weight row x against the converted src1 row y, with ggml's kernel */
static float mm_dot(mm_kernel kern, ggc_type t, int64_t k, const void *x, const void *y) {
    switch (kern) {
    case MM_TILED: return ggc_dot_tiled(t, k, x, y);
    case MM_TINYBLAS:
        if (t == GGC_TYPE_F32 || t == GGC_TYPE_F16 || t == GGC_TYPE_BF16) return ggc_dot_tinyblas(t, k, x, y);
        return ggc_vec_dot(t, k, x, y); /* tinyBLAS_Q0_AVX: the same sums as vec_dot */
    default: return ggc_vec_dot(t, k, x, y);
    }
}

/* ---- work memory */

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

static size_t converted_size(const ggc_tensor *a, const ggc_tensor *b) {
    const ggc_type vt = ggc_vec_dot_type(a->type);
    return src1_in_place(b, vt) ? 0 : align8(ggc_row_size(vt, b->ne[0]) * (size_t)ggc_nrows(b));
}

/* ------------------------------------------------------------------ MUL_MAT */

/* ggml's GGML_HINT_SRC0_IS_HADAMARD in op_params[1]: llama.cpp's rotation of a quantized KV
 * cache (llama_mul_mat_hadamard) says src0 is the normalized n x n Walsh-Hadamard matrix */
enum { HINT_SRC0_IS_HADAMARD = 1 };

/* ggml_compute_forward_fwht (ops.cpp), which ggml runs for such a node instead of the product:
 * each src1 row (f32 or f16, n a power of 2) times 1/sqrtf(n), then the butterflies u + v, u - v
 * for strides 1, 2, 4, ... (the SIMD passes' fma(v, -1, u) is exactly u - v). src0 is not read. */
static void fwht_rows(const ggc_tensor *b, const ggc_tensor *d) {
    const int64_t n = b->ne[0];
    const float scale = 1.0f / sqrtf((float)n);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(b); r++) {
        GGC_ROW_INDEX(b, r, i1, i2, i3);
        float *y = (float *)ggc_row(d, i1, i2, i3);
        for (int64_t j = 0; j < n; j++) y[j] = ggc_get_f(b, j, i1, i2, i3) * scale;
        for (int64_t len = 1; len < n; len <<= 1)
            for (int64_t i = 0; i < n; i += 2 * len)
                for (int64_t j = i; j < i + len; j++) {
                    const float u = y[j], v = y[j + len];
                    y[j] = u + v;
                    y[j + len] = u - v;
                }
    }
}

size_t ggc_work_mul_mat(const ggc_node *n) {
    return n->op_params[1] == HINT_SRC0_IS_HADAMARD ? 0 : converted_size(&n->src[0], &n->src[1]);
}

void ggc_op_mul_mat(const ggc_node *n, ggc_work *w) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    if (n->op_params[1] == HINT_SRC0_IS_HADAMARD) {
        fwht_rows(b, d);
        return;
    }
    const ggc_type vt = ggc_vec_dot_type(a->type);
    const int in_place = src1_in_place(b, vt);
    const size_t rs = ggc_row_size(vt, b->ne[0]);
    char *wdata = (char *)w->data;
    if (!in_place) convert_src1(b, vt, wdata);

    const int64_t ne00 = a->ne[0], ne01 = a->ne[1], ne02 = a->ne[2];
    const int64_t ne11 = b->ne[1], ne12 = b->ne[2];
    const int64_t r2 = ne12 / ne02, r3 = b->ne[3] / a->ne[3];
    const mm_kernel kern = mul_mat_kernel(a, b);
    /* one weight row per iteration, dotted with every src1 row of the batches it serves */
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(a); r++) {
        const int64_t i01 = r % ne01, i02 = (r / ne01) % ne02, i03 = r / (ne01 * ne02);
        const void *x = ggc_row(a, i01, i02, i03);
        for (int64_t i13 = i03 * r3; i13 < (i03 + 1) * r3; i13++)
            for (int64_t i12 = i02 * r2; i12 < (i02 + 1) * r2; i12++)
                for (int64_t i11 = 0; i11 < ne11; i11++) {
                    const void *y = in_place ? ggc_row(b, i11, i12, i13)
                                             : wdata + (size_t)((i13 * ne12 + i12) * ne11 + i11) * rs;
                    *(float *)ggc_ptr(d, i01, i11, i12, i13) = mm_dot(kern, a->type, ne00, x, y);
                }
    }
}

/* ------------------------------------------------------------------ MUL_MAT_ID
 *
 * src0: experts [ne00, ne01, n_expert]; src1: [ne10, ne11, n_tokens] with ne11 == n_used or 1;
 * src2: ids, i32 [n_used, n_tokens]. dst[:, slot, t] = expert ids[slot, t] times src1 row
 * (slot % ne11, t), so an ne11 == 1 src1 is shared by every slot of its token.
 *
 * The (slot, token) pairs are grouped by expert first (ascending token, then slot), so that the
 * parallel loop runs over expert rows, reading each selected expert's weights once. ggml has no
 * sgemm here; an expert's rows use the tiled kernel when there are >= 8 of them
 * (ggml_compute_forward_mul_mat_id_tiled), vec_dot otherwise. Work buffer:
 * converted src1, then the grouping: offs[n_expert + 1] and a cursor per expert (int64), and the
 * pairs (int32 slot, token).
 */

size_t ggc_work_mul_mat_id(const ggc_node *n) {
    const ggc_tensor *ids = &n->src[2];
    const size_t n_as = (size_t)n->src[0].ne[2], n_pairs = (size_t)(ids->ne[0] * ids->ne[1]);
    return converted_size(&n->src[0], &n->src[1]) + (2 * n_as + 1) * sizeof(int64_t) + n_pairs * 2 * sizeof(int32_t);
}

static int32_t expert_id(const ggc_tensor *ids, int64_t slot, int64_t t) {
    return *(const int32_t *)((const char *)ids->data + slot * (int64_t)ids->nb[0] + t * (int64_t)ids->nb[1]);
}

void ggc_op_mul_mat_id(const ggc_node *n, ggc_work *w) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *ids = &n->src[2], *d = &n->dst;
    const ggc_type vt = ggc_vec_dot_type(a->type);
    const int in_place = src1_in_place(b, vt);
    const size_t rs = ggc_row_size(vt, b->ne[0]);
    const int64_t n_as = a->ne[2], n_used = ids->ne[0], n_tok = ids->ne[1];
    char *wdata = (char *)w->data;
    if (!in_place) convert_src1(b, vt, wdata);

    int64_t *offs = (int64_t *)(wdata + converted_size(a, b)); /* [n_as + 1] */
    int64_t *cur = offs + n_as + 1;                             /* [n_as] */
    int32_t *pairs = (int32_t *)(cur + n_as);                   /* [n_pairs][2] */
    memset(offs, 0, (size_t)(2 * n_as + 1) * sizeof(int64_t));
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t s = 0; s < n_used; s++) {
            const int32_t e = expert_id(ids, s, t);
            if (e >= 0 && e < n_as) offs[e + 1]++;
        }
    for (int64_t e = 0; e < n_as; e++) {
        offs[e + 1] += offs[e];
        cur[e] = offs[e];
    }
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t s = 0; s < n_used; s++) {
            const int32_t e = expert_id(ids, s, t);
            if (e < 0 || e >= n_as) continue; /* ggml asserts; an invalid id leaves its row alone */
            pairs[2 * cur[e]] = (int32_t)s;
            pairs[2 * cur[e] + 1] = (int32_t)t;
            cur[e]++;
        }

    const int64_t ne00 = a->ne[0], ne01 = a->ne[1], ne11 = b->ne[1];
    #pragma omp parallel for
    for (int64_t r = 0; r < n_as * ne01; r++) {
        const int64_t e = r / ne01, i01 = r % ne01;
        if (offs[e] == offs[e + 1]) continue; /* expert not selected by any token */
        const mm_kernel kern = tiled_type(a->type) && offs[e + 1] - offs[e] >= 8 ? MM_TILED : MM_VEC_DOT;
        const void *x = ggc_row(a, i01, e, 0);
        for (int64_t p = offs[e]; p < offs[e + 1]; p++) {
            const int64_t s = pairs[2 * p], t = pairs[2 * p + 1], i11 = s % ne11;
            const void *y = in_place ? ggc_row(b, i11, t, 0) : wdata + (size_t)(t * ne11 + i11) * rs;
            *(float *)ggc_ptr(d, i01, s, t, 0) = mm_dot(kern, a->type, ne00, x, y);
        }
    }
}
