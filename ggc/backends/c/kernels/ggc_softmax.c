/* SOFT_MAX: dst = softmax(src0 * scale + slope * mask) along rows, f32.
 *
 * op_params: scale, max_bias (f32). src[1]: optional mask, f16 or f32, row i1 of the mask serves
 * row i1 of the input and it broadcasts over heads (dim 2) and sequences (dim 3) by modulo.
 * max_bias > 0 gives ALiBi slopes per head (dim 2). src[2]: optional sinks, f32 [n_head], one
 * extra logit per head that joins the normalization but not the output.
 *
 * Numerics as ggml's CPU backend (AVX2 build): exponentials through ggml_v_expf on full groups of
 * 8 (ggc_expf_vec), libm on the tail; the sum runs in double; the output is scaled by
 * (float)(1.0 / sum).
 */
#include <math.h>

#include "ggc.h"


float ggc_expf_vec(float x); /* ggc_elementwise.c */
double ggc_softmax_exp_row(int64_t n, float *y, const float *x, float max);

/* ggml_vec_soft_max_f32: y = exp(x - max), returns sum(y) as ggml accumulates it */
double ggc_softmax_exp_row(int64_t n, float *y, const float *x, float max) {
    double sum = 0.0;
    const int64_t nv = n & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i += 8) {
        for (int k = 0; k < 8; k++) y[i + k] = ggc_expf_vec(x[i + k] - max);
        const float t0 = y[i] + y[i + 4], t1 = y[i + 1] + y[i + 5], t2 = y[i + 2] + y[i + 6], t3 = y[i + 3] + y[i + 7];
        sum += (double)((t0 + t2) + (t1 + t3));
    }
    for (int64_t i = nv; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += (double)y[i];
    }
    return sum;
}

/* ALiBi slope of head h (1 without max_bias), as ggml computes it */
float ggc_alibi_slope(float max_bias, uint32_t n_head, uint32_t h) {
    if (!(max_bias > 0.0f)) return 1.0f;
    const uint32_t n_head_log2 = 1u << (uint32_t)floor(log2((double)n_head));
    const float m0 = powf(2.0f, -(max_bias) / (float)n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / (float)n_head_log2);
    return h < n_head_log2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n_head_log2) + 1));
}

/* the logits row is staged in dst itself (dst rows are contiguous f32), then exponentiated in place */
void ggc_op_soft_max(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const ggc_tensor *mask = n->src[1].data ? &n->src[1] : NULL, *sinks = n->src[2].data ? &n->src[2] : NULL;
    const float scale = ggc_param_f32(n, 0), max_bias = ggc_param_f32(n, 1);
    const int64_t ne0 = a->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const float slope = ggc_alibi_slope(max_bias, (uint32_t)a->ne[2], (uint32_t)i2);
        float *y = ggc_row(d, i1, i2, i3);
        for (int64_t i = 0; i < ne0; i++) y[i] = *(const float *)ggc_ptr(a, i, i1, i2, i3) * scale;
        if (mask) {
            const int64_t m2 = i2 % mask->ne[2], m3 = i3 % mask->ne[3];
            if (max_bias > 0.0f)
                for (int64_t i = 0; i < ne0; i++) y[i] = fmaf(slope, ggc_get_f(mask, i, i1, m2, m3), y[i]);
            else
                for (int64_t i = 0; i < ne0; i++) y[i] += ggc_get_f(mask, i, i1, m2, m3);
        }
        float max = -INFINITY;
        for (int64_t i = 0; i < ne0; i++) max = max > y[i] ? max : y[i]; /* ggml_vec_max_f32 */
        const float sink = sinks ? ((const float *)sinks->data)[i2] : 0.0f;
        if (sinks) max = max > sink ? max : sink;
        double sum = ggc_softmax_exp_row(ne0, y, y, max);
        if (sinks) sum += (double)expf(sink - max);
        const float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < ne0; i++) y[i] *= inv;
    }
}
