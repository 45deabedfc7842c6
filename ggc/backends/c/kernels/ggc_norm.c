/* Row normalizations: NORM, RMS_NORM, L2_NORM (op_params[0] = eps), f32.
 *
 * As in ggml's CPU backend, sums run in double (ggml_float) and the scale is applied in float.
 * NORM's variance reproduces ggml_vec_cvar_f32 of the AVX2 build: squares are summed 8 at a time
 * in float (ggml's horizontal-add order) and each group sum is added in double.
 */
#include <math.h>

#include "ggc.h"


static inline float elem(const char *row, size_t nb, int64_t i) { return *(const float *)(row + i * (int64_t)nb); }

/* sum of squares of a row in double, each square rounded to float first, as ggml does */
static double sum_sq(const char *x, size_t nb, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float v = elem(x, nb, i);
        s += (double)(v * v);
    }
    return s;
}
static inline float *elem_w(char *row, size_t nb, int64_t i) { return (float *)(row + i * (int64_t)nb); }

/* y = x - mean; returns mean((x - mean)^2) as ggml_vec_cvar_f32 sums it */
static double centered_variance(int64_t n, float *y, const float *x, float mean) {
    double sum = 0.0;
    const int64_t nv = n & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i += 8) {
        float q[8];
        for (int k = 0; k < 8; k++) {
            y[i + k] = x[i + k] - mean;
            q[k] = y[i + k] * y[i + k];
        }
        /* 256-bit reduction: (hi + lo), then (0 + 2, 1 + 3), then their sum */
        const float t0 = q[0] + q[4], t1 = q[1] + q[5], t2 = q[2] + q[6], t3 = q[3] + q[7];
        sum += (double)((t0 + t2) + (t1 + t3));
    }
    for (int64_t i = nv; i < n; i++) {
        y[i] = x[i] - mean;
        sum += (double)(y[i] * y[i]);
    }
    return sum / (double)n;
}

/* NORM: (x - mean) / sqrt(var + eps) */
void ggc_op_norm(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float eps = ggc_param_f32(n, 0);
    const int64_t ne0 = a->ne[0];
    const int unit = a->nb[0] == sizeof(float) && d->nb[0] == sizeof(float);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const char *x = ggc_row(a, i1, i2, i3);
        char *y = ggc_row(d, i1, i2, i3);
        if (unit) {
            double s = 0.0;
            for (int64_t i = 0; i < ne0; i++) s += (double)((const float *)x)[i];
            const float mean = (float)s / (float)ne0;
            const float variance = (float)centered_variance(ne0, (float *)y, (const float *)x, mean);
            const float scale = 1.0f / sqrtf(variance + eps);
            for (int64_t i = 0; i < ne0; i++) ((float *)y)[i] *= scale;
        } else { /* ggml's strided path sums in float */
            float s = 0.0f;
            for (int64_t i = 0; i < ne0; i++) s += elem(x, a->nb[0], i);
            const float mean = s / (float)ne0;
            float variance = 0.0f;
            for (int64_t i = 0; i < ne0; i++) {
                const float v = elem(x, a->nb[0], i) - mean;
                *elem_w(y, d->nb[0], i) = v;
                variance = fmaf(v, v, variance); /* contracted in ggml's build */
            }
            variance /= (float)ne0;
            const float scale = 1.0f / sqrtf(variance + eps);
            for (int64_t i = 0; i < ne0; i++) *elem_w(y, d->nb[0], i) *= scale;
        }
    }
}

/* RMS_NORM: x / sqrt(mean(x^2) + eps) */
void ggc_op_rms_norm(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float eps = ggc_param_f32(n, 0);
    const int64_t ne0 = a->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const char *x = ggc_row(a, i1, i2, i3);
        char *y = ggc_row(d, i1, i2, i3);
        const double s = sum_sq(x, a->nb[0], ne0);
        const float mean = (float)(s / (double)ne0);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < ne0; i++) *elem_w(y, d->nb[0], i) = elem(x, a->nb[0], i) * scale;
    }
}

/* L2_NORM: x / max(|x|, eps) */
void ggc_op_l2_norm(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float eps = ggc_param_f32(n, 0);
    const int64_t ne0 = a->ne[0];
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        GGC_ROW_INDEX(d, r, i1, i2, i3);
        const char *x = ggc_row(a, i1, i2, i3);
        char *y = ggc_row(d, i1, i2, i3);
        const double s = sum_sq(x, a->nb[0], ne0);
        const float scale = 1.0f / fmaxf(sqrtf((float)s), eps);
        for (int64_t i = 0; i < ne0; i++) *elem_w(y, d->nb[0], i) = elem(x, a->nb[0], i) * scale;
    }
}
