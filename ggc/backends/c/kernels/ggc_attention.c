/* FLASH_ATTN_EXT: softmax(scale * Q K^T + slope * mask) V, one pass over the keys (online softmax).
 *
 * src[0] q f32 [DK, n_q, H, B]; src[1] k, src[2] v [DK|DV, n_kv, H_kv, B_kv] of type f16, f32 or
 * any quantized type (k and v may be strided views of a KV cache); H % H_kv == 0 (GQA) and
 * likewise B. src[3] optional mask f16 [n_kv, >= n_q, 1|H, 1|B] (broadcast by modulo);
 * src[4] optional sinks f32 [H]. op_params: scale, max_bias, logit_softcap (f32).
 * dst f32 [DV, H, n_q, B]: the output is permuted, head before query.
 *
 * Run-time KV length: with 0 < work->n_kv <= k->ne[1] the kernel reads only the first n_kv cells
 * of K, V and the mask (whose strides stay the graph's), exactly as ggml computes the graph
 * llama.cpp builds for that n_kv; else all k->ne[1] cells. Cells past the used ones are masked
 * (-inf) by llama.cpp, so the result is the same as over all cells, except on the split-KV path,
 * whose spans (and so rounding) follow the n_kv attended, as in ggml.
 *
 * Three numerics, chosen as ggml's CPU backend chooses them (the first two work per query row, so
 * they do not depend on threads or chunking):
 *  - reference (ggml_compute_forward_flash_attn_ext_f16_one_chunk): Q is converted to K's
 *    vec_dot type (f16 for f16 K, q8_0 for q8_0 K, ...), each score is that vec_dot; the V
 *    accumulator is f16 when V is f16 (rounded after every key), else f32 on V rows converted to
 *    float. f16 / f32 dot products reproduce ggml's AVX2 accumulation order.
 *  - tiled (ggml_compute_forward_flash_attn_ext_tiled), when n_q >= 64 and K, V are both f16 or
 *    both f32: Q stays f32, keys go in tiles of 64 converted to f32, scores and the V product are
 *    sequential fused multiply-adds, each tile's exponentials go through ggml_vec_soft_max_f32.
 *  - split-KV decode (n_q == 1, B == 1, K and V both f16 or both f32, >= 512 cells attended): ggml
 *    cuts the keys into one span per thread, runs the reference recipe on each and merges the partial
 *    softmaxes; the result depends on ggml's thread count. Here the span count is
 *    work->n_threads: give it the thread count of the ggml run to compare with (1 = reference).
 *
 * Work memory: ggc_work_flash_attn_ext(node) bytes per thread; the kernel runs on at most
 * work->size / that many threads.
 */
#include <math.h>

#include "ggc.h"

#ifdef _OPENMP
#include <omp.h>
#endif


enum { TILE_Q = 64, TILE_KV = 64 };

typedef struct {
    const ggc_tensor *q, *k, *v, *mask, *sinks, *dst;
    float scale, softcap, max_bias;
    int64_t DK, DV, n_kv, n_q, n_head, rk2, rk3, rv2, rv3;
} fa_cfg;

static fa_cfg fa_config(const ggc_node *n, const ggc_work *w) {
    fa_cfg c = {
        .q = &n->src[0], .k = &n->src[1], .v = &n->src[2],
        .mask = n->src[3].data ? &n->src[3] : NULL,
        .sinks = n->src[4].data ? &n->src[4] : NULL,
        .dst = &n->dst,
        .scale = ggc_param_f32(n, 0), .max_bias = ggc_param_f32(n, 1), .softcap = ggc_param_f32(n, 2),
    };
    c.DK = c.k->ne[0];
    c.DV = c.v->ne[0];
    c.n_kv = w->n_kv > 0 && w->n_kv <= c.k->ne[1] ? w->n_kv : c.k->ne[1];
    c.n_q = c.q->ne[1];
    c.n_head = c.q->ne[2];
    c.rk2 = c.q->ne[2] / c.k->ne[2];
    c.rk3 = c.q->ne[3] / c.k->ne[3];
    c.rv2 = c.q->ne[2] / c.v->ne[2];
    c.rv3 = c.q->ne[3] / c.v->ne[3];
    if (c.softcap != 0.0f) c.scale /= c.softcap; /* scores become softcap * tanh(scale/softcap * qk) */
    return c;
}

static int fa_tiled(const ggc_node *n) {
    const ggc_type kt = n->src[1].type;
    return n->src[0].type == GGC_TYPE_F32 && (kt == GGC_TYPE_F16 || kt == GGC_TYPE_F32) && kt == n->src[2].type &&
           n->src[0].ne[1] >= TILE_Q;
}

/* per-thread floats of work */
static size_t fa_work_floats(const ggc_node *n) {
    const size_t DK = (size_t)n->src[1].ne[0], DV = (size_t)n->src[2].ne[0];
    if (fa_tiled(n)) return TILE_Q * DK + TILE_KV * DK + 2 * TILE_Q * TILE_KV + TILE_KV * DV + TILE_Q * DV;
    return DK + 3 * DV; /* Q in K's dot type, output, a span's output, V row or f16 accumulator */
}

size_t ggc_work_flash_attn_ext(const ggc_node *n) { return fa_work_floats(n) * sizeof(float); }



static inline float mask_at(const ggc_tensor *m, const void *row, int64_t i) {
    return m->type == GGC_TYPE_F16 ? ggc_fp16_to_fp32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* ggml's 256-bit reduction of 4 accumulators of 8 lanes (GGML_F32x8_REDUCE) */
static float reduce_4x8(float acc[4][8]) {
    float t[4];
    for (int l = 0; l < 8; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
        acc[0][l] += acc[1][l];
    }
    for (int l = 0; l < 4; l++) t[l] = acc[0][l] + acc[0][l + 4];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* ggml_vec_dot_f16 (AVX2): 32 at a time in 4x8 float lanes with FMA, the tail in double.
 * y is the f16 operand already widened to float (Q, converted once per row). */
static float dot_f16(int64_t n, const uint16_t *x, const float *y) {
    float acc[4][8] = {{0}};
    const int64_t np = n & ~(int64_t)31;
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 8; l++)
                acc[j][l] = fmaf(ggc_fp16_to_fp32(x[i + 8 * j + l]), y[i + 8 * j + l], acc[j][l]);
    double sum = reduce_4x8(acc);
    for (int64_t i = np; i < n; i++) sum += (double)(ggc_fp16_to_fp32(x[i]) * y[i]);
    return (float)sum;
}

/* ggml_vec_dot_f32 (AVX2): same lanes, the tail in float */
static float dot_f32(int64_t n, const float *x, const float *y) {
    float acc[4][8] = {{0}};
    const int64_t np = n & ~(int64_t)31;
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 8; l++) acc[j][l] = fmaf(x[i + 8 * j + l], y[i + 8 * j + l], acc[j][l]);
    float sum = reduce_4x8(acc);
    for (int64_t i = np; i < n; i++) { /* not contracted in ggml's build: keep the product a statement */
        const float p = x[i] * y[i];
        sum += p;
    }
    return sum;
}

/* ------------------------------------------------------------------ reference path, one query row */

/* Online softmax of one query row over keys [ic0, ic1): leaves the running max *M, the sum *S and
 * the unnormalized output in vkq (DV floats). qd holds Q in K's dot type; scratch: DV floats. */
static void fa_span(const fa_cfg *c, int64_t iq1, int64_t iq2, int64_t iq3, const void *qd, int64_t ic0, int64_t ic1,
                    int with_sinks, float *M_out, float *S_out, float *vkq, float *scratch) {
    const ggc_type kt = c->k->type, vt = c->v->type;
    const int64_t DK = c->DK, DV = c->DV;
    float *vrow = scratch;                  /* a V row as float */
    uint16_t *vkq16 = (uint16_t *)scratch; /* or the f16 accumulator */

    const float slope = ggc_alibi_slope(c->max_bias, (uint32_t)c->n_head, (uint32_t)iq2);
    const void *mp = c->mask ? ggc_row(c->mask, iq1, iq2 % c->mask->ne[2], iq3 % c->mask->ne[3]) : NULL;
    const int64_t ik2 = iq2 / c->rk2, ik3 = iq3 / c->rk3, iv2 = iq2 / c->rv2, iv3 = iq3 / c->rv3;
    if (vt == GGC_TYPE_F16) memset(vkq16, 0, (size_t)DV * sizeof(uint16_t));
    else memset(vkq, 0, (size_t)DV * sizeof(float));

    float S = 0.0f, M = -INFINITY;
    for (int64_t ic = ic0; ic < ic1; ic++) {
        const float mv = mp ? slope * mask_at(c->mask, mp, ic) : 0.0f;
        if (mv == -INFINITY) continue;

        const void *kr = ggc_row(c->k, ic, ik2, ik3);
        float s = kt == GGC_TYPE_F16   ? dot_f16(DK, kr, qd)
                  : kt == GGC_TYPE_F32 ? dot_f32(DK, kr, qd)
                                       : ggc_vec_dot(kt, DK, kr, qd);
        s = s * c->scale;
        if (c->softcap != 0.0f) s = c->softcap * tanhf(s);
        s += mv;

        const float Mold = M;
        const int newmax = s > M;
        float ms = 1.0f, vs = 1.0f; /* rescale of what was summed so far, weight of this key */
        if (newmax) {
            M = s;
            ms = expf(Mold - M);
        } else {
            vs = expf(s - M);
        }
        const void *vr = ggc_row(c->v, ic, iv2, iv3);
        if (vt == GGC_TYPE_F16) { /* ggml_vec_scale_f16 / ggml_vec_mad_f16: rounded to f16 at each step */
            if (newmax)
                for (int64_t d = 0; d < DV; d++) vkq16[d] = ggc_fp32_to_fp16(ggc_fp16_to_fp32(vkq16[d]) * ms);
            for (int64_t d = 0; d < DV; d++) {
                const float vd = ggc_fp16_to_fp32(((const uint16_t *)vr)[d]);
                vkq16[d] = ggc_fp32_to_fp16(fmaf(vd, vs, ggc_fp16_to_fp32(vkq16[d])));
            }
        } else {
            if (newmax)
                for (int64_t d = 0; d < DV; d++) vkq[d] *= ms;
            const float *vf = vr;
            if (vt != GGC_TYPE_F32) {
                ggc_to_float(vt, vr, vrow, DV);
                vf = vrow;
            }
            for (int64_t d = 0; d < DV; d++) vkq[d] = fmaf(vf[d], vs, vkq[d]);
        }
        S = fmaf(S, ms, vs);
    }
    if (vt == GGC_TYPE_F16)
        for (int64_t d = 0; d < DV; d++) vkq[d] = ggc_fp16_to_fp32(vkq16[d]);

    if (with_sinks && c->sinks) {
        const float s = ((const float *)c->sinks->data)[iq2];
        float ms = 1.0f, vs = 1.0f;
        if (s > M) {
            ms = expf(M - s);
            M = s;
            for (int64_t d = 0; d < DV; d++) vkq[d] *= ms;
        } else {
            vs = expf(s - M);
        }
        S = fmaf(S, ms, vs);
    }
    *M_out = M;
    *S_out = S;
}

/* One query row. n_chunks > 1 reproduces ggml's split-KV decode: the keys in n_chunks equal spans
 * (ggml: one per thread), each with its own softmax, merged in span order. */
static void fa_row(const fa_cfg *c, int64_t iq1, int64_t iq2, int64_t iq3, int64_t n_chunks, float *work) {
    const ggc_type kdt = ggc_vec_dot_type(c->k->type);
    const int64_t DK = c->DK, DV = c->DV;
    void *qd = work; /* Q in K's dot type (for f16: the f16 values widened to float), <= 4 bytes each */
    float *out = work + DK, *part = out + DV, *scratch = part + DV;

    const float *pq = ggc_row(c->q, iq1, iq2, iq3);
    if (kdt == GGC_TYPE_F16)
        for (int64_t i = 0; i < DK; i++) ((float *)qd)[i] = ggc_fp16_to_fp32(ggc_fp32_to_fp16(pq[i]));
    else if (kdt == GGC_TYPE_F32) memcpy(qd, pq, (size_t)DK * sizeof(float));
    else ggc_from_float(kdt, pq, qd, DK);

    float M = -INFINITY, S = 0.0f;
    if (n_chunks <= 1) {
        fa_span(c, iq1, iq2, iq3, qd, 0, c->n_kv, 1, &M, &S, out, scratch);
        if (S != 0.0f) {
            const float inv = 1.0f / S;
            for (int64_t d = 0; d < DV; d++) out[d] *= inv;
        } else {
            memset(out, 0, (size_t)DV * sizeof(float));
        }
    } else { /* ggml_flash_attn_ext_reduce_partials */
        const int64_t chunk = (c->n_kv + n_chunks - 1) / n_chunks;
        memset(out, 0, (size_t)DV * sizeof(float));
        for (int64_t ic0 = 0; ic0 < c->n_kv; ic0 += chunk) {
            float Mc, Sc;
            const int64_t ic1 = ic0 + chunk < c->n_kv ? ic0 + chunk : c->n_kv;
            fa_span(c, iq1, iq2, iq3, qd, ic0, ic1, ic0 == 0, &Mc, &Sc, part, scratch);
            if (Sc == 0.0f) continue;
            const float Mn = fmaxf(M, Mc), so = expf(M - Mn), sn = expf(Mc - Mn);
            for (int64_t d = 0; d < DV; d++) out[d] = fmaf(out[d], so, part[d] * sn);
            S = fmaf(S, so, Sc * sn);
            M = Mn;
        }
        if (S != 0.0f) {
            const float inv = 1.0f / S;
            for (int64_t d = 0; d < DV; d++) out[d] *= inv;
        }
    }
    memcpy(ggc_row(c->dst, iq2, iq1, iq3), out, (size_t)DV * sizeof(float));
}

/* ------------------------------------------------------------------ tiled path, up to 64 query rows of one head */

static void to_f32(const ggc_tensor *t, const void *row, float *y, int64_t n) {
    if (t->type == GGC_TYPE_F16)
        for (int64_t i = 0; i < n; i++) y[i] = ggc_fp16_to_fp32(((const uint16_t *)row)[i]);
    else memcpy(y, row, (size_t)n * sizeof(float));
}

static void fa_tile(const fa_cfg *c, int64_t iq1, int64_t nq, int64_t iq2, int64_t iq3, float *work) {
    const int64_t DK = c->DK, DV = c->DV;
    float *Q = work, *K = Q + TILE_Q * DK, *KQ = K + TILE_KV * DK, *MK = KQ + TILE_Q * TILE_KV;
    float *V = MK + TILE_Q * TILE_KV, *O = V + TILE_KV * DV;
    float M[TILE_Q], S[TILE_Q];
    int skip[TILE_Q];

    const float slope = ggc_alibi_slope(c->max_bias, (uint32_t)c->n_head, (uint32_t)iq2);
    const int64_t ik2 = iq2 / c->rk2, ik3 = iq3 / c->rk3, iv2 = iq2 / c->rv2, iv3 = iq3 / c->rv3;
    for (int64_t t = 0; t < nq; t++) {
        memcpy(Q + t * DK, ggc_row(c->q, iq1 + t, iq2, iq3), (size_t)DK * sizeof(float));
        M[t] = -INFINITY;
        S[t] = 0.0f;
    }
    memset(O, 0, (size_t)(nq * DV) * sizeof(float));

    for (int64_t ic = 0; ic < c->n_kv; ic += TILE_KV) {
        const int64_t nk = c->n_kv - ic < TILE_KV ? c->n_kv - ic : TILE_KV;
        if (c->mask) { /* slope * mask, and skip a tile that masks out every row */
            int all_masked = 1;
            for (int64_t t = 0; t < nq; t++) {
                const void *mp = ggc_row(c->mask, iq1 + t, iq2 % c->mask->ne[2], iq3 % c->mask->ne[3]);
                for (int64_t j = 0; j < nk; j++) {
                    MK[t * TILE_KV + j] = slope * mask_at(c->mask, mp, ic + j);
                    all_masked &= MK[t * TILE_KV + j] == -INFINITY;
                }
            }
            if (all_masked) continue;
        }
        for (int64_t j = 0; j < nk; j++) { /* the tile's keys and values as f32 */
            to_f32(c->k, ggc_row(c->k, ic + j, ik2, ik3), K + j * DK, DK);
            to_f32(c->v, ggc_row(c->v, ic + j, iv2, iv3), V + j * DV, DV);
        }
        for (int64_t t = 0; t < nq; t++) {
            float *row = KQ + t * TILE_KV;
            for (int64_t j = 0; j < nk; j++) {
                float acc = 0.0f;
                for (int64_t i = 0; i < DK; i++) acc = fmaf(Q[t * DK + i], K[j * DK + i], acc);
                acc *= c->scale;
                if (c->softcap != 0.0f) acc = tanhf(acc) * c->softcap;
                row[j] = c->mask ? acc + MK[t * TILE_KV + j] : acc;
            }
            for (int64_t j = nk; j < TILE_KV; j++) row[j] = -INFINITY; /* padding weighs nothing */
            float tmax = -INFINITY;
            for (int64_t j = 0; j < TILE_KV; j++) tmax = tmax > row[j] ? tmax : row[j];
            skip[t] = tmax == -INFINITY;
            if (skip[t]) continue;
            const float Mnew = fmaxf(M[t], tmax);
            if (Mnew > M[t]) {
                const float ms = expf(M[t] - Mnew);
                for (int64_t d = 0; d < DV; d++) O[t * DV + d] *= ms;
                S[t] *= ms;
            }
            M[t] = Mnew;
            S[t] = (float)((double)S[t] + ggc_softmax_exp_row(TILE_KV, row, row, Mnew));
        }
        for (int64_t t = 0; t < nq; t++) {
            if (skip[t]) continue;
            for (int64_t d = 0; d < DV; d++) {
                float acc = O[t * DV + d];
                for (int64_t j = 0; j < nk; j++) acc = fmaf(KQ[t * TILE_KV + j], V[j * DV + d], acc);
                O[t * DV + d] = acc;
            }
        }
    }
    for (int64_t t = 0; t < nq; t++) {
        float *o = O + t * DV;
        if (c->sinks) {
            const float s = ((const float *)c->sinks->data)[iq2];
            float ms = 1.0f, vs = 1.0f;
            if (s > M[t]) {
                ms = expf(M[t] - s);
                for (int64_t d = 0; d < DV; d++) o[d] *= ms;
            } else {
                vs = expf(s - M[t]);
            }
            S[t] = fmaf(S[t], ms, vs);
        }
        const float inv = S[t] == 0.0f ? 0.0f : 1.0f / S[t];
        float *out = ggc_row(c->dst, iq2, iq1 + t, iq3);
        for (int64_t d = 0; d < DV; d++) out[d] = o[d] * inv;
    }
}

void ggc_op_flash_attn_ext(const ggc_node *n, ggc_work *w) {
    const fa_cfg c = fa_config(n, w);
    const size_t per = ggc_work_flash_attn_ext(n);
    const int64_t H = c.n_head, B = c.q->ne[3];
    if (fa_tiled(n)) {
        const int64_t tiles = (c.n_q + TILE_Q - 1) / TILE_Q;
        #pragma omp parallel for num_threads(ggc_work_threads(w, per))
        for (int64_t t = 0; t < tiles * H * B; t++) {
            const int64_t it = t % tiles, iq2 = (t / tiles) % H, iq3 = t / (tiles * H);
            const int64_t iq1 = it * TILE_Q, nq = c.n_q - iq1 < TILE_Q ? c.n_q - iq1 : TILE_Q;
            fa_tile(&c, iq1, nq, iq2, iq3, ggc_work_slice(w, per));
        }
    } else {
        /* ggml's split-KV decode path: its result depends on the thread count, taken as n_threads */
        const ggc_type kt = c.k->type;
        const int split = c.n_q == 1 && B == 1 && c.q->type == GGC_TYPE_F32 &&
                          (kt == GGC_TYPE_F16 || kt == GGC_TYPE_F32) && kt == c.v->type && c.n_kv >= 512;
        const int64_t n_chunks = split && w->n_threads > 1 ? w->n_threads : 1;
        #pragma omp parallel for num_threads(ggc_work_threads(w, per))
        for (int64_t r = 0; r < c.n_q * H * B; r++)
            fa_row(&c, r % c.n_q, (r / c.n_q) % H, r / (c.n_q * H), n_chunks, ggc_work_slice(w, per));
    }
}
