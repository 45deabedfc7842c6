/* ROPE: rotary position embedding, f32 or f16 rows, as ggml's CPU backend computes it.
 *
 * src[0] x [ne0, n_head, n_tokens, n_seq]; src[1] i32 positions (n_tokens, or 4 * n_tokens for the
 * multi-section modes); src[2] optional f32 frequency factors (one divisor per pair).
 * op_params: 1 n_dims, 2 mode, 4 n_ctx_orig, 5..10 freq_base, freq_scale, ext_factor, attn_factor,
 * beta_fast, beta_slow (f32), 11..14 mrope sections, 15 n_offs (first rotated channel).
 *
 * Modes: 0 normal (pairs 2i, 2i+1), 2 neox (pairs i, i + n_dims/2), 8 mrope and 40 imrope (neox
 * pairs, the angle of each pair from one of 4 position streams by section), 24 vision (pairs i,
 * i + n_dims over the whole row, sections restart their angle).
 *
 * The angles follow ggml's per-token cache: theta starts at the position and is multiplied by
 * theta_scale = freq_base^(-2/n_dims) once per pair, in float, then YaRN (rope_yarn) mixes the
 * interpolated and extrapolated angle and scales cos/sin by mscale. Multiply-adds that ggml's
 * build contracts are fmaf here.
 */
#include <math.h>

#include "ggc.h"

enum { MODE_NEOX = 2, MODE_MROPE = 8, MODE_VISION = 24, MODE_IMROPE = 40 };
enum { CHUNK = 64 }; /* pairs whose cos/sin are cached at once */

typedef struct {
    float freq_scale, ext_factor, attn_factor, corr[2], theta_scale;
    const float *ff;
    int mode, sections[4];
} rope_cfg;

/* YaRN correction dims: where the extrapolated and interpolated frequencies hand over */
static float corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    const float pi = 3.14159265358979323846f;
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2.0f * pi)) / (2.0f * logf(base));
}

static float yarn_ramp(float low, float high, int64_t i0) {
    const float y = ((float)(i0 / 2) - low) / fmaxf(0.001f, high - low);
    const float c = y < 0.0f ? 0.0f : y;
    return 1.0f - (c > 1.0f ? 1.0f : c);
}

/* cos and sin of one pair (cache index i0 = 2 * pair) for the unscaled angle theta_extrap */
static void yarn(const rope_cfg *c, float theta_extrap, int64_t i0, float *cs) {
    const float theta_interp = c->freq_scale * theta_extrap;
    float theta = theta_interp, mscale = c->attn_factor;
    if (c->ext_factor != 0.0f) {
        const float mix = yarn_ramp(c->corr[0], c->corr[1], i0) * c->ext_factor;
        theta = fmaf(theta_interp, 1.0f - mix, theta_extrap * mix);
        mscale *= fmaf(0.1f, logf(1.0f / c->freq_scale), 1.0f);
    }
    cs[0] = cosf(theta) * mscale;
    cs[1] = sinf(theta) * mscale;
}

/* the angle streams of one token; theta[0] only, unless a multi-section mode */
typedef struct {
    float theta[4], base[4];
} rope_state;

/* the angle of pair p (and advance the streams), as ggml_rope_cache_init / ggml_mrope_cache_init */
static float next_theta(const rope_cfg *c, rope_state *s, int64_t p) {
    float theta = s->theta[0];
    if (c->mode & MODE_MROPE) {
        const int *sec = c->sections;
        const int sect_dims = sec[0] + sec[1] + sec[2] + sec[3], sec_w = sec[0] + sec[1], sec_e = sec_w + sec[2];
        const int sector = (int)(p % sect_dims);
        if (c->mode == MODE_VISION) { /* independent sections: each restarts its stream */
            if (sector == 0) s->theta[0] = s->base[0];
            else if (sector == sec[0]) s->theta[1] = s->base[1];
            else if (sector == sec_w) s->theta[2] = s->base[2];
            else if (sector == sec_e) s->theta[3] = s->base[3];
        }
        theta = s->theta[0];
        if (c->mode == MODE_IMROPE) { /* interleaved t, h, w */
            if (sector % 3 == 1 && sector < 3 * sec[1]) theta = s->theta[1];
            else if (sector % 3 == 2 && sector < 3 * sec[2]) theta = s->theta[2];
            else if (sector % 3 == 0 && sector < 3 * sec[0]) theta = s->theta[0];
            else theta = s->theta[3];
        } else {
            if (sector >= sec[0] && sector < sec_w) theta = s->theta[1];
            else if (sector >= sec_w && sector < sec_w + sec[2]) theta = s->theta[2];
            else if (sector >= sec_w + sec[2]) theta = s->theta[3];
        }
    }
    for (int k = 0; k < 4; k++) s->theta[k] *= c->theta_scale;
    return theta;
}

void ggc_op_rope(const ggc_node *n, ggc_work *w) {
    (void)w;
    const ggc_tensor *a = &n->src[0], *pos = &n->src[1], *d = &n->dst;
    const int n_dims = n->op_params[1], n_ctx_orig = n->op_params[4], n_offs = n->op_params[15];
    const float freq_base = ggc_param_f32(n, 5);
    rope_cfg c = {
        .freq_scale = ggc_param_f32(n, 6),
        .ext_factor = ggc_param_f32(n, 7),
        .attn_factor = ggc_param_f32(n, 8),
        .theta_scale = powf(freq_base, -2.0f / (float)n_dims),
        .ff = n->src[2].data ? (const float *)n->src[2].data : NULL,
        .mode = n->op_params[2],
    };
    for (int k = 0; k < 4; k++) c.sections[k] = n->op_params[11 + k];
    const float start = floorf(corr_dim(n_dims, n_ctx_orig, ggc_param_f32(n, 9), freq_base));
    const float end = ceilf(corr_dim(n_dims, n_ctx_orig, ggc_param_f32(n, 10), freq_base));
    c.corr[0] = 0.0f > start ? 0.0f : start;
    c.corr[1] = (float)(n_dims - 1) < end ? (float)(n_dims - 1) : end;

    const int vision = c.mode == MODE_VISION;
    const int64_t ne0 = d->ne[0], ne1 = d->ne[1], ne2 = d->ne[2], ne3 = d->ne[3];
    /* pair p rotates elements (first + p*step, first + p*step + offset) */
    const int64_t n_pairs = vision ? ne0 / 2 : n_dims / 2;
    const int64_t first = vision ? 0 : n_offs;
    const int64_t step = (c.mode & MODE_NEOX) || (c.mode & MODE_MROPE) ? 1 : 2;
    const int64_t offset = vision ? n_dims : step == 1 ? n_dims / 2 : 1;
    const int32_t *ps = (const int32_t *)pos->data;

    #pragma omp parallel for
    for (int64_t t = 0; t < ne2 * ne3; t++) {
        const int64_t i2 = t % ne2, i3 = t / ne2;
        rope_state s;
        for (int k = 0; k < 4; k++) s.base[k] = s.theta[k] = (float)ps[(c.mode & MODE_MROPE) ? i2 + k * ne2 : i2];
        float cache[2 * CHUNK];
        for (int64_t p0 = 0; p0 < n_pairs; p0 += CHUNK) {
            const int64_t np = n_pairs - p0 < CHUNK ? n_pairs - p0 : CHUNK;
            for (int64_t p = 0; p < np; p++) {
                const float theta = next_theta(&c, &s, p0 + p);
                yarn(&c, c.ff ? theta / c.ff[p0 + p] : theta, 2 * (p0 + p), &cache[2 * p]);
            }
            for (int64_t i1 = 0; i1 < ne1; i1++)
                for (int64_t p = 0; p < np; p++) {
                    const int64_t j = first + (p0 + p) * step;
                    const float cs = cache[2 * p], sn = cache[2 * p + 1];
                    const float x0 = ggc_get_f(a, j, i1, i2, i3), x1 = ggc_get_f(a, j + offset, i1, i2, i3);
                    ggc_set_f(d, j, i1, i2, i3, fmaf(x0, cs, -(x1 * sn)));
                    ggc_set_f(d, j + offset, i1, i2, i3, fmaf(x0, sn, x1 * cs));
                }
        }
        if (vision) continue;
        /* channels outside the rotated span pass through (memmove: dst may be src, in place) */
        const size_t esize = ggc_type_size(d->type);
        for (int64_t i1 = 0; i1 < ne1; i1++)
            for (int64_t i0 = 0; i0 < ne0; i0++)
                if (i0 < n_offs || i0 >= n_offs + n_dims)
                    memmove(ggc_ptr(d, i0, i1, i2, i3), ggc_ptr(a, i0, i1, i2, i3), esize);
    }
}
