/* ggc CUDA: device-side quantized formats.
 *
 *  - ggc_deq8<T>(row, i, v): 8 consecutive elements i..i+7 (i a multiple of 8) of a weight row of
 *    type T, as floats (f32 / f16 / bf16 / q4_0 / q4_1 / q5_0 / q5_1 / q8_0 / q2_K .. q6_K). Every
 *    format keeps 8 aligned consecutive elements under one scale, so this is the unit of the tiled
 *    matrix product's loader, GET_ROWS and copies out of quantized tensors.
 *  - ggc_q8_decode<T>(blk, sub, q, dm): one 32-element sub-block of a quantized weight block in the
 *    "integer dot" form w[e] = dm[g].x * q[e] + dm[g].y, for the two 16-element halves g = 0, 1,
 *    with q packed as signed bytes, 4 to an int: the matrix-vector kernel dots these with 8-bit
 *    activations through __dp4a.
 *  - ggc_quant_block<T>(x, dst): a float block quantized to q4_0 / q4_1 / q5_0 / q5_1 / q8_0 as
 *    ggml's CPU reference quantizers do (same rounding; no contraction into fused multiply-adds).
 *  - the activation format of the integer path (ggc_q8a): per row, K int8 quants, then per 32
 *    elements a float4 {d, d * sum(q[0:16]), d * sum(q[16:32]), 0}, quantized and rounded as
 *    ggml-CPU does for the weight type (see that section).
 *
 * Weight data is read with 2-byte loads where a block format only guarantees 2-byte alignment
 * (q4_0, q5_0, q8_0, q3_K, q6_K: blocks of even size), 4-byte loads where blocks are multiples of
 * 4 bytes with 4-aligned fields (q4_1, q5_1, q2_K, q4_K, q5_K). Rows of a quantized tensor must
 * start at such an alignment (ggml's tensor data is 32-aligned and rows are whole blocks).
 */
#pragma once

#include "ggc_cuda.cuh"

/* ---------------------------------------------------------------- loads */

static __device__ __forceinline__ uint32_t ggc_ld_u16(const uint8_t *p) { return *(const uint16_t *)p; }
/* 4 bytes from a 2-byte aligned address */
static __device__ __forceinline__ uint32_t ggc_ld_u32_a2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
static __device__ __forceinline__ uint32_t ggc_ld_u32_a4(const uint8_t *p) { return *(const uint32_t *)p; }

/* the 4 bits of n (0..15) spread to bit 0 of each byte: bit k -> bit 8k */
static __device__ __forceinline__ uint32_t ggc_spread4(uint32_t n) { return (n * 0x00204081u) & 0x01010101u; }

/* q4_K / q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes */
static __device__ __forceinline__ void ggc_k4_scale_min(const uint8_t *s, int j, int &sc, int &m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}
/* the same from the 12 bytes as three little-endian words */
static __device__ __forceinline__ int ggc_byte_of(uint32_t s0, uint32_t s1, uint32_t s2, int k) {
    const uint32_t w = k < 4 ? s0 : k < 8 ? s1 : s2;
    return (int)((w >> (8 * (k & 3))) & 0xFF);
}
static __device__ __forceinline__ void ggc_k4_scale_min_w(uint32_t s0, uint32_t s1, uint32_t s2, int j, int &sc,
                                                          int &m) {
    if (j < 4) {
        sc = ggc_byte_of(s0, s1, s2, j) & 63;
        m = ggc_byte_of(s0, s1, s2, j + 4) & 63;
    } else {
        sc = (ggc_byte_of(s0, s1, s2, j + 4) & 0xF) | ((ggc_byte_of(s0, s1, s2, j - 4) >> 6) << 4);
        m = (ggc_byte_of(s0, s1, s2, j + 4) >> 4) | ((ggc_byte_of(s0, s1, s2, j) >> 6) << 4);
    }
}
/* q3_K: signed 6-bit scale of 16-element group j (0..15) */
static __device__ __forceinline__ int ggc_q3k_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo | hi << 4) - 32;
}

/* ---------------------------------------------------------------- 8 elements as floats */

/* Each format in two steps, so that a kernel can issue the loads of one tile, do other work,
 * and convert afterwards: fetch(row, i, r) only loads the words that elements i..i+7 need into
 * r (registers), convert(r, i, v) makes the floats. ggc_deq8 does both. */
template <ggc_type T> struct ggc_deq;

template <> struct ggc_deq<GGC_TYPE_F32> {
    struct raw { float x[8]; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const float *p = (const float *)row + i;
#pragma unroll
        for (int k = 0; k < 8; k++) r.x[k] = p[k];
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t, float v[8]) {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = r.x[k];
    }
};
template <> struct ggc_deq<GGC_TYPE_F16> {
    struct raw { uint16_t x[8]; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint16_t *p = (const uint16_t *)row + i;
#pragma unroll
        for (int k = 0; k < 8; k++) r.x[k] = p[k];
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t, float v[8]) {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = ggc_h2f(r.x[k]);
    }
};
template <> struct ggc_deq<GGC_TYPE_BF16> {
    struct raw { uint16_t x[8]; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint16_t *p = (const uint16_t *)row + i;
#pragma unroll
        for (int k = 0; k < 8; k++) r.x[k] = p[k];
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t, float v[8]) {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = ggc_bf2f(r.x[k]);
    }
};
/* q4_0: element j of a block: low nibble of qs[j] (j < 16) or high nibble of qs[j - 16] */
template <> struct ggc_deq<GGC_TYPE_Q4_0> {
    struct raw { uint32_t d, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 5) * sizeof(ggc_blk_q4_0);
        const int j = (int)(i & 15);
        r.d = ggc_ld_u16(b);
        r.q0 = ggc_ld_u32_a2(b + 2 + j);
        r.q1 = ggc_ld_u32_a2(b + 6 + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int sh = (i & 16) ? 4 : 0;
        const float d = ggc_h2f((uint16_t)r.d);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (float)((int)((r.q0 >> (8 * k + sh)) & 0xF) - 8) * d;
            v[k + 4] = (float)((int)((r.q1 >> (8 * k + sh)) & 0xF) - 8) * d;
        }
    }
};
/* q4_0 regrouped by 8 blocks (GGC_TYPE_Q4_0R8): block b's scale at group + 2 * (b % 8), its quants at
 * group + 16 + 16 * (b % 8), the group at row + 144 * (b / 8); the quant words are 4-byte aligned */
static __device__ __forceinline__ const uint8_t *ggc_r8_group(const uint8_t *row, int64_t b) { return row + 144 * (b >> 3); }
template <> struct ggc_deq<GGC_TYPE_Q4_0R8> {
    using raw = ggc_deq<GGC_TYPE_Q4_0>::raw;
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const int64_t b = i >> 5;
        const uint8_t *g = ggc_r8_group(row, b);
        const int j = (int)(i & 15), e = (int)(b & 7);
        r.d = ggc_ld_u16(g + 2 * e);
        r.q0 = *(const uint32_t *)(g + 16 + 16 * e + j);
        r.q1 = *(const uint32_t *)(g + 20 + 16 * e + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        ggc_deq<GGC_TYPE_Q4_0>::convert(r, i, v);
    }
};
template <> struct ggc_deq<GGC_TYPE_Q4_1> {
    struct raw { uint32_t dm, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 5) * sizeof(ggc_blk_q4_1);
        const int j = (int)(i & 15);
        r.dm = ggc_ld_u32_a4(b);
        r.q0 = ggc_ld_u32_a4(b + 4 + j);
        r.q1 = ggc_ld_u32_a4(b + 8 + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int sh = (i & 16) ? 4 : 0;
        const float d = ggc_h2f((uint16_t)r.dm), m = ggc_h2f((uint16_t)(r.dm >> 16));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (float)((r.q0 >> (8 * k + sh)) & 0xF) * d + m;
            v[k + 4] = (float)((r.q1 >> (8 * k + sh)) & 0xF) * d + m;
        }
    }
};
/* q5_0 / q5_1: the 5th bit of element j is bit j of qh */
template <> struct ggc_deq<GGC_TYPE_Q5_0> {
    struct raw { uint32_t d, qh, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 5) * sizeof(ggc_blk_q5_0);
        const int j = (int)(i & 15);
        r.d = ggc_ld_u16(b);
        r.qh = ggc_ld_u32_a2(b + 2);
        r.q0 = ggc_ld_u32_a2(b + 6 + j);
        r.q1 = ggc_ld_u32_a2(b + 10 + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int j = (int)(i & 31), sh = j >= 16 ? 4 : 0;
        const float d = ggc_h2f((uint16_t)r.d);
        const uint32_t qh = r.qh >> j;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (float)((int)(((r.q0 >> (8 * k + sh)) & 0xF) | (((qh >> k) & 1) << 4)) - 16) * d;
            v[k + 4] = (float)((int)(((r.q1 >> (8 * k + sh)) & 0xF) | (((qh >> (k + 4)) & 1) << 4)) - 16) * d;
        }
    }
};
template <> struct ggc_deq<GGC_TYPE_Q5_1> {
    struct raw { uint32_t dm, qh, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 5) * sizeof(ggc_blk_q5_1);
        const int j = (int)(i & 15);
        r.dm = ggc_ld_u32_a4(b);
        r.qh = ggc_ld_u32_a4(b + 4);
        r.q0 = ggc_ld_u32_a4(b + 8 + j);
        r.q1 = ggc_ld_u32_a4(b + 12 + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int j = (int)(i & 31), sh = j >= 16 ? 4 : 0;
        const float d = ggc_h2f((uint16_t)r.dm), m = ggc_h2f((uint16_t)(r.dm >> 16));
        const uint32_t qh = r.qh >> j;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (float)(((r.q0 >> (8 * k + sh)) & 0xF) | (((qh >> k) & 1) << 4)) * d + m;
            v[k + 4] = (float)(((r.q1 >> (8 * k + sh)) & 0xF) | (((qh >> (k + 4)) & 1) << 4)) * d + m;
        }
    }
};
template <> struct ggc_deq<GGC_TYPE_Q8_0> {
    struct raw { uint32_t d, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 5) * sizeof(ggc_blk_q8_0);
        const int j = (int)(i & 31);
        r.d = ggc_ld_u16(b);
        r.q0 = ggc_ld_u32_a2(b + 2 + j);
        r.q1 = ggc_ld_u32_a2(b + 6 + j);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t, float v[8]) {
        const float d = ggc_h2f((uint16_t)r.d);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (float)(int8_t)(r.q0 >> (8 * k)) * d;
            v[k + 4] = (float)(int8_t)(r.q1 >> (8 * k)) * d;
        }
    }
};
/* q2_K: element e: (qs[32 (e / 128) + e % 32] >> 2 ((e % 128) / 32)) & 3, scale byte e / 16 */
template <> struct ggc_deq<GGC_TYPE_Q2_K> {
    struct raw { uint32_t sc, dm, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 8) * sizeof(ggc_blk_q2_K);
        const int e = (int)(i & 255), h = e >> 7, l = e & 31;
        r.sc = b[e >> 4];
        r.dm = ggc_ld_u32_a4(b + 80);
        r.q0 = ggc_ld_u32_a4(b + 16 + 32 * h + l);
        r.q1 = ggc_ld_u32_a4(b + 20 + 32 * h + l);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int sh = 2 * (((int)i & 127) >> 5);
        const float dl = ggc_h2f((uint16_t)r.dm) * (float)(r.sc & 0xF);
        const float ml = ggc_h2f((uint16_t)(r.dm >> 16)) * (float)(r.sc >> 4);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = dl * (float)((r.q0 >> (8 * k + sh)) & 3) - ml;
            v[k + 4] = dl * (float)((r.q1 >> (8 * k + sh)) & 3) - ml;
        }
    }
};
/* q3_K: low 2 bits as q2_K, the 3rd (inverted: set means +0, clear means -4) from hmask */
template <> struct ggc_deq<GGC_TYPE_Q3_K> {
    struct raw { uint32_t d, s_lo, s_hi, q0, q1, m0, m1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 8) * sizeof(ggc_blk_q3_K);
        const int e = (int)(i & 255), h = e >> 7, l = e & 31, g = e >> 4;
        r.d = ggc_ld_u16(b + 108);
        r.s_lo = b[96 + (g & 7)];
        r.s_hi = b[96 + 8 + (g & 3)];
        r.q0 = ggc_ld_u32_a2(b + 32 + 32 * h + l);
        r.q1 = ggc_ld_u32_a2(b + 36 + 32 * h + l);
        r.m0 = ggc_ld_u32_a2(b + l);
        r.m1 = ggc_ld_u32_a2(b + l + 4);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int e = (int)(i & 255), h = e >> 7, j = (e & 127) >> 5, g = e >> 4, hs = 4 * h + j;
        const int lo = g < 8 ? (int)(r.s_lo & 0xF) : (int)(r.s_lo >> 4);
        const int sc = (lo | (int)((r.s_hi >> (2 * (g >> 2))) & 3) << 4) - 32;
        const float dl = ggc_h2f((uint16_t)r.d) * (float)sc;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int a = (int)((r.q0 >> (8 * k + 2 * j)) & 3) - (((r.m0 >> (8 * k + hs)) & 1) ? 0 : 4);
            const int c = (int)((r.q1 >> (8 * k + 2 * j)) & 3) - (((r.m1 >> (8 * k + hs)) & 1) ? 0 : 4);
            v[k] = dl * (float)a;
            v[k + 4] = dl * (float)c;
        }
    }
};
/* q4_K / q5_K: 64-element chunks (low nibbles of 32 bytes, then their high nibbles), 6-bit
 * scale and min per 32; q5_K's 5th bit of element e is bit (e / 32) of qh[e % 32] */
template <> struct ggc_deq<GGC_TYPE_Q4_K> {
    struct raw { uint32_t dm, s0, s1, s2, q0, q1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 8) * sizeof(ggc_blk_q4_K);
        const int e = (int)(i & 255), c = e >> 6, l = e & 31;
        r.dm = ggc_ld_u32_a4(b);
        r.s0 = ggc_ld_u32_a4(b + 4);
        r.s1 = ggc_ld_u32_a4(b + 8);
        r.s2 = ggc_ld_u32_a4(b + 12);
        r.q0 = ggc_ld_u32_a4(b + 16 + 32 * c + l);
        r.q1 = ggc_ld_u32_a4(b + 20 + 32 * c + l);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int s = ((int)i & 255) >> 5, sh = 4 * (s & 1);
        int sc, m;
        ggc_k4_scale_min_w(r.s0, r.s1, r.s2, s, sc, m);
        const float d1 = ggc_h2f((uint16_t)r.dm) * (float)sc, m1 = ggc_h2f((uint16_t)(r.dm >> 16)) * (float)m;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = d1 * (float)((r.q0 >> (8 * k + sh)) & 0xF) - m1;
            v[k + 4] = d1 * (float)((r.q1 >> (8 * k + sh)) & 0xF) - m1;
        }
    }
};
template <> struct ggc_deq<GGC_TYPE_Q5_K> {
    struct raw { uint32_t dm, s0, s1, s2, q0, q1, h0, h1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 8) * sizeof(ggc_blk_q5_K);
        const int e = (int)(i & 255), c = e >> 6, l = e & 31;
        r.dm = ggc_ld_u32_a4(b);
        r.s0 = ggc_ld_u32_a4(b + 4);
        r.s1 = ggc_ld_u32_a4(b + 8);
        r.s2 = ggc_ld_u32_a4(b + 12);
        r.h0 = ggc_ld_u32_a4(b + 16 + l);
        r.h1 = ggc_ld_u32_a4(b + 20 + l);
        r.q0 = ggc_ld_u32_a4(b + 48 + 32 * c + l);
        r.q1 = ggc_ld_u32_a4(b + 52 + 32 * c + l);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int s = ((int)i & 255) >> 5, sh = 4 * (s & 1);
        int sc, m;
        ggc_k4_scale_min_w(r.s0, r.s1, r.s2, s, sc, m);
        const float d1 = ggc_h2f((uint16_t)r.dm) * (float)sc, m1 = ggc_h2f((uint16_t)(r.dm >> 16)) * (float)m;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = d1 * (float)(((r.q0 >> (8 * k + sh)) & 0xF) | (((r.h0 >> (8 * k + s)) & 1) << 4)) - m1;
            v[k + 4] = d1 * (float)(((r.q1 >> (8 * k + sh)) & 0xF) | (((r.h1 >> (8 * k + s)) & 1) << 4)) - m1;
        }
    }
};
/* q6_K: per 128-element half, four 32-element quarters; low 4 bits from ql, high 2 from qh */
template <> struct ggc_deq<GGC_TYPE_Q6_K> {
    struct raw { uint32_t d, sc, l0, l1, g0, g1; };
    static __device__ __forceinline__ void fetch(const uint8_t *row, int64_t i, raw &r) {
        const uint8_t *b = row + (i >> 8) * sizeof(ggc_blk_q6_K);
        const int e = (int)(i & 255), h = e >> 7, k4 = (e & 127) >> 5, l = e & 31;
        const uint8_t *ql = b + 64 * h + l + 32 * (k4 & 1), *qh = b + 128 + 32 * h + l;
        r.d = ggc_ld_u16(b + 208);
        r.sc = b[192 + (e >> 4)];
        r.l0 = ggc_ld_u32_a2(ql);
        r.l1 = ggc_ld_u32_a2(ql + 4);
        r.g0 = ggc_ld_u32_a2(qh);
        r.g1 = ggc_ld_u32_a2(qh + 4);
    }
    static __device__ __forceinline__ void convert(const raw &r, int64_t i, float v[8]) {
        const int k4 = ((int)i & 127) >> 5, lsh = k4 < 2 ? 0 : 4;
        const float dl = ggc_h2f((uint16_t)r.d) * (float)(int8_t)r.sc;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int a = (int)(((r.l0 >> (8 * k + lsh)) & 0xF) | (((r.g0 >> (8 * k + 2 * k4)) & 3) << 4)) - 32;
            const int c = (int)(((r.l1 >> (8 * k + lsh)) & 0xF) | (((r.g1 >> (8 * k + 2 * k4)) & 3) << 4)) - 32;
            v[k] = dl * (float)a;
            v[k + 4] = dl * (float)c;
        }
    }
};

template <ggc_type T> static __device__ __forceinline__ void ggc_deq8(const uint8_t *row, int64_t i, float v[8]) {
    typename ggc_deq<T>::raw r;
    ggc_deq<T>::fetch(row, i, r);
    ggc_deq<T>::convert(r, i, v);
}

/* ---------------------------------------------------------------- integer-dot form of a 32-element sub-block
 *
 * q[0..3]: elements 0..15, q[4..7]: elements 16..31 (signed bytes); dm[g] = {scale, offset} of
 * half g: w = scale * q + offset. blk points at the weight block (any memory space); sub is the
 * 32-element sub-block within it (0 for the 32-element formats, 0..7 for the K-quants). */
template <ggc_type T> struct ggc_q8dec;

template <> struct ggc_q8dec<GGC_TYPE_Q4_0> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int, int q[8], float2 dm[2]) {
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t v = ggc_ld_u32_a2(b + 2 + 4 * k);
            q[k] = (int)(v & 0x0F0F0F0Fu);
            q[k + 4] = (int)((v >> 4) & 0x0F0F0F0Fu);
        }
        dm[0] = dm[1] = make_float2(d, -8.0f * d);
    }
};
/* the sub-block sb (32 elements) of a weight row, wherever the format keeps its parts */
template <ggc_type T>
static __device__ __forceinline__ void ggc_q8dec_at(const uint8_t *row, int64_t sb, int q[8], float2 dm[2]) {
    constexpr int SUBS = ggc_cuda_blck(T) / 32;
    ggc_q8dec<T>::dec(row + (sb / SUBS) * ggc_cuda_tsize(T), (int)(sb % SUBS), q, dm);
}
/* A sub-block as loaded, decoded only where it is dotted (ggc_k_gemv1 keeps the next one in flight
 * while it dots the current): in general the decoded form itself; q4_0 regrouped keeps its raw 16
 * quant bytes and scale, 5 registers instead of 12, and its ggc_q8dec_at is that load and decode. */
template <ggc_type T> struct ggc_q8item {
    int q[8];
    float2 dm[2];
    __device__ __forceinline__ void load(const uint8_t *row, int64_t sb) { ggc_q8dec_at<T>(row, sb, q, dm); }
    __device__ __forceinline__ void decode(int qo[8], float2 dmo[2]) const {
#pragma unroll
        for (int k = 0; k < 8; k++) qo[k] = q[k];
        dmo[0] = dm[0], dmo[1] = dm[1];
    }
};
template <> struct ggc_q8item<GGC_TYPE_Q4_0R8> {
    int4 v;
    uint32_t d;
    __device__ __forceinline__ void load(const uint8_t *row, int64_t sb) {
        const uint8_t *g = ggc_r8_group(row, sb);
        const int e = (int)(sb & 7);
        d = ggc_ld_u16(g + 2 * e);
        v = *(const int4 *)(g + 16 + 16 * e); /* one aligned 16-byte load */
    }
    __device__ __forceinline__ void decode(int q[8], float2 dm[2]) const {
        const int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            q[k] = w[k] & 0x0F0F0F0F;
            q[k + 4] = (w[k] >> 4) & 0x0F0F0F0F;
        }
        const float f = ggc_h2f((uint16_t)d);
        dm[0] = dm[1] = make_float2(f, -8.0f * f);
    }
};
template <>
__device__ __forceinline__ void ggc_q8dec_at<GGC_TYPE_Q4_0R8>(const uint8_t *row, int64_t sb, int q[8], float2 dm[2]) {
    ggc_q8item<GGC_TYPE_Q4_0R8> it;
    it.load(row, sb);
    it.decode(q, dm);
}
template <> struct ggc_q8dec<GGC_TYPE_Q4_1> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int, int q[8], float2 dm[2]) {
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b)), m = ggc_h2f((uint16_t)ggc_ld_u16(b + 2));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t v = ggc_ld_u32_a4(b + 4 + 4 * k);
            q[k] = (int)(v & 0x0F0F0F0Fu);
            q[k + 4] = (int)((v >> 4) & 0x0F0F0F0Fu);
        }
        dm[0] = dm[1] = make_float2(d, m);
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q5_0> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int, int q[8], float2 dm[2]) {
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b));
        const uint32_t qh = ggc_ld_u32_a2(b + 2);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t v = ggc_ld_u32_a2(b + 6 + 4 * k);
            q[k] = (int)((v & 0x0F0F0F0Fu) | (ggc_spread4((qh >> (4 * k)) & 0xF) << 4));
            q[k + 4] = (int)(((v >> 4) & 0x0F0F0F0Fu) | (ggc_spread4((qh >> (16 + 4 * k)) & 0xF) << 4));
        }
        dm[0] = dm[1] = make_float2(d, -16.0f * d);
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q5_1> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int, int q[8], float2 dm[2]) {
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b)), m = ggc_h2f((uint16_t)ggc_ld_u16(b + 2));
        const uint32_t qh = ggc_ld_u32_a4(b + 4);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t v = ggc_ld_u32_a4(b + 8 + 4 * k);
            q[k] = (int)((v & 0x0F0F0F0Fu) | (ggc_spread4((qh >> (4 * k)) & 0xF) << 4));
            q[k + 4] = (int)(((v >> 4) & 0x0F0F0F0Fu) | (ggc_spread4((qh >> (16 + 4 * k)) & 0xF) << 4));
        }
        dm[0] = dm[1] = make_float2(d, m);
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q8_0> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int, int q[8], float2 dm[2]) {
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b));
#pragma unroll
        for (int k = 0; k < 8; k++) q[k] = (int)ggc_ld_u32_a2(b + 2 + 4 * k);
        dm[0] = dm[1] = make_float2(d, 0.0f);
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q2_K> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int sub, int q[8], float2 dm[2]) {
        const int h = sub >> 2, sh = 2 * (sub & 3);
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b + 80)), dmin = ggc_h2f((uint16_t)ggc_ld_u16(b + 82));
#pragma unroll
        for (int k = 0; k < 8; k++) q[k] = (int)((ggc_ld_u32_a4(b + 16 + 32 * h + 4 * k) >> sh) & 0x03030303u);
#pragma unroll
        for (int g = 0; g < 2; g++) {
            const uint8_t sc = b[2 * sub + g];
            dm[g] = make_float2(d * (float)(sc & 0xF), -dmin * (float)(sc >> 4));
        }
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q3_K> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int sub, int q[8], float2 dm[2]) {
        const int h = sub >> 2, j = sub & 3, hs = 4 * h + j;
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b + 108));
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t lo = (ggc_ld_u32_a2(b + 32 + 32 * h + 4 * k) >> (2 * j)) & 0x03030303u;
            const uint32_t hb = (ggc_ld_u32_a2(b + 4 * k) >> hs) & 0x01010101u;
            q[k] = (int)(lo | (hb << 2)); /* 0..7; the value is q - 4 */
        }
#pragma unroll
        for (int g = 0; g < 2; g++) {
            const float s = d * (float)ggc_q3k_scale(b + 96, 2 * sub + g);
            dm[g] = make_float2(s, -4.0f * s);
        }
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q4_K> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int sub, int q[8], float2 dm[2]) {
        const int c = sub >> 1, sh = 4 * (sub & 1);
        int sc, m;
        ggc_k4_scale_min(b + 4, sub, sc, m);
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b)), dmin = ggc_h2f((uint16_t)ggc_ld_u16(b + 2));
#pragma unroll
        for (int k = 0; k < 8; k++) q[k] = (int)((ggc_ld_u32_a4(b + 16 + 32 * c + 4 * k) >> sh) & 0x0F0F0F0Fu);
        dm[0] = dm[1] = make_float2(d * (float)sc, -dmin * (float)m);
    }
};
template <> struct ggc_q8dec<GGC_TYPE_Q5_K> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int sub, int q[8], float2 dm[2]) {
        const int c = sub >> 1, sh = 4 * (sub & 1);
        int sc, m;
        ggc_k4_scale_min(b + 4, sub, sc, m);
        const float d = ggc_h2f((uint16_t)ggc_ld_u16(b)), dmin = ggc_h2f((uint16_t)ggc_ld_u16(b + 2));
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t lo = (ggc_ld_u32_a4(b + 48 + 32 * c + 4 * k) >> sh) & 0x0F0F0F0Fu;
            const uint32_t hb = (ggc_ld_u32_a4(b + 16 + 4 * k) >> sub) & 0x01010101u;
            q[k] = (int)(lo | (hb << 4));
        }
        dm[0] = dm[1] = make_float2(d * (float)sc, -dmin * (float)m);
    }
};
/* q6_K sub-block sub (32 elements) from its 8 ql words, 8 qh words, the block's d and the sub-block's
 * two scales (one a 16-element half), wherever the format keeps them: quants 0..63 (the value is
 * q - 32), so each half's scale s comes with the min term -32 s */
static __device__ __forceinline__ void ggc_q6k_sub(const uint32_t ql[8], const uint32_t qh[8], int sub, float d,
                                                   const int8_t sc[2], int q[8], float2 dm[2]) {
    const int k4 = sub & 3, lsh = k4 < 2 ? 0 : 4;
#pragma unroll
    for (int k = 0; k < 8; k++)
        q[k] = (int)(((ql[k] >> lsh) & 0x0F0F0F0Fu) | (((qh[k] >> (2 * k4)) & 0x03030303u) << 4));
#pragma unroll
    for (int g = 0; g < 2; g++) {
        const float s = d * (float)sc[g];
        dm[g] = make_float2(s, -32.0f * s);
    }
}
template <> struct ggc_q8dec<GGC_TYPE_Q6_K> {
    static __device__ __forceinline__ void dec(const uint8_t *b, int sub, int q[8], float2 dm[2]) {
        const int h = sub >> 2, k4 = sub & 3;
        const uint8_t *ql = b + 64 * h + 32 * (k4 & 1), *qh = b + 128 + 32 * h;
        uint32_t lo[8], hi[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            lo[k] = ggc_ld_u32_a2(ql + 4 * k);
            hi[k] = ggc_ld_u32_a2(qh + 4 * k);
        }
        const int8_t sc[2] = {(int8_t)b[192 + 2 * sub], (int8_t)b[193 + 2 * sub]};
        ggc_q6k_sub(lo, hi, sub, ggc_h2f((uint16_t)ggc_ld_u16(b + 208)), sc, q, dm);
    }
};

/* q6_K regrouped by 8 blocks (GGC_TYPE_Q6_KR8): in the group of block b (row + 1680 * (b / 8)), with
 * e = b % 8, its ql at 128 e, qh at 1024 + 64 e, scales at 1536 + 16 e, d at 1664 + 2 e. Sub-block
 * sub's 32 ql bytes and 32 qh bytes are two aligned 16-byte loads each; decoded as q6_K's are. */
template <>
__device__ __forceinline__ void ggc_q8dec_at<GGC_TYPE_Q6_KR8>(const uint8_t *row, int64_t sb, int q[8],
                                                              float2 dm[2]) {
    const int64_t b = sb >> 3;
    const int sub = (int)(sb & 7), e = (int)(b & 7), h = sub >> 2, k4 = sub & 3;
    const uint8_t *g = row + 1680 * (b >> 3);
    const int4 *ql = (const int4 *)(g + 128 * e + 64 * h + 32 * (k4 & 1));
    const int4 *qh = (const int4 *)(g + 1024 + 64 * e + 32 * h);
    const int4 l0 = ql[0], l1 = ql[1], h0 = qh[0], h1 = qh[1];
    const uint32_t lo[8] = {(uint32_t)l0.x, (uint32_t)l0.y, (uint32_t)l0.z, (uint32_t)l0.w,
                            (uint32_t)l1.x, (uint32_t)l1.y, (uint32_t)l1.z, (uint32_t)l1.w};
    const uint32_t hi[8] = {(uint32_t)h0.x, (uint32_t)h0.y, (uint32_t)h0.z, (uint32_t)h0.w,
                            (uint32_t)h1.x, (uint32_t)h1.y, (uint32_t)h1.z, (uint32_t)h1.w};
    const uint16_t sc = (uint16_t)ggc_ld_u16(g + 1536 + 16 * e + 2 * sub);
    const int8_t scs[2] = {(int8_t)(sc & 0xFF), (int8_t)(sc >> 8)};
    ggc_q6k_sub(lo, hi, sub, ggc_h2f((uint16_t)ggc_ld_u16(g + 1664 + 2 * e)), scs, q, dm);
}

/* ---------------------------------------------------------------- activations for the integer path
 *
 * ggml-CPU quantizes a matrix product's activations to the weight type's vec_dot_type before its
 * integer block dots, and its result depends on exactly how (rounding of d, block size, min
 * terms), so the CUDA kernels reproduce that quantization bit for bit, keyed on the weight type:
 *   q8_0 (q4_0, q5_0, q8_0 weights) and q8_1 (q4_1, q5_1): per 32 elements, ggml's x86
 *     quantizer (ggc_quants.c quant_q8_block): d = amax / 127, q = round-half-even(x * 127 / amax),
 *     d stored as f16; q8_1 adds s = f16(d * sum(q)) with the unrounded d (quant_q8_1);
 *   q8_K (q2_K .. q6_K): per 256 elements (quant_q8_K): iscale = -127 / (the signed value of the
 *     first element of largest |x|), q = min(round-half-even(iscale * x), 127), d = 1 / iscale
 *     kept as a float, sums of each 16 quants (bsums). */

/* the activation quantization of weight type t (ggml's vec_dot_type of t) */
enum ggc_actq { GGC_ACTQ_Q8_0, GGC_ACTQ_Q8_1, GGC_ACTQ_Q8_K };
static __host__ __device__ constexpr ggc_actq ggc_actq_of(ggc_type t) {
    return t == GGC_TYPE_Q4_1 || t == GGC_TYPE_Q5_1 ? GGC_ACTQ_Q8_1
           : t == GGC_TYPE_Q2_K || t == GGC_TYPE_Q3_K || t == GGC_TYPE_Q4_K || t == GGC_TYPE_Q5_K ||
                   t == GGC_TYPE_Q6_K || t == GGC_TYPE_Q6_KR8
               ? GGC_ACTQ_Q8_K
               : GGC_ACTQ_Q8_0;
}
/* elements per quantization block: one warp quantizes one block */
static __host__ __device__ constexpr int ggc_actq_blck(ggc_actq q) { return q == GGC_ACTQ_Q8_K ? 256 : 32; }

/* Block meta of the q8 activation format, per 32 elements: x[e] ~= d * q[e], and the min-term
 * sums of the 16-element halves, as the CPU rounds them: q8_0 {f16(d), f16(d) * sum_lo,
 * f16(d) * sum_hi}; q8_1 {f16(d), f16(d * sum32), 0} (q4_1 / q5_1 have one min for both halves,
 * so the CPU's m * s comes out whole); q8_K {d, d * bsum_lo, d * bsum_hi} with the block's float d. */
struct ggc_q8a_meta {
    float d, s0, s1, pad;
};
static_assert(sizeof(ggc_q8a_meta) == 16, "q8a meta");

/* bytes of the q8 activation format for `rows` rows of k elements (k a multiple of 32) */
static inline size_t ggc_q8a_size(int64_t rows, int64_t k) {
    return (size_t)rows * (size_t)k + (size_t)rows * (size_t)(k / 32) * sizeof(ggc_q8a_meta);
}

/* One 32-element sub-block: a weight decoded by ggc_q8dec (q, scale/min of each half in d0, d1)
 * against q8a activations (quants y0, y1 and meta m): the integer dots of the two halves through
 * __dp4a, then the float terms in a fixed order (every matrix-vector kernel sums the same way). */
static __device__ __forceinline__ float ggc_q8a_dot(const int q[8], int4 y0, int4 y1, float4 m, float2 d0,
                                                    float2 d1) {
    int s0 = __dp4a(q[0], y0.x, 0);
    s0 = __dp4a(q[1], y0.y, s0);
    s0 = __dp4a(q[2], y0.z, s0);
    s0 = __dp4a(q[3], y0.w, s0);
    int s1 = __dp4a(q[4], y1.x, 0);
    s1 = __dp4a(q[5], y1.y, s1);
    s1 = __dp4a(q[6], y1.z, s1);
    s1 = __dp4a(q[7], y1.w, s1);
    return m.x * (d0.x * (float)s0 + d1.x * (float)s1) + d0.y * m.y + d1.y * m.z;
}

/* q8_0 / q8_1 quants of a 32-element block, lane e holding x[e]: returns q[e]; d is the block's
 * unrounded scale (all lanes). The explicit _rn operations keep nvcc from contracting or
 * approximating what the CPU rounds step by step (fmaxf is exact, so the reduction order is free). */
static __device__ __forceinline__ int ggc_q8_quant32(float x, float &d) {
    const float amax = ggc_warp_max(fabsf(x));
    d = __fdiv_rn(amax, 127.0f);
    const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    return __float2int_rn(__fmul_rn(x, id)); /* round half to even, as _mm256_round_ps */
}

/* q8_K quants of a 256-element block, lane l holding x[8l .. 8l+7]: q[j] and the block's float d
 * (all lanes; 0 and all-zero quants when every x is 0, as quant_q8_K's memset). The CPU scans
 * x[0..255] keeping the first element of strictly largest |x|: here each lane scans its 8 in
 * order, then the warp keeps the largest |x| and, on ties, the lowest lane (lanes hold ascending
 * ranges), so the sign of the scale is the CPU's even when +v and -v tie. */
static __device__ __forceinline__ float ggc_q8k_quant256(const float x[8], int lane, int q[8]) {
    float amax = 0.0f, mx = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            mx = x[j];
        }
    int win = lane;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, amax, o), om = __shfl_xor_sync(0xffffffffu, mx, o);
        const int ow = __shfl_xor_sync(0xffffffffu, win, o);
        if (oa > amax || (oa == amax && ow < win)) {
            amax = oa;
            mx = om;
            win = ow;
        }
    }
    if (amax == 0.0f) {
#pragma unroll
        for (int j = 0; j < 8; j++) q[j] = 0;
        return 0.0f;
    }
    const float iscale = __fdiv_rn(-127.0f, mx);
#pragma unroll
    for (int j = 0; j < 8; j++) q[j] = min(__float2int_rn(__fmul_rn(iscale, x[j])), 127);
    return __fdiv_rn(1.0f, iscale);
}

/* One q8_0 / q8_1 block (Q) to q8a by a warp: lane e holds x[e]; writes q[e] and (lane 0) meta. */
template <ggc_actq Q>
static __device__ __forceinline__ void ggc_q8a_quant_warp(float x, int lane, int8_t *q, ggc_q8a_meta *meta) {
    float d;
    const int v = ggc_q8_quant32(x, d);
    q[lane] = (int8_t)v;
    int s = v;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o); /* sums over 16 lanes */
    const int s_hi = __shfl_sync(0xffffffffu, s, 16);
    if (lane == 0) {
        const float dh = ggc_h2f(ggc_f2h(d)); /* the CPU's block holds d as f16 */
        if constexpr (Q == GGC_ACTQ_Q8_1)
            *meta = ggc_q8a_meta{dh, ggc_h2f(ggc_f2h(__fmul_rn(d, (float)(s + s_hi)))), 0.0f, 0.0f};
        else
            *meta = ggc_q8a_meta{dh, __fmul_rn(dh, (float)s), __fmul_rn(dh, (float)s_hi), 0.0f};
    }
}

/* One q8_0 block to q8a by 16 lanes (lanes 16g .. 16g+15 of a warp, every lane of which calls this),
 * lane l holding elements 2l, 2l + 1 of the block: the same bits as ggc_q8a_quant_warp<GGC_ACTQ_Q8_0>
 * (the same rounded operations; the max is exact in any order). q: the block's quants, meta: its meta. */
static __device__ __forceinline__ void ggc_q8a_quant_pairs16(float x0, float x1, int lane, int8_t *q,
                                                             ggc_q8a_meta *meta) {
    float amax = fmaxf(fabsf(x0), fabsf(x1));
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = __fdiv_rn(amax, 127.0f), id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    const int q0 = __float2int_rn(__fmul_rn(x0, id)), q1 = __float2int_rn(__fmul_rn(x1, id));
    *(uint16_t *)(q + 2 * (lane & 15)) = (uint16_t)((uint8_t)(int8_t)q0 | ((uint32_t)(uint8_t)(int8_t)q1 << 8));
    int s = q0 + q1;
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o); /* sums over 8 lanes: 16 elements */
    const int s_hi = __shfl_down_sync(0xffffffffu, s, 8);
    if ((lane & 15) == 0) {
        const float dh = ggc_h2f(ggc_f2h(d));
        *meta = ggc_q8a_meta{dh, __fmul_rn(dh, (float)s), __fmul_rn(dh, (float)s_hi), 0.0f};
    }
}

/* One q8_K block (256 elements) to q8a by a warp: lane l holds x[8l .. 8l+7]; writes its 8 quants
 * and (lanes 4s) the meta of 32-element sub-block s: the bsums of its halves are lanes 4s, 4s+1
 * and 4s+2, 4s+3. q: the block's first quant (8-byte aligned); meta: its first sub-block's. */
static __device__ __forceinline__ void ggc_q8a_quant_k_warp(const float x[8], int lane, int8_t *q,
                                                            ggc_q8a_meta *meta) {
    int v[8];
    const float d = ggc_q8k_quant256(x, lane, v);
    int s = 0;
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s += v[j];
        w[j / 4] |= (uint32_t)(uint8_t)(int8_t)v[j] << (8 * (j % 4));
    }
    *(uint2 *)(q + 8 * lane) = make_uint2(w[0], w[1]);
    const int s16 = s + __shfl_xor_sync(0xffffffffu, s, 1);  /* bsum of this lane's 16-element half */
    const int s16_hi = __shfl_down_sync(0xffffffffu, s16, 2); /* lane 4s: the upper half's */
    if ((lane & 3) == 0) meta[lane / 4] = ggc_q8a_meta{d, __fmul_rn(d, (float)s16), __fmul_rn(d, (float)s16_hi), 0.0f};
}

/* Fake quantization for the tensor-core path, which multiplies f16: x replaced by f16(q * d) with
 * the quants and the d the CPU's dot uses (f16-rounded for q8_0 / q8_1, the float for q8_K).
 * One 32-element block, lane e holding x[e]; returns the f16 bits of element e. */
static __device__ __forceinline__ uint16_t ggc_q8_fake32(float x) {
    float d;
    const int v = ggc_q8_quant32(x, d);
    return ggc_f2h(__fmul_rn((float)v, ggc_h2f(ggc_f2h(d))));
}
/* Where element e (0..31) of a block goes in the src1 rows of the q4_0 tensor-core kernel
 * (ggc_k_mmq4): it builds its weight fragments straight from the quant bytes, each lane's four
 * bytes giving the f16 pairs (e, e + 2), (e + 1, e + 3) of one 16-element step and the same 16
 * further, so src1 takes that order within each 16: element 4t + 2h + v of step s (t 0..3, h, v
 * 0..1) at 16s + 8v + 2t + h. A product is a sum, so both sides in one order give the same terms. */
static __host__ __device__ constexpr int ggc_mmq4_pos(int e) {
    return (e & 16) + 8 * (e & 1) + 2 * ((e & 15) >> 2) + ((e >> 1) & 1);
}
/* the same for a q8_K block, lane l holding x[8l .. 8l+7]: h[j] the f16 bits of element 8l + j */
static __device__ __forceinline__ void ggc_q8k_fake256(const float x[8], int lane, uint16_t h[8]) {
    int v[8];
    const float d = ggc_q8k_quant256(x, lane, v);
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = ggc_f2h(__fmul_rn((float)v[j], d));
}

/* ---------------------------------------------------------------- float blocks to q4_0 .. q8_0 (ggml's reference) */

template <ggc_type T> struct ggc_quant;

static __device__ __forceinline__ float ggc_signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}
static __device__ __forceinline__ void ggc_min_max(const float *x, int n, float &mn, float &mx) {
    mn = 3.402823466e+38f;
    mx = -3.402823466e+38f;
    for (int j = 0; j < n; j++) {
        mn = fminf(mn, x[j]);
        mx = fmaxf(mx, x[j]);
    }
}
static __device__ __forceinline__ void ggc_st_u16(uint8_t *p, uint16_t v) { *(uint16_t *)p = v; }

template <> struct ggc_quant<GGC_TYPE_Q8_0> {
    static __device__ void quant(const float *x, uint8_t *dst) {
        float amax = 0.0f;
        for (int j = 0; j < GGC_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        ggc_st_u16(dst, ggc_f2h(d));
        for (int j = 0; j < GGC_QK; j++) dst[2 + j] = (uint8_t)(int8_t)__float2int_rn(__fmul_rn(x[j], id));
    }
};
template <> struct ggc_quant<GGC_TYPE_Q4_0> {
    static __device__ void quant(const float *x, uint8_t *dst) {
        const float d = ggc_signed_absmax(x, GGC_QK) / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        ggc_st_u16(dst, ggc_f2h(d));
        for (int j = 0; j < GGC_QK / 2; j++) {
            const int a = min(15, (int)__fadd_rn(__fmul_rn(x[j], id), 8.5f));
            const int b = min(15, (int)__fadd_rn(__fmul_rn(x[j + 16], id), 8.5f));
            dst[2 + j] = (uint8_t)(a | b << 4);
        }
    }
};
template <> struct ggc_quant<GGC_TYPE_Q5_0> {
    static __device__ void quant(const float *x, uint8_t *dst) {
        const float d = ggc_signed_absmax(x, GGC_QK) / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        ggc_st_u16(dst, ggc_f2h(d));
        uint32_t qh = 0;
        for (int j = 0; j < GGC_QK / 2; j++) {
            const int a = min(31, (int)__fadd_rn(__fmul_rn(x[j], id), 16.5f));
            const int b = min(31, (int)__fadd_rn(__fmul_rn(x[j + 16], id), 16.5f));
            dst[6 + j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
            qh |= (uint32_t)(a >> 4) << j | (uint32_t)(b >> 4) << (j + 16);
        }
        ggc_st_u16(dst + 2, (uint16_t)qh);
        ggc_st_u16(dst + 4, (uint16_t)(qh >> 16));
    }
};
template <> struct ggc_quant<GGC_TYPE_Q4_1> {
    static __device__ void quant(const float *x, uint8_t *dst) {
        float mn, mx;
        ggc_min_max(x, GGC_QK, mn, mx);
        const float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        ggc_st_u16(dst, ggc_f2h(d));
        ggc_st_u16(dst + 2, ggc_f2h(mn));
        for (int j = 0; j < GGC_QK / 2; j++) {
            const int a = min(15, (int)__fadd_rn(__fmul_rn(x[j] - mn, id), 0.5f));
            const int b = min(15, (int)__fadd_rn(__fmul_rn(x[j + 16] - mn, id), 0.5f));
            dst[4 + j] = (uint8_t)(a | b << 4);
        }
    }
};
template <> struct ggc_quant<GGC_TYPE_Q5_1> {
    static __device__ void quant(const float *x, uint8_t *dst) {
        float mn, mx;
        ggc_min_max(x, GGC_QK, mn, mx);
        const float d = (mx - mn) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        ggc_st_u16(dst, ggc_f2h(d));
        ggc_st_u16(dst + 2, ggc_f2h(mn));
        uint32_t qh = 0;
        for (int j = 0; j < GGC_QK / 2; j++) {
            const int a = (uint8_t)(int)__fadd_rn(__fmul_rn(x[j] - mn, id), 0.5f);
            const int b = (uint8_t)(int)__fadd_rn(__fmul_rn(x[j + 16] - mn, id), 0.5f);
            dst[8 + j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
            qh |= (uint32_t)((a >> 4) & 1) << j | (uint32_t)((b >> 4) & 1) << (j + 16);
        }
        ggc_st_u16(dst + 4, (uint16_t)qh);
        ggc_st_u16(dst + 6, (uint16_t)(qh >> 16));
    }
};
