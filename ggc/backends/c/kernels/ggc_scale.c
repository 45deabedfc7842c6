/* SCALE: dst = src0 * s + b (op_params: s, b as f32). */
#include "ggc.h"

void ggc_op_scale(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *d = &n->dst;
    const float s = ggc_param_f32(n, 0), b = ggc_param_f32(n, 1);
    #pragma omp parallel for
    for (int64_t r = 0; r < ggc_nrows(d); r++) {
        const int64_t i1 = r % d->ne[1], i2 = (r / d->ne[1]) % d->ne[2], i3 = r / (d->ne[1] * d->ne[2]);
        const float *x = (const float *)ggc_row(a, i1, i2, i3);
        float *y = (float *)ggc_row(d, i1, i2, i3);
        for (int64_t i = 0; i < d->ne[0]; i++) y[i] = b == 0.0f ? x[i] * s : x[i] * s + b;
    }
}
