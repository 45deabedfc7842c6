/* ggc CUDA: a ROPE pair's rotation, shared by the ROPE kernel (ggc_cuda_ops.cu) and the matrix-vector
 * products that rotate Q's and K's rows as they store them (ggc_cuda_matmul.cu), so that both give the
 * same bits: ggml's angle recurrence and rope_yarn (ggml-cpu ops.cpp, ggml_rope_cache_init). */
#pragma once

#include "ggc_cuda.cuh"

/* what turns a pair's angle into its rotation (a ROPE's op_params: theta_scale = freq_base^(-2/n_dims)) */
struct ggc_rope_yarn {
    float theta_scale, freq_scale, ext_factor, attn_factor, corr0, corr1;
};

/* the angle of pair pp at position pos: it starts at the position and is multiplied by theta_scale once
 * per pair, in f32, as ggml's cache recurrence does (not powf per pair) */
static __device__ __forceinline__ float ggc_rope_theta(float pos, int64_t pp, float theta_scale) {
    float theta = pos;
    for (int64_t q = 0; q < pp; q++) theta *= theta_scale;
    return theta;
}

/* (cos, sin) of pair pp's rotation by angle theta, times the magnitude scale (rope_yarn); ff: the
 * frequency factors (the angle is divided by ff[pp]) or null */
static __device__ __forceinline__ float2 ggc_rope_cs(float theta, int64_t pp, const float *ff, const ggc_rope_yarn &y) {
    if (ff) theta /= ff[pp];
    const float theta_interp = y.freq_scale * theta;
    float th = theta_interp, mscale = y.attn_factor;
    if (y.ext_factor != 0.0f) {
        const float r = ((float)pp - y.corr0) / fmaxf(0.001f, y.corr1 - y.corr0);
        const float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, r));
        const float mix = ramp * y.ext_factor;
        th = fmaf(theta_interp, 1.0f - mix, theta * mix);
        mscale *= fmaf(0.1f, logf(1.0f / y.freq_scale), 1.0f);
    }
    return make_float2(cosf(th) * mscale, sinf(th) * mscale);
}

/* the rotated pair (x0, x1): as ggml's ROPE, x0 * cos - x1 * sin and x0 * sin + x1 * cos */
static __device__ __forceinline__ float ggc_rope_first(float x0, float x1, float2 cs) { return fmaf(x0, cs.x, -(x1 * cs.y)); }
static __device__ __forceinline__ float ggc_rope_second(float x0, float x1, float2 cs) { return fmaf(x0, cs.y, x1 * cs.x); }

/* host: a ROPE node's yarn parameters (op_params 4..10) for n_dims rotated channels */
static inline float ggc_rope_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    const float pi = 3.14159265358979323846f;
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2.0f * pi)) / (2.0f * logf(base));
}
static inline ggc_rope_yarn ggc_rope_yarn_of(const ggc_node *n, int n_dims) {
    const int n_ctx_orig = n->op_params[4];
    const float freq_base = ggc_cuda_param_f32(n, 5);
    ggc_rope_yarn y;
    y.freq_scale = ggc_cuda_param_f32(n, 6);
    y.ext_factor = ggc_cuda_param_f32(n, 7);
    y.attn_factor = ggc_cuda_param_f32(n, 8);
    y.theta_scale = powf(freq_base, -2.0f / (float)n_dims);
    const float start = floorf(ggc_rope_corr_dim(n_dims, n_ctx_orig, ggc_cuda_param_f32(n, 9), freq_base));
    const float end = ceilf(ggc_rope_corr_dim(n_dims, n_ctx_orig, ggc_cuda_param_f32(n, 10), freq_base));
    y.corr0 = 0.0f > start ? 0.0f : start;
    y.corr1 = (float)(n_dims - 1) < end ? (float)(n_dims - 1) : end;
    return y;
}
