/* Type traits and the scalar conversions every kernel shares. */
#include "ggc.h"

static const struct {
    int64_t blck;
    size_t size;
    ggc_type vec_dot;
} TRAITS[GGC_TYPE_COUNT] = {
    [GGC_TYPE_F32] = {1, 4, GGC_TYPE_F32},
    [GGC_TYPE_F16] = {1, 2, GGC_TYPE_F16},
    [GGC_TYPE_BF16] = {1, 2, GGC_TYPE_BF16},
    [GGC_TYPE_I8] = {1, 1, GGC_TYPE_I8},
    [GGC_TYPE_I16] = {1, 2, GGC_TYPE_I16},
    [GGC_TYPE_I32] = {1, 4, GGC_TYPE_I32},
    [GGC_TYPE_I64] = {1, 8, GGC_TYPE_I64},
    [GGC_TYPE_F64] = {1, 8, GGC_TYPE_F64},
    [GGC_TYPE_Q4_0] = {32, 18, GGC_TYPE_Q8_0},
    [GGC_TYPE_Q4_1] = {32, 20, GGC_TYPE_Q8_1},
    [GGC_TYPE_Q5_0] = {32, 22, GGC_TYPE_Q8_0},
    [GGC_TYPE_Q5_1] = {32, 24, GGC_TYPE_Q8_1},
    [GGC_TYPE_Q8_0] = {32, 34, GGC_TYPE_Q8_0},
    [GGC_TYPE_Q8_1] = {32, 36, GGC_TYPE_Q8_1},
    [GGC_TYPE_Q2_K] = {GGC_QK_K, 84, GGC_TYPE_Q8_K},
    [GGC_TYPE_Q3_K] = {GGC_QK_K, 110, GGC_TYPE_Q8_K},
    [GGC_TYPE_Q4_K] = {GGC_QK_K, 144, GGC_TYPE_Q8_K},
    [GGC_TYPE_Q5_K] = {GGC_QK_K, 176, GGC_TYPE_Q8_K},
    [GGC_TYPE_Q6_K] = {GGC_QK_K, 210, GGC_TYPE_Q8_K},
    [GGC_TYPE_Q8_K] = {GGC_QK_K, 292, GGC_TYPE_Q8_K},
};

int64_t ggc_blck_size(ggc_type t) { return TRAITS[t].blck; }
size_t ggc_type_size(ggc_type t) { return TRAITS[t].size; }
size_t ggc_row_size(ggc_type t, int64_t ne0) { return TRAITS[t].size * (size_t)(ne0 / TRAITS[t].blck); }
ggc_type ggc_vec_dot_type(ggc_type t) { return TRAITS[t].vec_dot; }


float ggc_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return ggc_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, nan */
    if (exp != 0) return ggc_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return ggc_bits_f32(sign);
    /* subnormal: value = man * 2^-24 */
    float v = (float)man * ggc_bits_f32(0x33800000u);
    return ggc_bits_f32(sign | ggc_f32_bits(v));
}

uint16_t ggc_fp32_to_fp16(float f) {
    const uint32_t u = ggc_f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((au >> 13) & 0x3ffu)); /* nan stays nan */
    if (au >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (au < 0x38800000u) {
        /* subnormal or zero in f16: round |f| * 2^24 to an integer, ties to even */
        float v = ggc_bits_f32(au) * ggc_bits_f32(0x4b800000u); /* * 2^24 */
        uint32_t i = (uint32_t)v;
        float rem = v - (float)i;
        if (rem > 0.5f || (rem == 0.5f && (i & 1u))) i++;
        return (uint16_t)(sign | i);
    }
    /* normal: drop 13 mantissa bits with round to nearest even */
    uint32_t r = au - 0x38000000u; /* rebias exponent 127 -> 15 */
    r += 0x0fffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float ggc_bf16_to_fp32(uint16_t h) { return ggc_bits_f32((uint32_t)h << 16); }

uint16_t ggc_fp32_to_bf16(float f) {
    uint32_t u = ggc_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet nan */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}
