/* Quantized block formats: rows to and from float, and the dot products of matrix products.
 *
 * Block layouts are ggml's (ggml-common.h), byte for byte. Numerics follow ggml:
 *   - to_float is ggml's dequantize_row_* (same expression order, so results are bit-identical);
 *   - from_float is ggml-cpu's from_float: the reference quantizers for q4_0..q5_1 and q8_K, and
 *     the x86 AVX quantizers for q8_0 / q8_1 (they scale by 127/amax and round half to even,
 *     where the reference multiplies by 1/d and rounds half away from zero);
 *   - the dot products are bit-identical to ggml-cpu's x86 AVX2 + FMA kernels: its vec_dot per
 *     type, llamafile's tinyBLAS and the tiled K-quant matmul (see "dot products" below; which
 *     one a MUL_MAT uses is chosen in ggc_matmul.c).
 */
#include <float.h>
#include <math.h>

#include "ggc.h"

#define QK 32 /* elements per block of the 32-element formats */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } blk_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_1;
typedef struct { uint16_t d; int8_t qs[QK]; } blk_q8_0;
typedef struct { uint16_t d, s; int8_t qs[QK]; } blk_q8_1; /* s = d * sum(qs) */
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } blk_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } blk_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;
typedef struct { float d; int8_t qs[GGC_QK_K]; int16_t bsums[GGC_QK_K / 16]; } blk_q8_K;

_Static_assert(sizeof(blk_q4_0) == 18 && sizeof(blk_q4_1) == 20 && sizeof(blk_q5_0) == 22 &&
               sizeof(blk_q5_1) == 24 && sizeof(blk_q8_0) == 34 && sizeof(blk_q8_1) == 36, "block sizes");
_Static_assert(sizeof(blk_q2_K) == 84 && sizeof(blk_q3_K) == 110 && sizeof(blk_q4_K) == 144 &&
               sizeof(blk_q5_K) == 176 && sizeof(blk_q6_K) == 210 && sizeof(blk_q8_K) == 292, "K block sizes");

/* f16 -> f32 without branches on the hot paths (f16 rows and dots): shifted into place, the
 * half's exponent and mantissa form a float 2^112 too large (exact to rescale, also for inf and
 * nan); subnormal halves are read as a float of exponent -1 whose mantissa holds them, minus 0.5.
 * Same values as ggc_fp16_to_fp32. */
static inline float h2f(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    uint32_t u;
    float f;
    if (two_w < (1u << 27)) {
        u = (two_w >> 17) | (126u << 23);
        memcpy(&f, &u, 4);
        f -= 0.5f;
    } else {
        u = (two_w >> 4) + (0xE0u << 23);
        memcpy(&f, &u, 4);
        f *= 0x1.0p-112f;
    }
    memcpy(&u, &f, 4);
    u |= sign;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the rounded integer
 * in the low mantissa bits (the FPU's default rounding does the tie-breaking). */
static inline int round_even(float v) {
    const float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* the 5th bit of element j (0..31) of a q5 block, as 0 or 16 */
static inline int q5_high(uint32_t qh, int j) { return (int)((qh >> j) & 1u) << 4; }

/* q4_K / q5_K: 8 six-bit scales and 8 six-bit mins packed into 12 bytes. Sub-blocks 0..3 keep
 * them in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 put their low
 * 4 bits in bytes 8..11 and their top 2 bits in the spare high bits of bytes 0..7. */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* q3_K: 16 six-bit scales (stored +32) in 12 bytes: low nibbles in bytes 0..7 (scales 0..7 in the
 * low halves, 8..15 in the high halves), top 2 bits in bytes 8..11, two bits per scale. */
static inline int q3k_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* Unpacked K-quant values: the 256 quants of one block, before scaling. */
static void q2k_quants(const blk_q2_K *b, int8_t q[GGC_QK_K]) {
    for (int e = 0; e < GGC_QK_K; e++) q[e] = (int8_t)((b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3);
}
static void q3k_quants(const blk_q3_K *b, int8_t q[GGC_QK_K]) {
    for (int e = 0; e < GGC_QK_K; e++) {
        const int h = e / 128, j = (e % 128) / 32, l = e % 32;
        const int low = (b->qs[32 * h + l] >> (2 * j)) & 3;
        q[e] = (int8_t)(low - ((b->hmask[l] >> (4 * h + j)) & 1 ? 0 : 4));
    }
}
/* q4_K and q5_K: 64-element chunks, low nibbles of 32 bytes first, then their high nibbles;
 * q5_K adds a 5th bit from qh (bit 2c for the low half of chunk c, 2c+1 for the high half). */
static void q45k_quants(const uint8_t *qs, const uint8_t *qh, int8_t q[GGC_QK_K]) {
    for (int e = 0; e < GGC_QK_K; e++) {
        const int c = e / 64, hi = (e % 64) / 32, l = e % 32;
        int v = hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 0xF;
        if (qh) v += ((qh[l] >> (2 * c + hi)) & 1) << 4;
        q[e] = (int8_t)v;
    }
}
/* q6_K: per 128-element half, four 32-element quarters; low 4 bits from ql, high 2 from qh. */
static void q6k_quants(const blk_q6_K *b, int8_t q[GGC_QK_K]) {
    for (int e = 0; e < GGC_QK_K; e++) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const uint8_t lb = b->ql[64 * h + l + 32 * (k & 1)];
        const int low = k < 2 ? lb & 0xF : lb >> 4;
        const int high = (b->qh[32 * h + l] >> (2 * k)) & 3;
        q[e] = (int8_t)((low | high << 4) - 32);
    }
}

/* ------------------------------------------------------------------ to float */

static void deq_q4_0(const blk_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[i].qs[j] & 0xF) - 8) * d;
            y[j + QK / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}
static void deq_q4_1(const blk_q4_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (x[i].qs[j] & 0xF) * d + m;
            y[j + QK / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}
static void deq_q5_0(const blk_q5_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (((x[i].qs[j] & 0xF) | q5_high(qh, j)) - 16) * d;
            y[j + QK / 2] = (((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) - 16) * d;
        }
    }
}
static void deq_q5_1(const blk_q5_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[i].qs[j] & 0xF) | q5_high(qh, j)) * d + m;
            y[j + QK / 2] = ((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) * d + m;
        }
    }
}
static void deq_q8_0(const blk_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}
static void deq_q8_1(const blk_q8_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}
static void deq_q2_K(const blk_q2_K *x, float *y, int64_t nb) {
    int8_t q[GGC_QK_K];
    for (int64_t i = 0; i < nb; i++, y += GGC_QK_K) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        q2k_quants(&x[i], q);
        for (int g = 0; g < 16; g++) { /* 16 groups of 16, each with a 4-bit scale and min */
            const float dl = d * (x[i].scales[g] & 0xF), ml = dmin * (x[i].scales[g] >> 4);
            for (int l = 0; l < 16; l++) y[16 * g + l] = dl * q[16 * g + l] - ml;
        }
    }
}
static void deq_q3_K(const blk_q3_K *x, float *y, int64_t nb) {
    int8_t q[GGC_QK_K];
    for (int64_t i = 0; i < nb; i++, y += GGC_QK_K) {
        const float d = h2f(x[i].d);
        q3k_quants(&x[i], q);
        for (int g = 0; g < 16; g++) {
            const float dl = d * q3k_scale(x[i].scales, g);
            for (int l = 0; l < 16; l++) y[16 * g + l] = dl * q[16 * g + l];
        }
    }
}
static void deq_q45_K(const uint16_t *dm, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float *y) {
    int8_t q[GGC_QK_K];
    const float d = h2f(dm[0]), dmin = h2f(dm[1]);
    q45k_quants(qs, qh, q);
    for (int s = 0; s < 8; s++) { /* 8 sub-blocks of 32, each with a 6-bit scale and min */
        int sc, m;
        k4_scale_min(scales, s, &sc, &m);
        const float d1 = d * sc, m1 = dmin * m;
        for (int l = 0; l < 32; l++) y[32 * s + l] = d1 * q[32 * s + l] - m1;
    }
}
static void deq_q6_K(const blk_q6_K *x, float *y, int64_t nb) {
    int8_t q[GGC_QK_K];
    for (int64_t i = 0; i < nb; i++, y += GGC_QK_K) {
        const float d = h2f(x[i].d);
        q6k_quants(&x[i], q);
        for (int e = 0; e < GGC_QK_K; e++) y[e] = d * x[i].scales[e / 16] * q[e];
    }
}
static void deq_q8_K(const blk_q8_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += GGC_QK_K)
        for (int j = 0; j < GGC_QK_K; j++) y[j] = x[i].d * x[i].qs[j];
}

void ggc_to_float(ggc_type t, const void *src, float *dst, int64_t n) {
    const int64_t nb = n / ggc_blck_size(t);
    switch (t) {
    case GGC_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case GGC_TYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = h2f(((const uint16_t *)src)[i]);
        break;
    case GGC_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = ggc_bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case GGC_TYPE_Q4_0: deq_q4_0(src, dst, nb); break;
    case GGC_TYPE_Q4_1: deq_q4_1(src, dst, nb); break;
    case GGC_TYPE_Q5_0: deq_q5_0(src, dst, nb); break;
    case GGC_TYPE_Q5_1: deq_q5_1(src, dst, nb); break;
    case GGC_TYPE_Q8_0: deq_q8_0(src, dst, nb); break;
    case GGC_TYPE_Q8_1: deq_q8_1(src, dst, nb); break;
    case GGC_TYPE_Q2_K: deq_q2_K(src, dst, nb); break;
    case GGC_TYPE_Q3_K: deq_q3_K(src, dst, nb); break;
    case GGC_TYPE_Q4_K:
        for (int64_t i = 0; i < nb; i++) {
            const blk_q4_K *b = (const blk_q4_K *)src + i;
            deq_q45_K(&b->d, b->scales, b->qs, NULL, dst + i * GGC_QK_K);
        }
        break;
    case GGC_TYPE_Q5_K:
        for (int64_t i = 0; i < nb; i++) {
            const blk_q5_K *b = (const blk_q5_K *)src + i;
            deq_q45_K(&b->d, b->scales, b->qs, b->qh, dst + i * GGC_QK_K);
        }
        break;
    case GGC_TYPE_Q6_K: deq_q6_K(src, dst, nb); break;
    case GGC_TYPE_Q8_K: deq_q8_K(src, dst, nb); break;
    default: memset(dst, 0, (size_t)n * sizeof(float)); break; /* integer types: not a float row */
    }
}

/* ------------------------------------------------------------------ from float */

/* the element of largest magnitude (its signed value; the first one on ties) */
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}
static void min_max(const float *x, int n, float *mn, float *mx) {
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn) *mn = x[j];
        if (x[j] > *mx) *mx = x[j];
    }
}

/* q4_0 / q5_0: symmetric, d = max / -2^(bits-1) so that the largest element maps to the end of
 * the range; quants truncate x/d + offset + 0.5 (offset 8 or 16). */
static void quant_q4_0(const float *x, blk_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -8, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ggc_fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            int a = (int)(x[j] * id + 8.5f), b = (int)(x[j + QK / 2] * id + 8.5f);
            a = a < 15 ? a : 15;
            b = b < 15 ? b : 15;
            y[i].qs[j] = (uint8_t)(a | b << 4);
        }
    }
}
static void quant_q5_0(const float *x, blk_q5_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ggc_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            int a = (int)(x[j] * id + 16.5f), b = (int)(x[j + QK / 2] * id + 16.5f);
            a = a < 31 ? a : 31;
            b = b < 31 ? b : 31;
            y[i].qs[j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
            qh |= (uint32_t)(a >> 4) << j | (uint32_t)(b >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}
/* q4_1 / q5_1: affine, m = min, d = (max - min) / (2^bits - 1); quants truncate (x - m)/d + 0.5. */
static void quant_q4_1(const float *x, blk_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        const float d = (mx - mn) / 15, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ggc_fp32_to_fp16(d);
        y[i].m = ggc_fp32_to_fp16(mn);
        for (int j = 0; j < QK / 2; j++) {
            int a = (int)((x[j] - mn) * id + 0.5f), b = (int)((x[j + QK / 2] - mn) * id + 0.5f);
            a = a < 15 ? a : 15;
            b = b < 15 ? b : 15;
            y[i].qs[j] = (uint8_t)(a | b << 4);
        }
    }
}
static void quant_q5_1(const float *x, blk_q5_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        const float d = (mx - mn) / 31, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ggc_fp32_to_fp16(d);
        y[i].m = ggc_fp32_to_fp16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int a = (uint8_t)((x[j] - mn) * id + 0.5f), b = (uint8_t)((x[j + QK / 2] - mn) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
            qh |= (uint32_t)((a >> 4) & 1) << j | (uint32_t)((b >> 4) & 1) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}
/* q8_0 / q8_1 as ggml-cpu's x86 quantizer: d = amax/127, quants round(x * 127/amax) half to even.
 * q8_1 also stores s = d * sum(quants), with the unrounded d. Returns the sum of the quants. */
static int quant_q8_block(const float *x, uint16_t *dh, int8_t *qs, float *dout) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *dh = ggc_fp32_to_fp16(d);
    *dout = d;
    int sum = 0;
    for (int j = 0; j < QK; j++) {
        qs[j] = (int8_t)round_even(x[j] * id);
        sum += qs[j];
    }
    return sum;
}
static void quant_q8_0(const float *x, blk_q8_0 *y, int64_t nb) {
    float d;
    for (int64_t i = 0; i < nb; i++) quant_q8_block(x + i * QK, &y[i].d, y[i].qs, &d);
}
static void quant_q8_1(const float *x, blk_q8_1 *y, int64_t nb) {
    float d;
    for (int64_t i = 0; i < nb; i++) {
        const int sum = quant_q8_block(x + i * QK, &y[i].d, y[i].qs, &d);
        y[i].s = ggc_fp32_to_fp16(d * (float)sum);
    }
}
/* q8_K (reference): scale -127/max by the signed extreme, round half to even, clamp to 127;
 * d is a float, and bsums hold the sums of each 16 quants (for the K-quants' min terms). */
static void quant_q8_K(const float *x, blk_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += GGC_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < GGC_QK_K; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < GGC_QK_K; j++) {
            const int v = round_even(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < GGC_QK_K / 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += y[i].qs[16 * g + l];
            y[i].bsums[g] = (int16_t)s;
        }
        y[i].d = 1 / iscale;
    }
}

void ggc_from_float(ggc_type t, const float *src, void *dst, int64_t n) {
    const int64_t nb = n / ggc_blck_size(t);
    switch (t) {
    case GGC_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case GGC_TYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ggc_fp32_to_fp16(src[i]);
        break;
    case GGC_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ggc_fp32_to_bf16(src[i]);
        break;
    case GGC_TYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case GGC_TYPE_Q4_1: quant_q4_1(src, dst, nb); break;
    case GGC_TYPE_Q5_0: quant_q5_0(src, dst, nb); break;
    case GGC_TYPE_Q5_1: quant_q5_1(src, dst, nb); break;
    case GGC_TYPE_Q8_0: quant_q8_0(src, dst, nb); break;
    case GGC_TYPE_Q8_1: quant_q8_1(src, dst, nb); break;
    case GGC_TYPE_Q8_K: quant_q8_K(src, dst, nb); break;
    default: /* q2_K..q6_K need ggml's iterative quantizers: not supported, the compiler must not ask */
        memset(dst, 0, ggc_row_size(t, n));
        break;
    }
}

/* ------------------------------------------------------------------ dot products
 *
 * The dot products of ggml's CPU backend as built in llama-cpp-python here: x86-64 with AVX2,
 * FMA and F16C (no AVX512, no AVX-VNNI), compiled by GCC, whose default -ffp-contract=fast also
 * fuses a few scalar a*b + c of the C source into one FMA (marked "fused by GCC" below, checked
 * in the disassembly of libggml-cpu.so). SIMD registers are emulated lane by lane: an __m256 is a
 * float[8], an __m256i of int32 an int32_t[8]. Integer parts are exact, so what must match is the
 * float structure: which products each lane sums, in which order lanes are reduced, and where an
 * FMA rounds once instead of twice.
 *
 *   ggc_vec_dot       ggml's vec_dot of the weight type (arch/x86/quants.c, vec.cpp)
 *   ggc_dot_tinyblas  llamafile_sgemm's tinyBLAS<8, __m256, ...> for f32 / f16 / bf16 (llamafile/sgemm.cpp)
 *   ggc_dot_tiled     the tiled K-quant matmul, AVX2 microkernel (tiled/tiled.cpp, tiled-kernel.cpp)
 * tinyBLAS_Q0_AVX (llamafile's q8_0 / q4_0 / q5_0 kernel) computes exactly what those types'
 * vec_dot computes: per block 8 int32 lanes, one fma by dx*dy each, then hsum. */

/* fmaf(a, b, c), exactly, and fma8: the same on 8 lanes, as _mm256_fmadd_ps.
 *
 * Where fmaf is a libm call (a build for generic x86-64, which has no FMA instruction to inline),
 * the calls cost more than all the integer work of the quantized dots, so without FP_FAST_FMAF
 * the fused multiply-add is done in double: a * b is exact there, and when p + c is exact in
 * double too (its TwoSum remainder is 0: nearly always), rounding it to float is the fused
 * result. fma8 does that for 8 lanes at once in a form compilers vectorize, and fma_f settles
 * the rare inexact case by rounding the double sum to odd (53 >= 2 * 24 + 2 bits, so the second
 * rounding, to float, is then correct): an inexact result with an even last bit moves one ulp
 * toward the exact sum. Needs double arithmetic without excess precision (FLT_EVAL_METHOD 0). */
#if defined(FP_FAST_FMAF) || !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#define fma_f fmaf
static inline void fma8(float *restrict acc, const float *restrict a, const float *restrict b) {
    for (int l = 0; l < 8; l++) acc[l] = fmaf(a[l], b[l], acc[l]);
}
#else
static inline float fma_f(float a, float b, float c) {
    const double p = (double)a * (double)b, s = p + (double)c;
    const double cv = s - p, pv = s - cv, err = (p - pv) + ((double)c - cv);
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    if (err != 0.0 && !(u & 1) && s - s == 0.0) u += (err > 0.0) == (s > 0.0) ? 1 : UINT64_MAX;
    double r;
    memcpy(&r, &u, sizeof r);
    return (float)r;
}
static inline void fma8(float *restrict acc, const float *restrict a, const float *restrict b) {
    double s[8], err[8];
    for (int l = 0; l < 8; l++) {
        const double p = (double)a[l] * (double)b[l];
        s[l] = p + (double)acc[l];
        const double cv = s[l] - p, pv = s[l] - cv;
        err[l] = (p - pv) + ((double)acc[l] - cv);
    }
    uint64_t inexact = 0; /* any err nonzero (its sign bit shifted out), or NaN */
    for (int l = 0; l < 8; l++) {
        uint64_t u;
        memcpy(&u, &err[l], sizeof u);
        inexact |= u << 1;
    }
    if (inexact)
        for (int l = 0; l < 8; l++) acc[l] = fma_f(a[l], b[l], acc[l]);
    else
        for (int l = 0; l < 8; l++) acc[l] = (float)s[l];
}
#endif

/* hsum_float_8 (arch/x86/quants.c), which is also tinyBLAS's hsum(__m256): high half plus low
 * half, then _mm_movehl_ps, then _mm_movehdup_ps */
static float hsum8(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}
/* the end of GGML_F32x8_REDUCE (simd-mappings.h): halves added, then two _mm_hadd_ps */
static float hadd8(const float a[8]) {
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}
/* acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lane), acc) */
static inline void fmadd8(float acc[8], float d, const int32_t lane[8]) {
    float dv[8], lv[8];
    for (int l = 0; l < 8; l++) {
        dv[l] = d;
        lv[l] = (float)lane[l];
    }
    fma8(acc, dv, lv);
}

/* ---- f32, f16, bf16 */

/* An FMA of two halves: their product is exact in float (11-bit significands, no underflow), so
 * the fused result is the plain sum. (Not so for bf16, whose products can underflow.) */
static inline float fma_h(uint16_t a, uint16_t b, float c) { return c + h2f(a) * h2f(b); }

/* ggml_vec_dot_f32 (vec.cpp), AVX path: GGML_F32_STEP 32 = 4 accumulators of 8 lanes, fused
 * multiply-adds, GGML_F32x8_REDUCE, then the n % 32 leftovers in float. GCC vectorized that
 * leftover loop: groups of 8, then one of 4, multiply then add; the last 1-3 fused. */
static float vec_dot_f32(int64_t n, const float *x, const float *y) {
    const int64_t np = n & ~(int64_t)31;
    float sum[4][8] = {{0}};
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++) fma8(sum[j], x + i + 8 * j, y + i + 8 * j);
    for (int l = 0; l < 8; l++) sum[0][l] = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
    float s = hadd8(sum[0]);
    int64_t i = np, unfused = n - np >= 8 ? (n - np) & ~(int64_t)7 : 0;
    if (n - np - unfused >= 4) unfused += 4;
    for (; i < np + unfused; i++) s += x[i] * y[i];
    for (; i < n; i++) s = fma_f(x[i], y[i], s);
    return s;
}
/* ggml_vec_dot_f16 (vec.cpp), AVX + F16C path: as f32 on the widened halves, the reduced sum and
 * the leftovers (float products) added in double */
static float vec_dot_f16(int64_t n, const uint16_t *x, const uint16_t *y) {
    const int64_t np = n & ~(int64_t)31;
    float sum[4][8] = {{0}};
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 8; l++) sum[j][l] = fma_h(x[i + 8 * j + l], y[i + 8 * j + l], sum[j][l]);
    for (int l = 0; l < 8; l++) sum[0][l] = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
    double s = hadd8(sum[0]);
    for (int64_t i = np; i < n; i++) s += (double)(h2f(x[i]) * h2f(y[i]));
    return (float)s;
}
/* 8 bf16 as floats */
static inline void bf16x8(const uint16_t *p, float v[8]) {
    for (int l = 0; l < 8; l++) v[l] = ggc_bf16_to_fp32(p[l]);
}
/* ggml_vec_dot_bf16 (vec.cpp), AVX2 path: 4 accumulators of 8 lanes over 32 elements, their
 * mul + add fused by GCC; (c1 + c3) + (c2 + c4), hsum; sum and leftovers in double */
static float vec_dot_bf16(int64_t n, const uint16_t *x, const uint16_t *y) {
    float c[4][8] = {{0}}, xv[8], yv[8];
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; j++) {
            bf16x8(x + i + 8 * j, xv);
            bf16x8(y + i + 8 * j, yv);
            fma8(c[j], xv, yv);
        }
    for (int l = 0; l < 8; l++) c[0][l] = (c[0][l] + c[2][l]) + (c[1][l] + c[3][l]);
    double s = hsum8(c[0]);
    for (; i < n; i++) s += (double)(ggc_bf16_to_fp32(x[i]) * ggc_bf16_to_fp32(y[i]));
    return (float)s;
}

/* llamafile_sgemm's tinyBLAS<8, __m256, __m256, T, T, float>::gemm_bloc, for one output element:
 * one accumulator of 8 lanes, lane j fused-multiply-adds elements l + j for l = 0, 8, 16, ...,
 * then hsum. a and b are rows of k elements of type t (f32, f16 or bf16; k a multiple of 8).
 * The tiling and thread split only choose which elements a thread computes, not how. */
float ggc_dot_tinyblas(ggc_type t, int64_t k, const void *a, const void *b) {
    float acc[8] = {0}, av[8], bv[8];
    for (int64_t l = 0; l < k; l += 8) {
        if (t == GGC_TYPE_F16) {
            const uint16_t *ah = (const uint16_t *)a + l, *bh = (const uint16_t *)b + l;
            for (int j = 0; j < 8; j++) acc[j] = fma_h(ah[j], bh[j], acc[j]);
        } else if (t == GGC_TYPE_BF16) {
            bf16x8((const uint16_t *)a + l, av);
            bf16x8((const uint16_t *)b + l, bv);
            fma8(acc, av, bv);
        } else {
            fma8(acc, (const float *)a + l, (const float *)b + l);
        }
    }
    return hsum8(acc);
}

/* ---- 32-element formats against q8_0 / q8_1 */

/* The int32 lanes of mul_sum_i8_pairs_float / mul_sum_us8_pairs_float (maddubs then madd with
 * ones): lane l sums the products of bytes 4l..4l+3. (ggml's sign trick, |x| * sign(y, x), is
 * x * y for every y its q8 quantizers produce, which never give -128.) */
static inline void quad_lanes(const int8_t x[QK], const int8_t y[QK], int32_t lane[8]) {
    int16_t p[QK]; /* |x * y| <= 128 * 128 */
    for (int e = 0; e < QK; e++) p[e] = (int16_t)(x[e] * y[e]);
    for (int l = 0; l < 8; l++) lane[l] = (p[4 * l] + p[4 * l + 1]) + (p[4 * l + 2] + p[4 * l + 3]);
}
/* a block's 32 quants in element order: low nibbles are elements 0..15, high nibbles 16..31
 * (bytes_from_nibbles_32), plus q5's 5th bit; `off` is subtracted (8 / 16 for the symmetric
 * formats, 0 for the affine ones) */
static void nibble_vals(const uint8_t qs[QK / 2], const uint8_t *qh, int off, int8_t v[QK]) {
    uint32_t h = 0;
    if (qh) memcpy(&h, qh, 4);
    for (int j = 0; j < QK / 2; j++) {
        v[j] = (int8_t)(((qs[j] & 0xF) | (qh ? q5_high(h, j) : 0)) - off);
        v[j + QK / 2] = (int8_t)(((qs[j] >> 4) | (qh ? q5_high(h, j + QK / 2) : 0)) - off);
    }
}

/* ggml_vec_dot_q4_0_q8_0 / q5_0_q8_0 / q8_0_q8_0, AVX2 (and tinyBLAS_Q0_AVX, identically): per
 * block acc = fma(dx * dy, lanes, acc), then hsum */
static float vec_dot_q4_0(int64_t nb, const blk_q4_0 *x, const blk_q8_0 *y) {
    float acc[8] = {0};
    int8_t v[QK];
    int32_t lane[8];
    for (int64_t i = 0; i < nb; i++) {
        nibble_vals(x[i].qs, NULL, 8, v);
        quad_lanes(v, y[i].qs, lane);
        fmadd8(acc, h2f(x[i].d) * h2f(y[i].d), lane);
    }
    return hsum8(acc);
}
static float vec_dot_q5_0(int64_t nb, const blk_q5_0 *x, const blk_q8_0 *y) {
    float acc[8] = {0};
    int8_t v[QK];
    int32_t lane[8];
    for (int64_t i = 0; i < nb; i++) {
        nibble_vals(x[i].qs, x[i].qh, 16, v);
        quad_lanes(v, y[i].qs, lane);
        fmadd8(acc, h2f(x[i].d) * h2f(y[i].d), lane);
    }
    return hsum8(acc);
}
static float vec_dot_q8_0(int64_t nb, const blk_q8_0 *x, const blk_q8_0 *y) {
    float acc[8] = {0};
    int32_t lane[8];
    for (int64_t i = 0; i < nb; i++) {
        quad_lanes(x[i].qs, y[i].qs, lane);
        fmadd8(acc, h2f(x[i].d) * h2f(y[i].d), lane);
    }
    return hsum8(acc);
}
/* ggml_vec_dot_q4_1_q8_1 / q5_1_q8_1, AVX2: the same lanes on the unsigned quants; the min
 * terms summed apart, summs += m * s fused by GCC, and added after the hsum */
static float vec_dot_q4_1(int64_t nb, const blk_q4_1 *x, const blk_q8_1 *y) {
    float acc[8] = {0}, summs = 0.0f;
    int8_t v[QK];
    int32_t lane[8];
    for (int64_t i = 0; i < nb; i++) {
        summs = fma_f(h2f(x[i].m), h2f(y[i].s), summs);
        nibble_vals(x[i].qs, NULL, 0, v);
        quad_lanes(v, y[i].qs, lane);
        fmadd8(acc, h2f(x[i].d) * h2f(y[i].d), lane);
    }
    return hsum8(acc) + summs;
}
static float vec_dot_q5_1(int64_t nb, const blk_q5_1 *x, const blk_q8_1 *y) {
    float acc[8] = {0}, summs = 0.0f;
    int8_t v[QK];
    int32_t lane[8];
    for (int64_t i = 0; i < nb; i++) {
        summs = fma_f(h2f(x[i].m), h2f(y[i].s), summs);
        nibble_vals(x[i].qs, x[i].qh, 0, v);
        quad_lanes(v, y[i].qs, lane);
        fmadd8(acc, h2f(x[i].d) * h2f(y[i].d), lane);
    }
    return hsum8(acc) + summs;
}

/* ---- K-quants against q8_K */

/* One K-quant block unpacked: its 256 quants as the kernels multiply them (q2_K 0..3, q3_K
 * -4..3, q4_K 0..15, q5_K 0..31, q6_K -32..31), the scale of each 16-element group (the
 * 32-element formats repeat theirs), the mins (q2_K: one per 16 in m[0..15]; q4_K / q5_K: one
 * per 32 in m[0..7]) and the f16 block scales as floats. */
typedef struct {
    int8_t q[GGC_QK_K];
    int sc[16], m[16];
    float d, dmin;
} kblock;

static void unpack_q2_K(const blk_q2_K *b, kblock *k) {
    q2k_quants(b, k->q);
    for (int g = 0; g < 16; g++) {
        k->sc[g] = b->scales[g] & 0xF;
        k->m[g] = b->scales[g] >> 4;
    }
    k->d = h2f(b->d);
    k->dmin = h2f(b->dmin);
}
static void unpack_q3_K(const blk_q3_K *b, kblock *k) {
    q3k_quants(b, k->q);
    for (int g = 0; g < 16; g++) k->sc[g] = q3k_scale(b->scales, g);
    k->d = h2f(b->d);
    k->dmin = 0.0f;
}
static void unpack_q45_K(const uint16_t *dm, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, kblock *k) {
    q45k_quants(qs, qh, k->q);
    for (int s = 0; s < 8; s++) {
        k4_scale_min(scales, s, &k->sc[2 * s], &k->m[s]);
        k->sc[2 * s + 1] = k->sc[2 * s];
    }
    k->d = h2f(dm[0]);
    k->dmin = h2f(dm[1]);
}
static void unpack_q6_K(const blk_q6_K *b, kblock *k) {
    q6k_quants(b, k->q);
    for (int g = 0; g < 16; g++) k->sc[g] = b->scales[g];
    k->d = h2f(b->d);
    k->dmin = 0.0f;
}
/* block i of a K-quant row, unpacked */
static void unpack_K(ggc_type t, const void *x, int64_t i, kblock *k) {
    switch (t) {
    case GGC_TYPE_Q2_K: unpack_q2_K((const blk_q2_K *)x + i, k); break;
    case GGC_TYPE_Q3_K: unpack_q3_K((const blk_q3_K *)x + i, k); break;
    case GGC_TYPE_Q4_K: {
        const blk_q4_K *b = (const blk_q4_K *)x + i;
        unpack_q45_K(&b->d, b->scales, b->qs, NULL, k);
        break;
    }
    case GGC_TYPE_Q5_K: {
        const blk_q5_K *b = (const blk_q5_K *)x + i;
        unpack_q45_K(&b->d, b->scales, b->qs, b->qh, k);
        break;
    }
    default: unpack_q6_K((const blk_q6_K *)x + i, k); break;
    }
}

/* The integer core shared by every K-quant kernel: quad[i] = the products of elements
 * 4i..4i+3, each quant offset by `off` first, times the scale of their 16-element group. */
static void k_quads(const kblock *k, int off, const int8_t *y, int32_t quad[64]) {
    for (int i = 0; i < 64; i++) {
        const int8_t *q = k->q + 4 * i, *v = y + 4 * i;
        quad[i] = k->sc[i / 4] *
                  ((q[0] + off) * v[0] + (q[1] + off) * v[1] + (q[2] + off) * v[2] + (q[3] + off) * v[3]);
    }
}
/* ggml's AVX2 K-quant vec_dot holds them in 8 int32 lanes: maddubs + madd put bytes 4l..4l+3 of
 * each 32-element chunk c into lane l, so lane l sums quads l, l + 8, ..., l + 56 */
static void k_lanes(const int32_t quad[64], int32_t lane[8]) {
    for (int l = 0; l < 8; l++) {
        int32_t s = 0;
        for (int c = 0; c < 8; c++) s += quad[8 * c + l];
        lane[l] = s;
    }
}

/* ggml_vec_dot_q2_K_q8_K, AVX2: acc = fma(-dy * dmin, mins·bsums lanes, acc), then
 * acc = fma(dy * d, lanes, acc), per block; hsum */
static float vec_dot_q2_K(int64_t nb, const void *x, const blk_q8_K *y) {
    float acc[8] = {0};
    kblock k;
    int32_t quad[64], lane[8], prod[8];
    for (int64_t i = 0; i < nb; i++) {
        unpack_K(GGC_TYPE_Q2_K, x, i, &k);
        for (int l = 0; l < 8; l++) prod[l] = k.m[2 * l] * y[i].bsums[2 * l] + k.m[2 * l + 1] * y[i].bsums[2 * l + 1];
        fmadd8(acc, -y[i].d * k.dmin, prod);
        k_quads(&k, 0, y[i].qs, quad);
        k_lanes(quad, lane);
        fmadd8(acc, y[i].d * k.d, lane);
    }
    return hsum8(acc);
}
/* ggml_vec_dot_q3_K_q8_K, AVX2: acc = fma(dy * d, lanes, acc) per block; hsum */
static float vec_dot_q3_K(int64_t nb, const void *x, const blk_q8_K *y) {
    float acc[8] = {0};
    kblock k;
    int32_t quad[64], lane[8];
    for (int64_t i = 0; i < nb; i++) {
        unpack_K(GGC_TYPE_Q3_K, x, i, &k);
        k_quads(&k, 0, y[i].qs, quad);
        k_lanes(quad, lane);
        fmadd8(acc, y[i].d * k.d, lane);
    }
    return hsum8(acc);
}
/* ggml_vec_dot_q4_K_q8_K, AVX2: the min terms in a 4-lane accumulator (lane l: mins 2l, 2l+1
 * times the bsums of their 32 elements), reduced by movehl + movehdup and added after the hsum */
static float vec_dot_q4_K(int64_t nb, const void *x, const blk_q8_K *y) {
    float acc[8] = {0}, accm[4] = {0};
    kblock k;
    int32_t quad[64], lane[8];
    for (int64_t i = 0; i < nb; i++) {
        unpack_K(GGC_TYPE_Q4_K, x, i, &k);
        int q8s[8];
        for (int s = 0; s < 8; s++) q8s[s] = (int16_t)(y[i].bsums[2 * s] + y[i].bsums[2 * s + 1]);
        const float dmin = -y[i].d * k.dmin;
        for (int l = 0; l < 4; l++)
            accm[l] = fma_f(dmin, (float)(k.m[2 * l] * q8s[2 * l] + k.m[2 * l + 1] * q8s[2 * l + 1]), accm[l]);
        k_quads(&k, 0, y[i].qs, quad);
        k_lanes(quad, lane);
        fmadd8(acc, y[i].d * k.d, lane);
    }
    return hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}
/* ggml_vec_dot_q5_K_q8_K, AVX2: the min term an exact integer per block, summs += dmin * it
 * (fused by GCC), added after the hsum */
static float vec_dot_q5_K(int64_t nb, const void *x, const blk_q8_K *y) {
    float acc[8] = {0}, summs = 0.0f;
    kblock k;
    int32_t quad[64], lane[8];
    for (int64_t i = 0; i < nb; i++) {
        unpack_K(GGC_TYPE_Q5_K, x, i, &k);
        int32_t mins = 0;
        for (int s = 0; s < 8; s++) mins += k.m[s] * (int16_t)(y[i].bsums[2 * s] + y[i].bsums[2 * s + 1]);
        summs = fma_f(-y[i].d * k.dmin, (float)mins, summs);
        k_quads(&k, 0, y[i].qs, quad);
        k_lanes(quad, lane);
        fmadd8(acc, y[i].d * k.d, lane);
    }
    return hsum8(acc) + summs;
}
/* ggml_vec_dot_q6_K_q8_K, AVX2: lanes of the unsigned quants (q + 32), lane l then less
 * 32 * (scales 2l, 2l+1 times their bsums); acc = fma(dy * d, lanes, acc); hsum */
static float vec_dot_q6_K(int64_t nb, const void *x, const blk_q8_K *y) {
    float acc[8] = {0};
    kblock k;
    int32_t quad[64], lane[8];
    for (int64_t i = 0; i < nb; i++) {
        unpack_K(GGC_TYPE_Q6_K, x, i, &k);
        k_quads(&k, 32, y[i].qs, quad);
        k_lanes(quad, lane);
        for (int l = 0; l < 8; l++)
            lane[l] -= 32 * (y[i].bsums[2 * l] * k.sc[2 * l] + y[i].bsums[2 * l + 1] * k.sc[2 * l + 1]);
        fmadd8(acc, y[i].d * k.d, lane);
    }
    return hsum8(acc);
}

float ggc_vec_dot(ggc_type t, int64_t n, const void *x, const void *y) {
    const int64_t nb = n / ggc_blck_size(t);
    switch (t) {
    case GGC_TYPE_F32: return vec_dot_f32(n, x, y);
    case GGC_TYPE_F16: return vec_dot_f16(n, x, y);
    case GGC_TYPE_BF16: return vec_dot_bf16(n, x, y);
    case GGC_TYPE_Q4_0: return vec_dot_q4_0(nb, x, y);
    case GGC_TYPE_Q4_1: return vec_dot_q4_1(nb, x, y);
    case GGC_TYPE_Q5_0: return vec_dot_q5_0(nb, x, y);
    case GGC_TYPE_Q5_1: return vec_dot_q5_1(nb, x, y);
    case GGC_TYPE_Q8_0: return vec_dot_q8_0(nb, x, y);
    case GGC_TYPE_Q2_K: return vec_dot_q2_K(nb, x, y);
    case GGC_TYPE_Q3_K: return vec_dot_q3_K(nb, x, y);
    case GGC_TYPE_Q4_K: return vec_dot_q4_K(nb, x, y);
    case GGC_TYPE_Q5_K: return vec_dot_q5_K(nb, x, y);
    case GGC_TYPE_Q6_K: return vec_dot_q6_K(nb, x, y);
    default: return 0.0f; /* q8_1 and q8_K are only ever the y side */
    }
}

/* The tiled K-quant matmul (ggml_compute_forward_mul_mat_tiled, tiled_run_microtile_avx2) for one
 * output element: per 256-block an exact integer s1 = sum of group scale * group dot (q3_K and
 * q6_K biased and corrected back exactly), and for the formats with mins s2 = sum of min *
 * bsums; res = d * s1, res = fnmadd(dmin, s2, res), acc = fma(res, dy, acc) across the blocks in
 * order. Tiles and threads split rows and columns, never k. t is q2_K .. q6_K, y q8_K. */
float ggc_dot_tiled(ggc_type t, int64_t n, const void *x, const void *vy) {
    const blk_q8_K *y = vy;
    float acc = 0.0f;
    kblock k;
    int32_t quad[64];
    for (int64_t i = 0; i < n / GGC_QK_K; i++) {
        unpack_K(t, x, i, &k);
        k_quads(&k, 0, y[i].qs, quad);
        int32_t s1 = 0, s2 = 0;
        for (int q = 0; q < 64; q++) s1 += quad[q];
        float res = k.d * (float)s1;
        if (t == GGC_TYPE_Q2_K) {
            for (int g = 0; g < 16; g++) s2 += k.m[g] * y[i].bsums[g];
            res = fma_f(-k.dmin, (float)s2, res);
        } else if (t == GGC_TYPE_Q4_K || t == GGC_TYPE_Q5_K) {
            for (int s = 0; s < 8; s++) s2 += k.m[s] * (y[i].bsums[2 * s] + y[i].bsums[2 * s + 1]);
            res = fma_f(-k.dmin, (float)s2, res);
        }
        acc = fma_f(res, y[i].d, acc);
    }
    return acc;
}
