/* MUL_MAT and MUL_MAT_ID, as ggml's CPU backend computes them.
 *
 * dst[i0, i1, i2, i3] = dot(src0 row i0 of matrix (i2 / r2, i3 / r3), src1 row (i1, i2, i3)) with
 * r2 = ne12 / ne02, r3 = ne13 / ne03 (src0 broadcast over src1's batches, as in GQA). The dot is
 * ggc_vec_dot in src0's type against src1 converted to its vec_dot_type: quantized to q8_0 / q8_1
 * / q8_K, or rounded to f16 / bf16, first, into the work buffer (one converted row per src1 row,
 * contiguous), exactly as ggml quantizes activations before its dot products. src1 is read in
 * place only when it already has the vec_dot_type with contiguous elements.
 *
 * src0 rows must be contiguous within a row (nb00 == type size, as ggml asserts); its nb1..nb3 and
 * all of src1's strides are free. Work is split over weight rows, each read once per call.
 */
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

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

static size_t converted_size(const ggc_tensor *a, const ggc_tensor *b) {
    const ggc_type vt = ggc_vec_dot_type(a->type);
    return src1_in_place(b, vt) ? 0 : align8(ggc_row_size(vt, b->ne[0]) * (size_t)ggc_nrows(b));
}

/* ------------------------------------------------------------------ MUL_MAT */

size_t ggc_work_mul_mat(const ggc_node *n) { return converted_size(&n->src[0], &n->src[1]); }

void ggc_op_mul_mat(const ggc_node *n, ggc_work *w) {
    const ggc_tensor *a = &n->src[0], *b = &n->src[1], *d = &n->dst;
    const ggc_type vt = ggc_vec_dot_type(a->type);
    const int in_place = src1_in_place(b, vt);
    const size_t rs = ggc_row_size(vt, b->ne[0]);
    char *wdata = (char *)w->data;
    if (!in_place) convert_src1(b, vt, wdata);

    const int64_t ne00 = a->ne[0], ne01 = a->ne[1], ne02 = a->ne[2];
    const int64_t ne11 = b->ne[1], ne12 = b->ne[2];
    const int64_t r2 = ne12 / ne02, r3 = b->ne[3] / a->ne[3];
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
                    *(float *)ggc_ptr(d, i01, i11, i12, i13) = ggc_vec_dot(a->type, ne00, x, y);
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
 * parallel loop runs over expert rows, reading each selected expert's weights once. Work buffer:
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
        const void *x = ggc_row(a, i01, e, 0);
        for (int64_t p = offs[e]; p < offs[e + 1]; p++) {
            const int64_t s = pairs[2 * p], t = pairs[2 * p + 1], i11 = s % ne11;
            const void *y = in_place ? ggc_row(b, i11, t, 0) : wdata + (size_t)(t * ne11 + i11) * rs;
            *(float *)ggc_ptr(d, i01, s, t, 0) = ggc_vec_dot(a->type, ne00, x, y);
        }
    }
}
