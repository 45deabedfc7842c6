/* Row gathers and copies: GET_ROWS, SET_ROWS, CPY, CONT, DUP, as ggml's CPU backend.
 *
 * Copies (CPY, CONT, DUP) move element k of the source, counted in logical order (i0 fastest,
 * through the strides), to element k of the destination; shapes may differ when the element
 * counts agree. A quantized side moves whole blocks: a quantized destination is written one block
 * at a time with ggc_from_float (ggml's from_float works block by block, so this is its result
 * for whole rows too), a quantized source is read one decoded block at a time.
 */
#include "ggc.h"

/* ------------------------------------------------------------------ element access */

static int is_quant(ggc_type t) { return ggc_blck_size(t) > 1; }

static float load_elem(ggc_type t, const void *p) {
    switch (t) {
    case GGC_TYPE_F16: return ggc_fp16_to_fp32(*(const uint16_t *)p);
    case GGC_TYPE_BF16: return ggc_bf16_to_fp32(*(const uint16_t *)p);
    case GGC_TYPE_I32: return (float)*(const int32_t *)p;
    default: return *(const float *)p;
    }
}
static void store_elem(ggc_type t, void *p, float v) {
    switch (t) {
    case GGC_TYPE_F16: *(uint16_t *)p = ggc_fp32_to_fp16(v); break;
    case GGC_TYPE_BF16: *(uint16_t *)p = ggc_fp32_to_bf16(v); break;
    case GGC_TYPE_I32: *(int32_t *)p = (int32_t)v; break; /* truncation, as C (and ggml) */
    default: *(float *)p = v;
    }
}

/* A tensor counted in units: elements, or blocks for a quantized type (ne0 / block size). */
typedef struct {
    char *data;
    int64_t ne[4];
    int64_t nb[4];
} units;

static units as_units(const ggc_tensor *t) {
    units u = {(char *)t->data, {t->ne[0] / ggc_blck_size(t->type), t->ne[1], t->ne[2], t->ne[3]},
               {(int64_t)t->nb[0], (int64_t)t->nb[1], (int64_t)t->nb[2], (int64_t)t->nb[3]}};
    return u;
}
static char *unit_ptr(const units *u, const int64_t i[4]) {
    return u->data + i[0] * u->nb[0] + i[1] * u->nb[1] + i[2] * u->nb[2] + i[3] * u->nb[3];
}
/* position of the k-th unit in logical order */
static void unravel(const units *u, int64_t k, int64_t i[4]) {
    i[0] = k % u->ne[0];
    k /= u->ne[0];
    i[1] = k % u->ne[1];
    k /= u->ne[1];
    i[2] = k % u->ne[2];
    i[3] = k / u->ne[2];
}
static void advance(const units *u, int64_t i[4]) {
    if (++i[0] < u->ne[0]) return;
    i[0] = 0;
    if (++i[1] < u->ne[1]) return;
    i[1] = 0;
    if (++i[2] < u->ne[2]) return;
    i[2] = 0;
    ++i[3];
}

/* Sequential float reader over a tensor of any type, from a given logical element on. */
typedef struct {
    ggc_type type;
    units u;
    int64_t i[4];          /* current unit */
    int64_t blck, j;       /* elements per unit; next element of the current (decoded) block */
    float buf[GGC_QK_K];   /* the current block, decoded */
} reader;

static void reader_decode(reader *r) {
    if (r->blck > 1 && r->i[3] < r->u.ne[3]) ggc_to_float(r->type, unit_ptr(&r->u, r->i), r->buf, r->blck);
}
static void reader_init(reader *r, const ggc_tensor *t, int64_t k) {
    r->type = t->type;
    r->u = as_units(t);
    r->blck = ggc_blck_size(t->type);
    unravel(&r->u, k / r->blck, r->i);
    r->j = k % r->blck;
    reader_decode(r);
}
static float reader_next(reader *r) {
    if (r->blck == 1) {
        const float v = load_elem(r->type, unit_ptr(&r->u, r->i));
        advance(&r->u, r->i);
        return v;
    }
    const float v = r->buf[r->j];
    if (++r->j == r->blck) {
        r->j = 0;
        advance(&r->u, r->i);
        reader_decode(r);
    }
    return v;
}

/* ------------------------------------------------------------------ CPY / CONT / DUP */

/* same type: units (elements or blocks) copied as bytes, whole rows when both sides allow */
static void copy_same_type(const ggc_tensor *s, const ggc_tensor *d) {
    const units su = as_units(s), du = as_units(d);
    const size_t usz = ggc_type_size(d->type);
    const int rows_match = su.ne[0] == du.ne[0] && su.nb[0] == (int64_t)usz && du.nb[0] == (int64_t)usz;
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        int64_t si[4], di[4];
        unravel(&du, r * du.ne[0], di);
        unravel(&su, r * du.ne[0], si);
        if (rows_match) {
            memcpy(unit_ptr(&du, di), unit_ptr(&su, si), (size_t)du.ne[0] * usz);
            continue;
        }
        for (int64_t k = 0; k < du.ne[0]; k++, advance(&su, si), advance(&du, di))
            memcpy(unit_ptr(&du, di), unit_ptr(&su, si), usz);
    }
}

/* converting: each destination row reads its span of source elements in order */
static void copy_convert(const ggc_tensor *s, const ggc_tensor *d) {
    const units du = as_units(d);
    const int64_t dblck = ggc_blck_size(d->type), ne0 = d->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        reader rd;
        reader_init(&rd, s, r * ne0);
        int64_t di[4];
        unravel(&du, r * du.ne[0], di);
        if (dblck == 1) {
            for (int64_t k = 0; k < ne0; k++, advance(&du, di)) store_elem(d->type, unit_ptr(&du, di), reader_next(&rd));
        } else {
            float buf[GGC_QK_K];
            for (int64_t b = 0; b < du.ne[0]; b++, advance(&du, di)) {
                for (int64_t j = 0; j < dblck; j++) buf[j] = reader_next(&rd);
                ggc_from_float(d->type, buf, unit_ptr(&du, di), dblck);
            }
        }
    }
}

static int is_contiguous(const ggc_tensor *t) {
    size_t nb = ggc_type_size(t->type);
    if (t->nb[0] != nb) return 0;
    nb = ggc_row_size(t->type, t->ne[0]);
    for (int k = 1; k < 4; k++) {
        if (t->ne[k] != 1 && t->nb[k] != nb) return 0;
        nb *= (size_t)t->ne[k];
    }
    return 1;
}

static void copy_tensor(const ggc_tensor *s, const ggc_tensor *d) {
    if (s->type == d->type) {
        if (is_contiguous(s) && is_contiguous(d)) {
            memcpy(d->data, s->data, ggc_row_size(d->type, d->ne[0]) * (size_t)ggc_nrows(d));
            return;
        }
        copy_same_type(s, d);
        return;
    }
    /* ggml converts only through f32: quantized -> quantized of another type is not an op */
    if (is_quant(s->type) && is_quant(d->type)) return;
    copy_convert(s, d);
}

void ggc_op_cpy(const ggc_node *n, ggc_work *w) {
    (void)w;
    copy_tensor(&n->src[0], &n->dst);
}
void ggc_op_cont(const ggc_node *n, ggc_work *w) {
    (void)w;
    copy_tensor(&n->src[0], &n->dst);
}
void ggc_op_dup(const ggc_node *n, ggc_work *w) {
    (void)w;
    copy_tensor(&n->src[0], &n->dst);
}

/* ------------------------------------------------------------------ GET_ROWS */

/* dst[:, i10, i11, i12] = src0 row (ids[i10, i11, i12], i11, i12) as float; ids are i32 and
 * src0's batch dimensions match the index tensor's ne1, ne2. An i32 src0 is copied as is. */
void ggc_op_get_rows(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *ix = &n->src[1], *d = &n->dst;
    const int64_t ne10 = ix->ne[0], ne11 = ix->ne[1], nc = a->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nelements(ix); r++) {
        const int64_t i10 = r % ne10, i11 = (r / ne10) % ne11, i12 = r / (ne10 * ne11);
        const int64_t row = *(const int32_t *)ggc_ptr(ix, i10, i11, i12, 0);
        if (row < 0 || row >= a->ne[1]) continue; /* ggml asserts */
        const void *src = ggc_row(a, row, i11, i12);
        float *dst = (float *)ggc_row(d, i10, i11, i12);
        if (a->type == GGC_TYPE_I32 || a->type == GGC_TYPE_F32)
            memcpy(dst, src, (size_t)nc * 4);
        else
            ggc_to_float(a->type, src, dst, nc);
    }
}

/* ------------------------------------------------------------------ SET_ROWS */

/* A float row (f32 / f16 / bf16, any element stride) stored as type t, through whole blocks. */
static void store_row(const ggc_tensor *s, int64_t i1, int64_t i2, int64_t i3, ggc_type t, char *out) {
    enum { CHUNK = 256 }; /* a multiple of every block size */
    float buf[CHUNK];
    const int64_t ne0 = s->ne[0];
    if (s->type == GGC_TYPE_F32 && s->nb[0] == sizeof(float)) {
        ggc_from_float(t, (const float *)ggc_row(s, i1, i2, i3), out, ne0);
        return;
    }
    for (int64_t c = 0; c < ne0; c += CHUNK) {
        const int64_t m = ne0 - c < CHUNK ? ne0 - c : CHUNK;
        for (int64_t j = 0; j < m; j++) buf[j] = ggc_get_f(s, c + j, i1, i2, i3);
        ggc_from_float(t, buf, out + ggc_row_size(t, c), m);
    }
}

static int64_t index_at(const ggc_tensor *ix, int64_t i0, int64_t i1, int64_t i2) {
    const void *p = ggc_ptr(ix, i0, i1, i2, 0);
    return ix->type == GGC_TYPE_I64 ? *(const int64_t *)p : *(const int32_t *)p;
}

/* dst row (ids[i, i02 % ne11, i03 % ne12], i02, i03) = src0 row (i, i02, i03), converted to dst's
 * type; all other rows of dst keep their content (dst is a view of the written tensor). Rows of
 * one batch are written in order, so a repeated index keeps the last row, as ggml on one thread. */
void ggc_op_set_rows(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *ix = &n->src[1], *d = &n->dst;
    const int64_t ne01 = a->ne[1], ne02 = a->ne[2];
    #pragma omp parallel for
    for (int64_t p = 0; p < ne02 * a->ne[3]; p++) {
        const int64_t i02 = p % ne02, i03 = p / ne02;
        for (int64_t i = 0; i < ne01; i++) {
            const int64_t row = index_at(ix, i, i02 % ix->ne[1], i03 % ix->ne[2]);
            if (row < 0 || row >= d->ne[1]) continue; /* ggml asserts */
            store_row(a, i, i02, i03, d->type, (char *)ggc_row(d, row, i02, i03));
        }
    }
}
