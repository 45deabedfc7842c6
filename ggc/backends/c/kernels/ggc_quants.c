/* Quantized block formats: rows to and from float, and the dot products of matrix products.
 *
 * Block layouts are ggml's (ggml-common.h), byte for byte. Numerics follow ggml:
 *   - to_float is ggml's dequantize_row_* (same expression order, so results are bit-identical);
 *   - from_float is ggml-cpu's from_float: the reference quantizers for q4_0..q5_1 and q8_K, and
 *     the x86 AVX quantizers for q8_0 / q8_1 (they scale by 127/amax and round half to even,
 *     where the reference multiplies by 1/d and rounds half away from zero);
 *   - vec_dot sums integer products exactly within each block, then adds block results in float
 *     scaled by the product of the two block scales, like ggml's generic vec_dot.
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

/* ------------------------------------------------------------------ dot products */

/* plain types: float products summed in double, as ggml's scalar path */
static float dot_f32(int64_t n, const float *x, const float *y) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)(x[i] * y[i]);
    return (float)s;
}
static float dot_f16(int64_t n, const uint16_t *x, const uint16_t *y) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)(h2f(x[i]) * h2f(y[i]));
    return (float)s;
}
static float dot_bf16(int64_t n, const uint16_t *x, const uint16_t *y) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)(ggc_bf16_to_fp32(x[i]) * ggc_bf16_to_fp32(y[i]));
    return (float)s;
}

/* 32-element formats against q8_0 / q8_1: an exact integer sum per block, scaled by dx*dy; the
 * affine ones (q4_1, q5_1) add m * s, where q8_1's s = dy * sum(y quants). */
static float dot_q4_0(int64_t nb, const blk_q4_0 *x, const blk_q8_0 *y) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK / 2];
        s += (h2f(x[i].d) * h2f(y[i].d)) * sumi;
    }
    return s;
}
static float dot_q4_1(int64_t nb, const blk_q4_1 *x, const blk_q8_1 *y) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += (x[i].qs[j] & 0xF) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + QK / 2];
        s += (h2f(x[i].d) * h2f(y[i].d)) * sumi + h2f(x[i].m) * h2f(y[i].s);
    }
    return s;
}
static float dot_q5_0(int64_t nb, const blk_q5_0 *x, const blk_q8_0 *y) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += (((x[i].qs[j] & 0xF) | q5_high(qh, j)) - 16) * y[i].qs[j] +
                    (((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) - 16) * y[i].qs[j + QK / 2];
        s += (h2f(x[i].d) * h2f(y[i].d)) * sumi;
    }
    return s;
}
static float dot_q5_1(int64_t nb, const blk_q5_1 *x, const blk_q8_1 *y) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += ((x[i].qs[j] & 0xF) | q5_high(qh, j)) * y[i].qs[j] +
                    ((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) * y[i].qs[j + QK / 2];
        s += (h2f(x[i].d) * h2f(y[i].d)) * sumi + h2f(x[i].m) * h2f(y[i].s);
    }
    return s;
}
static float dot_q8_0(int64_t nb, const blk_q8_0 *x, const blk_q8_0 *y) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += x[i].qs[j] * y[i].qs[j];
        s += (h2f(x[i].d) * h2f(y[i].d)) * sumi;
    }
    return s;
}

/* K-quants against q8_K: per 256-block, sum over groups of (integer group scale) * (integer
 * group dot), then one float scale d = dx * dy; the min terms use q8_K's per-16 bsums. */
static int group_dot(const int8_t *q, const int8_t *y, int n) {
    int s = 0;
    for (int l = 0; l < n; l++) s += q[l] * y[l];
    return s;
}
static float dot_q2_K(int64_t nb, const blk_q2_K *x, const blk_q8_K *y) {
    int8_t q[GGC_QK_K];
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        q2k_quants(&x[i], q);
        int isum = 0, summs = 0;
        for (int g = 0; g < 16; g++) {
            isum += (x[i].scales[g] & 0xF) * group_dot(q + 16 * g, y[i].qs + 16 * g, 16);
            summs += y[i].bsums[g] * (x[i].scales[g] >> 4);
        }
        const float dall = y[i].d * h2f(x[i].d), dmin = y[i].d * h2f(x[i].dmin);
        s += dall * isum - dmin * summs;
    }
    return s;
}
static float dot_q3_K(int64_t nb, const blk_q3_K *x, const blk_q8_K *y) {
    int8_t q[GGC_QK_K];
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        q3k_quants(&x[i], q);
        int isum = 0;
        for (int g = 0; g < 16; g++) isum += q3k_scale(x[i].scales, g) * group_dot(q + 16 * g, y[i].qs + 16 * g, 16);
        s += (h2f(x[i].d) * y[i].d) * isum;
    }
    return s;
}
static float dot_q45_K(const uint16_t *dm, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                       const blk_q8_K *y) {
    int8_t q[GGC_QK_K];
    q45k_quants(qs, qh, q);
    int isum = 0, summs = 0;
    for (int s = 0; s < 8; s++) {
        int sc, m;
        k4_scale_min(scales, s, &sc, &m);
        isum += sc * group_dot(q + 32 * s, y->qs + 32 * s, 32);
        summs += m * (y->bsums[2 * s] + y->bsums[2 * s + 1]);
    }
    return (h2f(dm[0]) * y->d) * isum - (h2f(dm[1]) * y->d) * summs;
}
static float dot_q6_K(int64_t nb, const blk_q6_K *x, const blk_q8_K *y) {
    int8_t q[GGC_QK_K];
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        q6k_quants(&x[i], q);
        int isum = 0;
        for (int g = 0; g < 16; g++) isum += x[i].scales[g] * group_dot(q + 16 * g, y[i].qs + 16 * g, 16);
        s += (h2f(x[i].d) * y[i].d) * isum;
    }
    return s;
}

float ggc_vec_dot(ggc_type t, int64_t n, const void *x, const void *y) {
    const int64_t nb = n / ggc_blck_size(t);
    float s = 0.0f;
    switch (t) {
    case GGC_TYPE_F32: return dot_f32(n, x, y);
    case GGC_TYPE_F16: return dot_f16(n, x, y);
    case GGC_TYPE_BF16: return dot_bf16(n, x, y);
    case GGC_TYPE_Q4_0: return dot_q4_0(nb, x, y);
    case GGC_TYPE_Q4_1: return dot_q4_1(nb, x, y);
    case GGC_TYPE_Q5_0: return dot_q5_0(nb, x, y);
    case GGC_TYPE_Q5_1: return dot_q5_1(nb, x, y);
    case GGC_TYPE_Q8_0: return dot_q8_0(nb, x, y);
    case GGC_TYPE_Q2_K: return dot_q2_K(nb, x, y);
    case GGC_TYPE_Q3_K: return dot_q3_K(nb, x, y);
    case GGC_TYPE_Q4_K:
        for (int64_t i = 0; i < nb; i++) {
            const blk_q4_K *b = (const blk_q4_K *)x + i;
            s += dot_q45_K(&b->d, b->scales, b->qs, NULL, (const blk_q8_K *)y + i);
        }
        return s;
    case GGC_TYPE_Q5_K:
        for (int64_t i = 0; i < nb; i++) {
            const blk_q5_K *b = (const blk_q5_K *)x + i;
            s += dot_q45_K(&b->d, b->scales, b->qs, b->qh, (const blk_q8_K *)y + i);
        }
        return s;
    case GGC_TYPE_Q6_K: return dot_q6_K(nb, x, y);
    default: return 0.0f; /* q8_1 and q8_K are only ever the y side */
    }
}
