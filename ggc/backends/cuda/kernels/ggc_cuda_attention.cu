/* ggc CUDA kernels: FLASH_ATTN_EXT.
 *
 * src[0] q f32 [D, n_q, H, B]; src[1] k, src[2] v [D, n_kv, H_kv, B_kv] of type f16, f32, bf16 or
 * q8_0, possibly strided views of a KV cache; H % H_kv == 0 (GQA; K and V have the same H_kv),
 * B % B_kv == 0. src[3] optional mask f16 [n_kv, >= n_q, 1|H, 1|B] (broadcast by modulo);
 * src[4] optional sinks f32 [H]. op_params: scale, max_bias, logit_softcap (f32).
 * dst f32 [D, H, n_q, B] (permuted output, as ggml). D = DK = DV in {64, 96, 128, 256}.
 *
 * Runtime KV length: the kernel attends over the first c->n_kv cells when 0 < c->n_kv <= k->ne[1],
 * else over all k->ne[1] cells. The mask's strides stay the graph's (its first n_kv columns are
 * read). This lets one compiled graph serve every KV length up to the cache size.
 *
 * Four kernels, one online softmax in f32 (scores kept in the log2 domain: exp2f), 128 threads:
 *  - k_fa_dec (decode, n_q = 1, f16 K/V with 16-byte aligned rows, D in {64, 128, 256}): a block
 *    serves a GQA group (up to 8 query rows of one KV head) over a chunk of keys; each 32-key tile
 *    of K and V is copied to shared memory by cp.async at once, so a tile costs one memory round
 *    trip, and scores, softmax and P.V run from shared memory. Its split-K partials are merged by
 *    the last block of each row to finish (arrival counters), not by a second launch.
 *  - k_fa_vec (1 < n_q < 16, q8_0 or unaligned decode, D = 96): one block (4 warps) serves up to
 *    8 query rows that share one KV head (the GQA group's heads times queries; 4 rows when the
 *    group has no more), so K and V are read once per group. In a 32-key tile each lane scores one
 *    key (its K row read by the lane, Q broadcast from shared memory), the warp updates the
 *    softmax, then lanes own D/32 output dims and read V rows coalesced, 8 rows in flight. The 4
 *    warps take alternate tiles and merge through shared memory. Keys masked (-inf) for every row
 *    of the block skip their K and V loads.
 *  - k_fa_mma (n_q >= 16, D in {64, 128}, sm_80+): FlashAttention-2 with mma.sync m16n8k16 (f16
 *    inputs, f32 accumulation): a block holds 64 queries of one head (16 per warp); K/V tiles of
 *    64 keys in shared memory as f16 (cp.async, two stages, for 16-byte aligned f16 K/V; else
 *    converted from f32, bf16, q8_0 through registers); fragments through ldmatrix; P stays in
 *    registers as the A operand of P.V. Mask tiles that are -inf everywhere (the causal upper
 *    part) are skipped before K/V are loaded; without a mask the mask pass is skipped.
 *  - k_fa_combine: merges split-K partials for the other kernels.
 * Split-K (flash-decoding): when the grid would leave the GPU idle (decode: n_q = 1), the KV range
 * is cut into chunks (multiples of 32 keys for decode, 128 otherwise), each block writes an
 * unnormalized partial (O, max, sum) to work memory, and they are merged (sinks join there). The
 * split depends on the node's shapes and c->n_sm only, never on data pointers.
 *
 * Work memory: ggc_cuda_work_flash_attn_ext(node) bytes (0 when the node never splits). The split
 * count at run time never exceeds what that size allows; with less work memory it splits less.
 */
#include "ggc_cuda.cuh"
#include "ggc_cuda_quants.cuh"

#include <math.h>

namespace {

#define GGC_FA_UNSUPPORTED(...)                                                                      \
    do {                                                                                             \
        fprintf(stderr, "ggc cuda: unsupported FLASH_ATTN_EXT: " __VA_ARGS__);                      \
        fputc('\n', stderr);                                                                         \
        abort();                                                                                     \
    } while (0)

constexpr float LOG2E = 1.4426950408889634f;
#ifndef GGC_FA_DEC_TARGET
#define GGC_FA_DEC_TARGET 8 /* decode: blocks wanted per SM (each holds one 32-key tile in flight) */
#endif
constexpr int FA_CHUNK = 128;      /* split granularity (keys) of the other kernels */
constexpr int FA_MAX_CHUNKS = 128; /* most chunks per row */
constexpr int FA_ASSUMED_SM = 132; /* SMs assumed by the work-size bound (H100 / H200) */
constexpr int VEC_ROWS = 8;       /* query rows per k_fa_vec block (4 when a group has no more) */
constexpr int MMA_BQ = 64;        /* query rows per k_fa_mma block */
constexpr int MMA_MIN_NQ = 16;    /* n_q from which the MMA kernel is used */

struct fa_args {
    const char *q, *k, *v, *mask;
    const float *sinks;
    char *dst;
    ggc_cuda_shape sq, sk, sv, sm, sd;
    ggc_type tk, tv;
    int64_t n_q, H, H_kv, G, B, rk3, rv3;
    int64_t n_kv;      /* attended cells */
    int64_t chunk_len; /* keys per chunk */
    int n_chunks;
    float qscale;   /* on q.k: scale * log2(e), or scale / softcap with a softcap */
    float cap;      /* softcap * log2(e), or 0 */
    float max_bias, m0, m1;
    uint32_t n_head_log2;
    float *part_o;  /* [rows][n_chunks][D] (n_chunks > 1) */
    float *part_ml; /* [rows][n_chunks][2]: max (log2 domain), sum */
    int fused;      /* k_fa_dec: the last block of a row merges the chunks (no k_fa_combine) */
    int8_t *qout;   /* k_fa_dec with ctx quant_out: the one output row as q8a too (quants, then metas) */
    ggc_q8a_meta *qmeta;
};

/* the mask multiplier of head h in the log2 domain: ALiBi slope * log2(e) */
__device__ __forceinline__ float slope_log2(const fa_args &p, uint32_t h) {
    float s = 1.0f;
    if (p.max_bias > 0.0f)
        s = h < p.n_head_log2 ? powf(p.m0, (float)(h + 1)) : powf(p.m1, (float)(2 * (h - p.n_head_log2) + 1));
    return s * LOG2E;
}

/* dst row (head h, query iq1, sequence iq3) <-> flat row index of the partials */
__device__ __forceinline__ int64_t row_id(const fa_args &p, int64_t h, int64_t iq1, int64_t iq3) {
    return (iq3 * p.n_q + iq1) * p.H + h;
}

/* ------------------------------------------------------------------ K / V element loaders
 * T: a ggc_type whose rows are suitably aligned for vector loads (f16 / f32: 16 bytes), or -1 for
 * any supported type, element by element. */

__device__ __forceinline__ float elem_any(const char *row, int64_t i, ggc_type t) {
    switch (t) {
    case GGC_TYPE_Q8_0: {
        const ggc_blk_q8_0 *b = (const ggc_blk_q8_0 *)row + i / 32;
        return ggc_h2f(b->d) * (float)b->qs[i % 32];
    }
    case GGC_TYPE_F16: return ggc_h2f(((const uint16_t *)row)[i]);
    case GGC_TYPE_BF16: return ggc_bf2f(((const uint16_t *)row)[i]);
    default: return ((const float *)row)[i];
    }
}

__device__ __forceinline__ void h8_to_f(const uint4 u, float *o) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(*(const __half2 *)&w[i]);
        o[2 * i] = f.x;
        o[2 * i + 1] = f.y;
    }
}

/* N consecutive elements from element i0 (i0 % N == 0; N divides 32 or N == 3 with T == -1) */
template <int T, int N>
__device__ __forceinline__ void load_n(const char *row, int i0, float *o, ggc_type rt) {
    if constexpr (T == GGC_TYPE_F16 && (N == 2 || N == 4 || N == 8)) {
        const uint16_t *r = (const uint16_t *)row + i0;
        if constexpr (N == 8) {
            h8_to_f(__ldg((const uint4 *)r), o);
        } else if constexpr (N == 4) {
            const uint2 u = __ldg((const uint2 *)r);
            const float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
            o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
        } else {
            const uint32_t u = __ldg((const unsigned int *)r);
            const float2 a = __half22float2(*(const __half2 *)&u);
            o[0] = a.x, o[1] = a.y;
        }
    } else if constexpr (T == GGC_TYPE_F32 && (N == 2 || N == 4 || N == 8)) {
        const float *r = (const float *)row + i0;
        if constexpr (N == 2) {
            const float2 a = __ldg((const float2 *)r);
            o[0] = a.x, o[1] = a.y;
        } else {
#pragma unroll
            for (int j = 0; j < N; j += 4) {
                const float4 a = __ldg((const float4 *)(r + j));
                o[j] = a.x, o[j + 1] = a.y, o[j + 2] = a.z, o[j + 3] = a.w;
            }
        }
    } else if constexpr (T == GGC_TYPE_Q8_0 && (N == 2 || N == 4 || N == 8)) {
        const ggc_blk_q8_0 *b = (const ggc_blk_q8_0 *)row + i0 / 32;
        const float d = ggc_h2f(b->d);
        const uint16_t *qs = (const uint16_t *)(b->qs + i0 % 32); /* 2-byte aligned */
#pragma unroll
        for (int j = 0; j < N / 2; j++) {
            const uint16_t w = qs[j];
            o[2 * j] = d * (float)(int8_t)(w & 0xff);
            o[2 * j + 1] = d * (float)(int8_t)(w >> 8);
        }
    } else {
#pragma unroll
        for (int j = 0; j < N; j++) o[j] = elem_any(row, i0 + j, rt);
    }
}

/* ------------------------------------------------------------------ vector kernel */

/* a block serves R query rows, its 4 warps split the chunk's 32-key tiles and merge at the end */
template <int D, int KT, int VT, int R>
__global__ void __launch_bounds__(128) k_fa_vec(const fa_args p) {
    GGC_PDL_BEGIN();
    constexpr int W = 4, EPL = D / 32, BR = R; /* rows per block */
    /* Q rows and the warps' probabilities during the loop; the warps' partial outputs after it */
    constexpr int LOOP_FLOATS = BR * D + W * R * 32, EPI_FLOATS = W * R * D;
    __shared__ __align__(16) float smem[LOOP_FLOATS > EPI_FLOATS ? LOOP_FLOATS : EPI_FLOATS];
    __shared__ const char *s_mrow[BR];
    __shared__ float s_slope[BR], s_m[W][R], s_l[W][R];
    float(*sq)[D] = (float(*)[D])smem;
    float(*sp)[R][32] = (float(*)[R][32])(smem + BR * D);
    float(*so)[R][D] = (float(*)[R][D])smem;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int chunk = blockIdx.x;
    const int64_t ik2 = blockIdx.z % p.H_kv, iq3 = blockIdx.z / p.H_kv;
    const int64_t ik3 = iq3 / p.rk3, iv3 = iq3 / p.rv3;
    const int64_t rr0 = (int64_t)blockIdx.y * BR;
    const int nb = (int)min((int64_t)BR, p.G * p.n_q - rr0); /* rows of the block */

    /* this block's rows: (head h, query iq1) with h in the group of KV head ik2 */
    for (int idx = tid; idx < BR * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        float v = 0.0f;
        if (r < nb) {
            const int64_t rr = rr0 + r, h = ik2 * p.G + rr % p.G, iq1 = rr / p.G;
            v = *(const float *)(p.q + d * p.sq.nb[0] + iq1 * p.sq.nb[1] + h * p.sq.nb[2] + iq3 * p.sq.nb[3]) * p.qscale;
        }
        sq[r][d] = v;
    }
    if (tid < BR) {
        const int r = tid;
        const int64_t rr = rr0 + r, h = ik2 * p.G + rr % p.G, iq1 = rr / p.G;
        s_slope[r] = r < nb ? slope_log2(p, (uint32_t)h) : 0.0f;
        s_mrow[r] = p.mask && r < nb ? p.mask + iq1 * p.sm.nb[1] + (h % p.sm.ne[2]) * p.sm.nb[2] +
                                           (iq3 % p.sm.ne[3]) * p.sm.nb[3]
                                     : nullptr;
    }
    __syncthreads();
    /* the rows this warp computes: R from row r0 */
    constexpr int r0 = 0;
    const int nr = nb;

    float m[R], l[R], acc[R][EPL];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[r][e] = 0.0f;
    }

    const int64_t kbeg = (int64_t)chunk * p.chunk_len;
    const int64_t kend = min(kbeg + p.chunk_len, p.n_kv);
    const char *kbase = p.k + ik2 * p.sk.nb[2] + ik3 * p.sk.nb[3];
    const char *vbase = p.v + ik2 * p.sv.nb[2] + iv3 * p.sv.nb[3];

    for (int64_t t0 = kbeg + warp * 32; t0 < kend; t0 += W * 32) {
        const int64_t j = t0 + lane;
        const bool valid = j < kend;
        float s[R];
        bool any = false;
#pragma unroll
        for (int r = 0; r < R; r++) {
            float mk = -INFINITY;
            if (r < nr && valid)
                mk = s_mrow[r0 + r] ? s_slope[r0 + r] * ggc_h2f(((const uint16_t *)s_mrow[r0 + r])[j]) : 0.0f;
            s[r] = mk; /* the mask term for now */
            any |= mk != -INFINITY;
        }
        const unsigned live = __ballot_sync(0xffffffffu, any);
        if (live == 0) continue; /* every key of the tile is masked for every row */
        if (any) {
            float dot[R];
#pragma unroll
            for (int r = 0; r < R; r++) dot[r] = 0.0f;
            const char *krow = kbase + j * p.sk.nb[1];
            /* KB groups of 8 elements in flight at once (raw f16: 16 bytes each), then the products */
            constexpr int KB = KT == GGC_TYPE_F16 ? 8 : KT == -1 ? 1 : 4;
            constexpr int KU = KT == -1 ? 1 : D / (8 * KB) + 1; /* the generic path stays compact */
#pragma unroll KU
            for (int c0 = 0; c0 < D; c0 += 8 * KB) {
                float kk[KB][8];
                if constexpr (KT == GGC_TYPE_F16) {
                    uint4 raw[KB];
#pragma unroll
                    for (int u = 0; u < KB; u++)
                        if (c0 + 8 * u < D) raw[u] = __ldg((const uint4 *)krow + c0 / 8 + u);
#pragma unroll
                    for (int u = 0; u < KB; u++)
                        if (c0 + 8 * u < D) h8_to_f(raw[u], kk[u]);
                } else {
#pragma unroll
                    for (int u = 0; u < KB; u++)
                        if (c0 + 8 * u < D) load_n<KT, 8>(krow, c0 + 8 * u, kk[u], p.tk);
                }
#pragma unroll
                for (int u = 0; u < KB; u++) {
                    const int d0 = c0 + 8 * u;
                    if (d0 >= D) break;
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        if (r < nr) {
                            const float4 qa = *(const float4 *)&sq[r0 + r][d0], qb = *(const float4 *)&sq[r0 + r][d0 + 4];
                            float t = dot[r];
                            t = fmaf(qa.x, kk[u][0], t);
                            t = fmaf(qa.y, kk[u][1], t);
                            t = fmaf(qa.z, kk[u][2], t);
                            t = fmaf(qa.w, kk[u][3], t);
                            t = fmaf(qb.x, kk[u][4], t);
                            t = fmaf(qb.y, kk[u][5], t);
                            t = fmaf(qb.z, kk[u][6], t);
                            t = fmaf(qb.w, kk[u][7], t);
                            dot[r] = t;
                        }
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                float x = dot[r];
                if (p.cap != 0.0f) x = p.cap * tanhf(x);
                s[r] += x; /* -inf stays -inf */
            }
        }
        /* online softmax; l is kept per lane (summed over the warp at the end) */
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r < nr) {
                const float mnew = fmaxf(m[r], ggc_warp_max(s[r]));
                const float mu = mnew == -INFINITY ? 0.0f : mnew;
                const float alpha = exp2f(m[r] - mu), pj = exp2f(s[r] - mu);
                m[r] = mnew;
                l[r] = fmaf(l[r], alpha, pj);
#pragma unroll
                for (int e = 0; e < EPL; e++) acc[r][e] *= alpha;
                sp[warp][r][lane] = pj;
            }
        }
        __syncwarp();
        /* P V: VB V rows in flight at once (rows of keys masked for every row are not read) */
        const int nvalid = (int)min((int64_t)32, kend - t0);
        constexpr int VB = VT == -1 ? 2 : EPL <= 4 ? 16 : 8; /* half a tile's V rows in flight when they fit */
#pragma unroll 1
        for (int j0 = 0; j0 < nvalid; j0 += VB) {
            float vv[VB][EPL];
#pragma unroll
            for (int u = 0; u < VB; u++) {
                const int jj = j0 + u;
                if (jj < nvalid && ((live >> jj) & 1u)) {
                    load_n<VT, EPL>(vbase + (t0 + jj) * p.sv.nb[1], lane * EPL, vv[u], p.tv);
                } else {
#pragma unroll
                    for (int e = 0; e < EPL; e++) vv[u][e] = 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < VB; u++) {
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr) {
                        const float pr = sp[warp][r][j0 + u]; /* 0 for masked and absent keys */
#pragma unroll
                        for (int e = 0; e < EPL; e++) acc[r][e] = fmaf(pr, vv[u][e], acc[r][e]);
                    }
                }
            }
        }
        __syncwarp();
    }

#pragma unroll
    for (int r = 0; r < R; r++) l[r] = ggc_warp_sum(l[r]);

    /* merge the 4 warps */
    __syncthreads(); /* sq / sp are dead: so overlays them */
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (lane == 0) {
            s_m[warp][r] = m[r];
            s_l[warp][r] = l[r];
        }
#pragma unroll
        for (int e = 0; e < EPL; e++) so[warp][r][lane * EPL + e] = acc[r][e];
    }
    __syncthreads();
    for (int idx = tid; idx < nr * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < W; w++) M = fmaxf(M, s_m[w][r]);
        const float mu = M == -INFINITY ? 0.0f : M;
        float L = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < W; w++) {
            const float f = exp2f(s_m[w][r] - mu);
            L = fmaf(s_l[w][r], f, L);
            O = fmaf(so[w][r][d], f, O);
        }
        const int64_t rr = rr0 + r, h = ik2 * p.G + rr % p.G, iq1 = rr / p.G;
        if (p.n_chunks == 1) {
            if (p.sinks) {
                const float sk = p.sinks[h] * LOG2E;
                const float ref = M == -INFINITY ? sk : fmaxf(mu, sk);
                const float f = exp2f(mu - ref);
                L = fmaf(L, f, exp2f(sk - ref));
                O *= f;
            }
            float *out = (float *)(p.dst + h * p.sd.nb[1] + iq1 * p.sd.nb[2] + iq3 * p.sd.nb[3]);
            out[d] = L > 0.0f ? O / L : 0.0f;
        } else {
            const int64_t slot = row_id(p, h, iq1, iq3) * p.n_chunks + chunk;
            p.part_o[slot * D + d] = O;
            if (d == 0) {
                p.part_ml[2 * slot] = M;
                p.part_ml[2 * slot + 1] = L;
            }
        }
    }
}

/* ------------------------------------------------------------------ split-K combine */

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *sbuf) {
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    if (lane == 0) sbuf[w] = v;
    __syncthreads();
    v = is_max ? -INFINITY : 0.0f;
    for (int i = 0; i < nw; i++) v = is_max ? fmaxf(v, sbuf[i]) : v + sbuf[i];
    __syncthreads();
    return v;
}

/* grid (dst row, 32-dim slice), a warp per chunk group (up to 8): the chunk weights exp2(m_c - M)
 * in shared memory, then the warps sum interleaved chunks of 32 dims (independent loads in
 * flight) and merge */
__global__ void __launch_bounds__(256) k_fa_combine(const fa_args p, int D) {
    GGC_PDL_BEGIN();
    extern __shared__ float s_w[]; /* n_chunks */
    __shared__ float sbuf[32], s_o[8][32];
    const int64_t row = blockIdx.x;
    const int64_t h = row % p.H, iq1 = (row / p.H) % p.n_q, iq3 = row / (p.H * p.n_q);
    const int nc = p.n_chunks, lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    const float *ml = p.part_ml + 2 * row * nc;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < nc; c += blockDim.x) m = fmaxf(m, ml[2 * c]);
    const float M = block_reduce(m, true, sbuf);
    const float mu = M == -INFINITY ? 0.0f : M;
    float l = 0.0f;
    for (int c = threadIdx.x; c < nc; c += blockDim.x) {
        const float w = exp2f(ml[2 * c] - mu);
        s_w[c] = w;
        l = fmaf(ml[2 * c + 1], w, l);
    }
    float L = block_reduce(l, false, sbuf); /* its barriers also publish s_w */
    float fs = 1.0f;
    if (p.sinks) {
        const float sk = p.sinks[h] * LOG2E;
        const float ref = M == -INFINITY ? sk : fmaxf(mu, sk);
        fs = exp2f(mu - ref);
        L = fmaf(L, fs, exp2f(sk - ref));
    }
    const int d = blockIdx.y * 32 + lane;
    const float *po = p.part_o + row * nc * D + d;
    float O = 0.0f;
#pragma unroll 4
    for (int c = warp; c < nc; c += nw) O = fmaf(po[(int64_t)c * D], s_w[c], O);
    s_o[warp][lane] = O;
    __syncthreads();
    if (warp == 0) {
        O = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++)
            if (w < nw) O += s_o[w][lane];
        float *out = (float *)(p.dst + h * p.sd.nb[1] + iq1 * p.sd.nb[2] + iq3 * p.sd.nb[3]);
        out[d] = L > 0.0f ? O * (fs / L) : 0.0f;
    }
}

/* ------------------------------------------------------------------ tensor-core kernel */

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#else
    (void)p;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#else
    (void)p;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}
/* d += a (16x16 f16, row) * b (16x8 f16, col), f32 accumulation */
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)a, (void)b0, (void)b1;
    __trap();
#endif
}
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *)&h;
}
__device__ __forceinline__ uint4 f8_to_h8(const float *f) {
    uint4 u;
    u.x = pack_h2(f[0], f[1]);
    u.y = pack_h2(f[2], f[3]);
    u.z = pack_h2(f[4], f[5]);
    u.w = pack_h2(f[6], f[7]);
    return u;
}

/* cp.async (sm_80+): 16 bytes global -> shared, zero-filled when !valid */
__device__ __forceinline__ void cp_async16(void *sdst, const void *gsrc, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(sdst)), "l"(gsrc),
                 "r"(valid ? 16 : 0));
#else
    *(uint4 *)sdst = valid ? *(const uint4 *)gsrc : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
/* wait until at most N committed groups are still in flight */
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* rows [k0, k0 + 64) of a 16-byte aligned f16 K or V view into shared memory, asynchronously */
template <int D, int DP>
__device__ __forceinline__ void load_tile_async(__half *s, const char *base, int64_t nb1, int64_t k0, int64_t kend) {
    constexpr int CH = D / 8, N = 64 * CH;
#pragma unroll
    for (int idx = threadIdx.x; idx < N; idx += 128) {
        const int r = idx / CH, c = idx % CH;
        const bool valid = k0 + r < kend;
        cp_async16(s + r * DP + c * 8, (const uint4 *)(base + (valid ? k0 + r : 0) * nb1) + c, valid);
    }
}

/* rows [k0, k0 + 64) of a K or V view into shared memory as f16 (row stride DP halves); rows at
 * or past kend are zero */
template <int D, int DP>
__device__ __forceinline__ void load_tile(__half *s, const char *base, int64_t nb1, ggc_type t, bool vec, int64_t k0,
                                          int64_t kend) {
    constexpr int CH = D / 8, N = 64 * CH;
    if (vec && t == GGC_TYPE_F16) {
#pragma unroll 2
        for (int idx = threadIdx.x; idx < N; idx += 128) {
            const int r = idx / CH, c = idx % CH;
            uint4 u = make_uint4(0, 0, 0, 0);
            if (k0 + r < kend) u = __ldg((const uint4 *)(base + (k0 + r) * nb1) + c);
            *(uint4 *)(s + r * DP + c * 8) = u;
        }
    } else if (t == GGC_TYPE_Q8_0) {
#pragma unroll 2
        for (int idx = threadIdx.x; idx < N; idx += 128) {
            const int r = idx / CH, c = idx % CH;
            float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (k0 + r < kend) load_n<GGC_TYPE_Q8_0, 8>(base + (k0 + r) * nb1, c * 8, f, t);
            *(uint4 *)(s + r * DP + c * 8) = f8_to_h8(f);
        }
    } else if (vec && t == GGC_TYPE_F32) {
#pragma unroll 2
        for (int idx = threadIdx.x; idx < N; idx += 128) {
            const int r = idx / CH, c = idx % CH;
            float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (k0 + r < kend) load_n<GGC_TYPE_F32, 8>(base + (k0 + r) * nb1, c * 8, f, t);
            *(uint4 *)(s + r * DP + c * 8) = f8_to_h8(f);
        }
    } else {
        for (int idx = threadIdx.x; idx < N; idx += 128) {
            const int r = idx / CH, c = idx % CH;
            float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (k0 + r < kend) load_n<-1, 8>(base + (k0 + r) * nb1, c * 8, f, t);
            *(uint4 *)(s + r * DP + c * 8) = f8_to_h8(f);
        }
    }
}

/* dynamic shared memory of k_fa_mma: two stages of (K tile, V tile, mask tile), f16 */
template <int D>
constexpr size_t mma_smem_bytes() {
    return (size_t)2 * (2 * 64 * (D + 8) + MMA_BQ * (64 + 8)) * sizeof(__half);
}

template <int D, bool ASYNC>
__global__ void __launch_bounds__(128) k_fa_mma(const fa_args p, bool kvec, bool vvec) {
    GGC_PDL_BEGIN();
    constexpr int BQ = MMA_BQ, BK = 64, DP = D + 8, MP = BK + 8, NT = BK / 8, DT = D / 8, KS = D / 16;
    /* two stages of K, V and mask tiles (the next tile loads while this one is computed); Q is
     * staged over the first K/V tiles at the start */
    extern __shared__ __align__(16) __half smem_fa[];
    constexpr int STAGE = 2 * BK * DP + BQ * MP;
    __half *sQ = smem_fa;
    static_assert(BQ * DP <= 2 * BK * DP, "Q staging fits over K and V");

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int64_t q0 = (int64_t)blockIdx.x * BQ;
    const int chunk = blockIdx.y;
    const int64_t h = blockIdx.z % p.H, iq3 = blockIdx.z / p.H;
    const int64_t ik2 = h / p.G, ik3 = iq3 / p.rk3, iv3 = iq3 / p.rv3;
    const int nq = (int)min((int64_t)BQ, p.n_q - q0);

    /* Q (unscaled) as f16 A fragments */
    for (int idx = tid; idx < BQ * D; idx += 128) {
        const int r = idx / D, d = idx % D;
        float v = 0.0f;
        if (r < nq)
            v = *(const float *)(p.q + d * p.sq.nb[0] + (q0 + r) * p.sq.nb[1] + h * p.sq.nb[2] + iq3 * p.sq.nb[3]);
        sQ[r * DP + d] = __float2half_rn(v);
    }
    __syncthreads();
    uint32_t qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) ldsm_x4(qa[ks], sQ + (warp * 16 + lane % 16) * DP + ks * 16 + (lane / 16) * 8);
    __syncthreads();

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const float slope = slope_log2(p, (uint32_t)h);
    const char *mbase = p.mask ? p.mask + (h % p.sm.ne[2]) * p.sm.nb[2] + (iq3 % p.sm.ne[3]) * p.sm.nb[3] : nullptr;
    const char *kbase = p.k + ik2 * p.sk.nb[2] + ik3 * p.sk.nb[3];
    const char *vbase = p.v + ik2 * p.sv.nb[2] + iv3 * p.sv.nb[3];
    const int64_t kbeg = (int64_t)chunk * p.chunk_len;
    const int64_t kend = min(kbeg + p.chunk_len, p.n_kv);
    const __half NEG_INF = __ushort_as_half((unsigned short)0xfc00);

    const bool mvec = mbase && (((uintptr_t)mbase | (uintptr_t)p.sm.nb[1]) % 16 == 0);

    /* the mask tile of keys [k0, k0 + BK) into stage st (-inf past kend, 0 for rows past n_q);
     * returns (to every thread) whether any valid row keeps a key. Without a mask and with a full
     * tile nothing is written (the tile is not masked at all). */
    auto load_mask = [&](int64_t k0, int st) -> bool {
        __half *sM = smem_fa + st * STAGE + 2 * BK * DP;
        int any = 0;
        if (!mbase && k0 + BK <= kend) return __syncthreads_or(1);
        for (int idx = tid; idx < BQ * BK / 8; idx += 128) {
            const int r = idx / (BK / 8), c8 = (idx % (BK / 8)) * 8;
            const int64_t key = k0 + c8;
            __align__(16) __half mv[8];
            if (mvec && r < nq && key + 8 <= kend) {
                *(uint4 *)mv = __ldg((const uint4 *)(mbase + (q0 + r) * p.sm.nb[1] + key * 2));
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    mv[e] = __float2half_rn(0.0f);
                    if (key + e >= kend) mv[e] = NEG_INF;
                    else if (r < nq && mbase) mv[e] = *(const __half *)(mbase + (q0 + r) * p.sm.nb[1] + (key + e) * 2);
                }
            }
            if (r < nq)
#pragma unroll
                for (int e = 0; e < 8; e++) any |= key + e < kend && !__hisinf(mv[e]);
            *(uint4 *)(sM + r * MP + c8) = *(const uint4 *)mv;
        }
        return __syncthreads_or(any);
    };
    auto load_kv = [&](int64_t k0, int st) {
        __half *sK = smem_fa + st * STAGE, *sV = sK + BK * DP;
        if constexpr (ASYNC) { /* f16 K and V, 16-byte aligned */
            load_tile_async<D, DP>(sK, kbase, p.sk.nb[1], k0, kend);
            load_tile_async<D, DP>(sV, vbase, p.sv.nb[1], k0, kend);
        } else {
            load_tile<D, DP>(sK, kbase, p.sk.nb[1], p.tk, kvec, k0, kend);
            load_tile<D, DP>(sV, vbase, p.sv.nb[1], p.tv, vvec, k0, kend);
        }
    };

    bool cur = kbeg < kend && load_mask(kbeg, 0);
    if (cur) load_kv(kbeg, 0);
    cp_async_commit();
    int st = 0;
    for (int64_t k0 = kbeg; k0 < kend; k0 += BK, st ^= 1) {
        /* prefetch the next tile into the other stage while this one is computed */
        bool next = false;
        if (k0 + BK < kend) {
            next = load_mask(k0 + BK, st ^ 1);
            if (next) load_kv(k0 + BK, st ^ 1);
        }
        cp_async_commit();
        if (!cur) {
            cur = next;
            continue;
        }
        cur = next;
        cp_async_wait<1>(); /* this tile's group has landed */
        __syncthreads();
        const __half *sK = smem_fa + st * STAGE, *sV = sK + BK * DP, *sM = sV + BK * DP;
        const bool masked = mbase || k0 + BK > kend;

        /* S = Q K^T: 16 rows x 64 keys per warp */
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kp = 0; kp < KS / 2; kp++) {
                uint32_t b[4];
                ldsm_x4(b, sK + (nt * 8 + lane % 8) * DP + kp * 32 + (lane / 8) * 8);
                mma16816(s[nt], qa[2 * kp], b[0], b[1]);
                mma16816(s[nt], qa[2 * kp + 1], b[2], b[3]);
            }
        }
        /* scale, softcap, mask; row maxima (rows g and g + 8 of the warp) */
        float rmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rl = warp * 16 + g + (e >> 1) * 8, col = nt * 8 + tq * 2 + (e & 1);
                float x = s[nt][e] * p.qscale;
                if (p.cap != 0.0f) x = p.cap * tanhf(x);
                if (masked) x = fmaf(slope, __half2float(sM[rl * MP + col]), x);
                s[nt][e] = x;
                rmax[e >> 1] = fmaxf(rmax[e >> 1], x);
            }
        }
        float mu[2], alpha[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            rmax[i] = fmaxf(rmax[i], __shfl_xor_sync(0xffffffffu, rmax[i], 1));
            rmax[i] = fmaxf(rmax[i], __shfl_xor_sync(0xffffffffu, rmax[i], 2));
            const float mnew = fmaxf(mrow[i], rmax[i]);
            mu[i] = mnew == -INFINITY ? 0.0f : mnew;
            alpha[i] = exp2f(mrow[i] - mu[i]);
            mrow[i] = mnew;
            lrow[i] *= alpha[i];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float pe = exp2f(s[nt][e] - mu[e >> 1]);
                lrow[e >> 1] += pe;
                s[nt][e] = pe;
            }
        }
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
        /* O += P V: P's accumulator layout is the A fragment layout of the next product */
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t pa[4];
            pa[0] = pack_h2(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_h2(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_h2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_h2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; dp++) {
                uint32_t b[4];
                ldsm_x4_t(b, sV + (kk * 16 + lane % 16) * DP + dp * 16 + (lane / 16) * 8);
                mma16816(o[2 * dp], pa, b[0], b[1]);
                mma16816(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();
    }

    cp_async_wait<0>();

    /* epilogue: rows g and g + 8 of this warp */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
        const int r = warp * 16 + g + 8 * i;
        if (r >= nq) continue;
        const int64_t iq1 = q0 + r;
        const float M = mrow[i], mu = M == -INFINITY ? 0.0f : M;
        float L = lrow[i], f = 1.0f;
        if (p.n_chunks == 1) {
            if (p.sinks) {
                const float sk = p.sinks[h] * LOG2E;
                const float ref = M == -INFINITY ? sk : fmaxf(mu, sk);
                f = exp2f(mu - ref);
                L = fmaf(L, f, exp2f(sk - ref));
            }
            const float inv = L > 0.0f ? f / L : 0.0f;
            float *out = (float *)(p.dst + h * p.sd.nb[1] + iq1 * p.sd.nb[2] + iq3 * p.sd.nb[3]);
#pragma unroll
            for (int dt = 0; dt < DT; dt++)
                *(float2 *)(out + dt * 8 + tq * 2) = make_float2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
        } else {
            const int64_t slot = row_id(p, h, iq1, iq3) * p.n_chunks + chunk;
            float *out = p.part_o + slot * D;
#pragma unroll
            for (int dt = 0; dt < DT; dt++) *(float2 *)(out + dt * 8 + tq * 2) = make_float2(o[dt][2 * i], o[dt][2 * i + 1]);
            if (tq == 0) {
                p.part_ml[2 * slot] = M;
                p.part_ml[2 * slot + 1] = L;
            }
        }
    }
}

/* ------------------------------------------------------------------ decode kernel */

constexpr int DEC_KEYS = 32;     /* keys per tile */
constexpr int DEC_MAX_ROWS = 8;  /* query rows per block */
#ifndef GGC_FA_DEC_SLOTS
#define GGC_FA_DEC_SLOTS 8192 /* arrival counters: row tiles x KV heads x sequences of one launch */
#endif

/* Arrival counters of the fused combine, one per block row (row tile, KV head, sequence). Each chunk
 * block adds one after writing its partial; the block that brings the count to n_chunks merges the
 * chunks and sets the count back to 0, so every launch finds them at 0. Launches of one program run
 * in stream order (the next kernel's griddepcontrol.wait sees this grid finished). */
__device__ unsigned int g_fa_dec_arrived[GGC_FA_DEC_SLOTS];

/* query rows of a decode block for a group of g rows: 1, 2, 4 or 8 (more rows: several row tiles) */
int dec_rows_for(int64_t g) { return g <= 1 ? 1 : g <= 2 ? 2 : g <= 4 ? 4 : DEC_MAX_ROWS; }

/* How k_fa_dec's 128 threads split a 32-key tile. Scores: TP threads per (row, key), each a strided
 * share of D, NRS row sets (a thread scores RPT rows of its key). P.V: a thread owns a column pair
 * of RPV rows (RGN row groups over the block). */
template <int D, int NR>
struct dec_shape {
    static constexpr int T = 128, C = DEC_KEYS;
    static constexpr int TP = T / (C * NR) > 1 ? T / (C * NR) : 1;
    static constexpr int NRS = T / (TP * C), RPT = NR > NRS ? NR / NRS : 1;
    /* K row pitch (halves): the 8 threads of one 16-byte shared-memory phase (TP threads of a key,
     * 8 / TP keys) hit distinct banks */
    static constexpr int KP = D + 8 * TP;
    static constexpr int CP = D / 2, RGN = T / CP, RPV = (NR + RGN - 1) / RGN;
    static_assert(D % 64 == 0 && D <= 256 && NRS * RPT == NR, "decode tile split");
};

/* Decode attention (f16 K and V, 16-byte aligned rows; D in {64, 128, 256}): a block serves up to NR
 * query rows of one KV head (its GQA group) over a chunk of keys, 32-key tiles. Each tile's K and V
 * go to shared memory with cp.async at once (one memory round trip a tile; blocks per SM overlap
 * them), then scores, the online softmax and P.V run from shared memory. With a split (n_chunks > 1)
 * the blocks write partials and the last of a block row to arrive merges them (p.fused), or
 * k_fa_combine does (too many block rows for the counters). */
template <int D, int NR>
__global__ void __launch_bounds__(128) k_fa_dec(const fa_args p) {
    GGC_PDL_BEGIN();
    using S = dec_shape<D, NR>;
    constexpr int C = S::C, TP = S::TP, NRS = S::NRS, RPT = S::RPT, KP = S::KP, CP = S::CP, RGN = S::RGN,
                  RPV = S::RPV, CH = D / 8;
    __shared__ __align__(16) __half sK[C * KP];
    __shared__ __align__(16) __half sV[C * D];
    __shared__ __align__(16) float sQ[NR][D];
    __shared__ float sP[NR][C]; /* scores, then probabilities */
    __shared__ float s_alpha[NR], s_m[NR], s_l[NR], s_slope[NR];
    __shared__ const char *s_mrow[NR];
    __shared__ int s_last;
    float *sW = (float *)sK; /* the combine's chunk weights [NR][n_chunks], once K is dead */
    static_assert(sizeof(sK) >= sizeof(float) * NR * FA_MAX_CHUNKS, "combine weights fit over K");

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int chunk = blockIdx.x;
    const int64_t ik2 = blockIdx.z % p.H_kv, iq3 = blockIdx.z / p.H_kv;
    const int64_t ik3 = iq3 / p.rk3, iv3 = iq3 / p.rv3;
    const int64_t rr0 = (int64_t)blockIdx.y * NR;
    const int nb = (int)min((int64_t)NR, p.G * p.n_q - rr0); /* rows of the block */
    auto head = [&](int r) { return ik2 * p.G + (rr0 + r) % p.G; };
    auto query = [&](int r) { return (rr0 + r) / p.G; };

    for (int idx = tid; idx < NR * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        sQ[r][d] = r < nb ? *(const float *)(p.q + d * p.sq.nb[0] + query(r) * p.sq.nb[1] + head(r) * p.sq.nb[2] +
                                             iq3 * p.sq.nb[3]) * p.qscale
                          : 0.0f;
    }
    if (tid < NR) {
        const int r = tid;
        s_slope[r] = r < nb ? slope_log2(p, (uint32_t)head(r)) : 0.0f;
        s_mrow[r] = p.mask && r < nb ? p.mask + query(r) * p.sm.nb[1] + (head(r) % p.sm.ne[2]) * p.sm.nb[2] +
                                           (iq3 % p.sm.ne[3]) * p.sm.nb[3]
                                     : nullptr;
    }

    /* score threads: share sq of key sc, rows sr + i * NRS; P.V threads: column pair pc, rows pr + i * RGN */
    const int sq_ = tid % TP, sc = (tid / TP) % C, sr = tid / (TP * C);
    const int pc = tid % CP, pr = tid / CP;
    float m_w[2] = {-INFINITY, -INFINITY}, l_w[2] = {0.0f, 0.0f}; /* rows warp, warp + 4 */
    float acc[RPV][2];
#pragma unroll
    for (int i = 0; i < RPV; i++) acc[i][0] = acc[i][1] = 0.0f;

    const int64_t kbeg = (int64_t)chunk * p.chunk_len, kend = min(kbeg + p.chunk_len, p.n_kv);
    const char *kbase = p.k + ik2 * p.sk.nb[2] + ik3 * p.sk.nb[3];
    const char *vbase = p.v + ik2 * p.sv.nb[2] + iv3 * p.sv.nb[3];
    __syncthreads();

    for (int64_t t0 = kbeg; t0 < kend; t0 += C) {
#pragma unroll
        for (int idx = tid; idx < C * CH; idx += 128) {
            const int key = idx / CH, ch = idx % CH;
            const bool valid = t0 + key < kend;
            const int64_t j = valid ? t0 + key : t0;
            cp_async16(sK + key * KP + ch * 8, (const uint4 *)(kbase + j * p.sk.nb[1]) + ch, valid);
            cp_async16(sV + key * D + ch * 8, (const uint4 *)(vbase + j * p.sv.nb[1]) + ch, valid);
        }
        cp_async_commit();
        float mk[RPT]; /* the mask term of this thread's scores (-inf: masked, absent key or row) */
#pragma unroll
        for (int i = 0; i < RPT; i++) {
            const int r = sr + i * NRS;
            const int64_t j = t0 + sc;
            mk[i] = -INFINITY;
            if (r < nb && j < kend) mk[i] = s_mrow[r] ? s_slope[r] * ggc_h2f(((const uint16_t *)s_mrow[r])[j]) : 0.0f;
        }
        cp_async_wait<0>();
        __syncthreads();

        float dot[RPT];
#pragma unroll
        for (int i = 0; i < RPT; i++) dot[i] = 0.0f;
#pragma unroll
        for (int u = 0; u < CH / TP; u++) {
            const int ch = sq_ + u * TP;
            float kf[8];
            h8_to_f(*(const uint4 *)(sK + sc * KP + ch * 8), kf);
#pragma unroll
            for (int i = 0; i < RPT; i++) {
                const float4 qa = *(const float4 *)&sQ[sr + i * NRS][ch * 8], qb = *(const float4 *)&sQ[sr + i * NRS][ch * 8 + 4];
                float t = dot[i];
                t = fmaf(qa.x, kf[0], t);
                t = fmaf(qa.y, kf[1], t);
                t = fmaf(qa.z, kf[2], t);
                t = fmaf(qa.w, kf[3], t);
                t = fmaf(qb.x, kf[4], t);
                t = fmaf(qb.y, kf[5], t);
                t = fmaf(qb.z, kf[6], t);
                t = fmaf(qb.w, kf[7], t);
                dot[i] = t;
            }
        }
#pragma unroll
        for (int i = 0; i < RPT; i++) {
#pragma unroll
            for (int o = TP / 2; o > 0; o >>= 1) dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], o);
            float x = dot[i];
            if (p.cap != 0.0f) x = p.cap * tanhf(x);
            if (sq_ == 0) sP[sr + i * NRS][sc] = mk[i] + x; /* -inf stays -inf */
        }
        __syncthreads();

        /* online softmax, a warp per row; l is kept per lane and summed at the end */
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = warp + 4 * i;
            if (r < NR) {
                const float s = sP[r][lane];
                const float mnew = fmaxf(m_w[i], ggc_warp_max(s));
                const float mu = mnew == -INFINITY ? 0.0f : mnew;
                const float alpha = exp2f(m_w[i] - mu), pj = exp2f(s - mu);
                m_w[i] = mnew;
                l_w[i] = fmaf(l_w[i], alpha, pj);
                sP[r][lane] = pj;
                if (lane == 0) s_alpha[r] = alpha;
            }
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < RPV; i++) {
            const int r = pr + i * RGN;
            if (r < NR) {
                const float a = s_alpha[r];
                acc[i][0] *= a;
                acc[i][1] *= a;
            }
        }
#pragma unroll 8
        for (int key = 0; key < C; key++) {
            const float2 v = __half22float2(*(const __half2 *)(sV + key * D + 2 * pc));
#pragma unroll
            for (int i = 0; i < RPV; i++) {
                const int r = pr + i * RGN;
                if (r < NR) {
                    const float w = sP[r][key];
                    acc[i][0] = fmaf(w, v.x, acc[i][0]);
                    acc[i][1] = fmaf(w, v.y, acc[i][1]);
                }
            }
        }
        __syncthreads(); /* the next tile's loads overwrite sK, sV and sP */
    }

#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp + 4 * i;
        const float l = ggc_warp_sum(l_w[i]);
        if (r < NR && lane == 0) {
            s_m[r] = m_w[i];
            s_l[r] = l;
        }
    }
    __syncthreads();

    auto out_row = [&](int r) {
        return (float *)(p.dst + head(r) * p.sd.nb[1] + query(r) * p.sd.nb[2] + iq3 * p.sd.nb[3]);
    };
    /* the output pair (2 pc, 2 pc + 1) of row r; with p.qout also its q8a form (the row is head h of the
     * one output row: elements h * D ..; 16 lanes a 32-element block) */
    auto store_out = [&](int r, float o0, float o1) {
        *(float2 *)(out_row(r) + 2 * pc) = make_float2(o0, o1);
        if (p.qout) {
            const int64_t e = head(r) * D + 2 * pc;
            ggc_q8a_quant_pairs16(o0, o1, lane, p.qout + (e & ~(int64_t)31), p.qmeta + e / 32);
        }
    };
    /* 1 / L with the sink's share of the row (h: the row's head, M its max, L its sum) */
    auto norm = [&](int r, float M, float L) {
        float f = 1.0f;
        if (p.sinks) {
            const float mu = M == -INFINITY ? 0.0f : M, sk = p.sinks[head(r)] * LOG2E;
            const float ref = M == -INFINITY ? sk : fmaxf(mu, sk);
            f = exp2f(mu - ref);
            L = fmaf(L, f, exp2f(sk - ref));
        }
        return L > 0.0f ? f / L : 0.0f;
    };
    if (p.n_chunks == 1) {
#pragma unroll
        for (int i = 0; i < RPV; i++) {
            const int r = pr + i * RGN;
            if (r < nb) { /* r is the same for a whole warp (CP >= 32): its lanes quantize together */
                const float sc_ = norm(r, s_m[r], s_l[r]);
                store_out(r, acc[i][0] * sc_, acc[i][1] * sc_);
            }
        }
        return;
    }

    auto slot_of = [&](int r) { return row_id(p, head(r), query(r), iq3) * p.n_chunks; }; /* chunk 0's */
#pragma unroll
    for (int i = 0; i < RPV; i++) {
        const int r = pr + i * RGN;
        if (r < nb) *(float2 *)(p.part_o + (slot_of(r) + chunk) * D + 2 * pc) = make_float2(acc[i][0], acc[i][1]);
    }
    if (tid < nb) {
        p.part_ml[2 * (slot_of(tid) + chunk)] = s_m[tid];
        p.part_ml[2 * (slot_of(tid) + chunk) + 1] = s_l[tid];
    }
    if (!p.fused) return;

    __threadfence(); /* this block's partials are visible device-wide before it is counted */
    __syncthreads();
    if (tid == 0) {
        unsigned int *count = &g_fa_dec_arrived[blockIdx.z * gridDim.y + blockIdx.y];
        s_last = atomicAdd(count, 1u) == (unsigned)p.n_chunks - 1;
        if (s_last) *count = 0; /* every block of the row has arrived: ready for the next launch */
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();

    /* the last block: chunk weights exp2(m_c - M) per row (a warp per row), then the weighted sums;
     * partials of other blocks are read through L2 (__ldcg) */
    const int nc = p.n_chunks;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp + 4 * i;
        if (r < nb) {
            const float *ml = p.part_ml + 2 * slot_of(r);
            float M = -INFINITY;
            for (int c = lane; c < nc; c += 32) M = fmaxf(M, __ldcg(ml + 2 * c));
            M = ggc_warp_max(M);
            const float mu = M == -INFINITY ? 0.0f : M;
            float L = 0.0f;
            for (int c = lane; c < nc; c += 32) {
                const float w = exp2f(__ldcg(ml + 2 * c) - mu);
                sW[r * nc + c] = w;
                L = fmaf(__ldcg(ml + 2 * c + 1), w, L);
            }
            L = ggc_warp_sum(L);
            if (lane == 0) s_alpha[r] = norm(r, M, L);
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < RPV; i++) {
        const int r = pr + i * RGN;
        if (r < nb) {
            const float *po = p.part_o + slot_of(r) * D + 2 * pc;
            float o0 = 0.0f, o1 = 0.0f;
#pragma unroll 4
            for (int c = 0; c < nc; c++) {
                const float2 v = __ldcg((const float2 *)(po + (int64_t)c * D));
                const float w = sW[r * nc + c];
                o0 = fmaf(v.x, w, o0);
                o1 = fmaf(v.y, w, o1);
            }
            store_out(r, o0 * s_alpha[r], o1 * s_alpha[r]);
        }
    }
}

/* ------------------------------------------------------------------ host side */

bool aligned16(const ggc_tensor *t) {
    uintptr_t a = (uintptr_t)t->data;
    for (int i = 1; i < 4; i++) a |= (uintptr_t)t->nb[i];
    return a % 16 == 0;
}

bool kv_type_ok(ggc_type t) {
    return t == GGC_TYPE_F16 || t == GGC_TYPE_F32 || t == GGC_TYPE_BF16 || t == GGC_TYPE_Q8_0;
}

enum fa_kernel { FA_MMA, FA_VEC, FA_DEC };

struct fa_plan {
    fa_kernel kind;
    int64_t rows;        /* dst rows: n_q * H * B */
    int64_t rows_per_block;
    int64_t base_blocks; /* blocks without a split */
    int64_t gran;        /* keys per chunk are a multiple of this */
    int64_t target;      /* blocks wanted per SM when splitting */
    int64_t split_below; /* split only while the grid has fewer blocks than this, per SM */
    int max_chunks;      /* most chunks the node may split into (sizes the work memory) */
};

/* The kernel and the split of a node, from its shapes only (not its data pointers): the work size
 * and the run agree. n_sm: SMs of the device. */
fa_plan plan_of(const ggc_node *n, int n_sm = FA_ASSUMED_SM) {
    const ggc_tensor *q = &n->src[0], *k = &n->src[1];
    const int64_t D = k->ne[0], n_q = q->ne[1], H = q->ne[2], B = q->ne[3], H_kv = k->ne[2];
    const int64_t G = H_kv > 0 ? H / H_kv : 1;
    fa_plan pl;
    /* decode of f16 K/V: k_fa_dec (K and V tiles by cp.async); q8_0 K/V decode keeps the vector
     * kernel */
    const bool f16kv = k->type == GGC_TYPE_F16 && n->src[2].type == GGC_TYPE_F16;
    pl.kind = n_q >= MMA_MIN_NQ && (D == 64 || D == 128) ? FA_MMA : n_q == 1 && D != 96 && f16kv ? FA_DEC : FA_VEC;
    pl.rows = n_q * H * B;
    switch (pl.kind) {
    case FA_MMA: /* heavy blocks: split only while under one per SM, then to 2 per SM */
        pl.base_blocks = ggc_cdiv(n_q, MMA_BQ) * H * B;
        pl.gran = FA_CHUNK;
        pl.target = 2;
        pl.split_below = 1;
        break;
    case FA_DEC: /* a GQA group per block: chunks down to one 32-key tile per block */
        pl.base_blocks = ggc_cdiv(G * n_q, dec_rows_for(G * n_q)) * H_kv * B;
        pl.gran = DEC_KEYS;
        pl.target = GGC_FA_DEC_TARGET;
        pl.split_below = pl.target;
        break;
    default:
        pl.base_blocks = ggc_cdiv(G * n_q, VEC_ROWS) * H_kv * B;
        pl.gran = FA_CHUNK;
        pl.target = 4;
        pl.split_below = 4;
    }
    int64_t mc = pl.base_blocks >= pl.split_below * n_sm ? 1 : ggc_cdiv(pl.target * n_sm, pl.base_blocks);
    const int64_t by_len = ggc_cdiv(k->ne[1], pl.gran);
    if (mc > by_len) mc = by_len;
    if (mc > FA_MAX_CHUNKS) mc = FA_MAX_CHUNKS;
    pl.max_chunks = (int)(mc < 1 ? 1 : mc);
    return pl;
}

/* work bytes kept first for the q8a form of a one-row output (ctx quant_out); the partials follow */
size_t qout_bytes(const ggc_node *n) {
    const ggc_tensor *q = &n->src[0];
    if (q->ne[1] * q->ne[3] != 1) return 0;
    const size_t k = (size_t)n->src[2].ne[0] * (size_t)q->ne[2];
    return (k + k / 32 * sizeof(ggc_q8a_meta) + 255) / 256 * 256;
}

/* the q8a form of the one output row when the kernel did not write it: a warp a 32-element block */
__global__ void __launch_bounds__(256) k_fa_quant_out(const float *x, int64_t nblocks, int8_t *q, ggc_q8a_meta *meta) {
    GGC_PDL_BEGIN();
    const int64_t b = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    if (b < nblocks) ggc_q8a_quant_warp<GGC_ACTQ_Q8_0>(x[b * 32 + threadIdx.x % 32], threadIdx.x % 32, q + b * 32, meta + b);
}

size_t part_bytes_per_chunk(const ggc_node *n, const fa_plan &pl) {
    return (size_t)pl.rows * ((size_t)n->src[2].ne[0] + 2) * sizeof(float);
}

template <int D>
void launch_mma(const fa_args &p, dim3 grid, cudaStream_t s, bool kvec, bool vvec) {
    constexpr size_t smem = mma_smem_bytes<D>();
    static bool configured = false; /* the opt-in above 48 KiB, once per process (per device) */
    if (!configured) {
        GGC_CUDA_CHECK(cudaFuncSetAttribute(k_fa_mma<D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        GGC_CUDA_CHECK(cudaFuncSetAttribute(k_fa_mma<D, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured = true;
    }
    if (kvec && vvec && p.tk == GGC_TYPE_F16 && p.tv == GGC_TYPE_F16) ggc_launch(k_fa_mma<D, true>, grid, 128, smem, s, p, kvec, vvec);
    else ggc_launch(k_fa_mma<D, false>, grid, 128, smem, s, p, kvec, vvec);
}

template <int D>
void launch_vec(const fa_args &p, dim3 grid, cudaStream_t s, bool kvec, bool vvec) {
    constexpr int R = VEC_ROWS;
    /* a GQA group of <= 4 rows (q8_0 decode): 4 rows per warp, far fewer registers */
    constexpr bool R4 = D == 64 || D == 128;
    if constexpr (D == 96) { /* a rare head size: the generic kernel only */
        (void)kvec, (void)vvec;
        ggc_launch(k_fa_vec<D, -1, -1, R>, grid, 128, 0, s, p);
    } else {
        if (p.tk == GGC_TYPE_F16 && p.tv == GGC_TYPE_F16 && kvec && vvec)
            ggc_launch(k_fa_vec<D, GGC_TYPE_F16, GGC_TYPE_F16, R>, grid, 128, 0, s, p);
        else if (p.tk == GGC_TYPE_Q8_0 && p.tv == GGC_TYPE_Q8_0 && R4 && p.G * p.n_q <= 4)
            ggc_launch(k_fa_vec<D, GGC_TYPE_Q8_0, GGC_TYPE_Q8_0, R4 ? 4 : R>, grid, 128, 0, s, p);
        else if (p.tk == GGC_TYPE_Q8_0 && p.tv == GGC_TYPE_Q8_0)
            ggc_launch(k_fa_vec<D, GGC_TYPE_Q8_0, GGC_TYPE_Q8_0, R>, grid, 128, 0, s, p);
        else
            ggc_launch(k_fa_vec<D, -1, -1, R>, grid, 128, 0, s, p);
    }
}

template <int D>
void launch_dec(const fa_args &p, dim3 grid, int nr, cudaStream_t s) {
    switch (nr) {
    case 1: ggc_launch(k_fa_dec<D, 1>, grid, 128, 0, s, p); break;
    case 2: ggc_launch(k_fa_dec<D, 2>, grid, 128, 0, s, p); break;
    case 4: ggc_launch(k_fa_dec<D, 4>, grid, 128, 0, s, p); break;
    default: ggc_launch(k_fa_dec<D, DEC_MAX_ROWS>, grid, 128, 0, s, p);
    }
}

} // namespace

extern "C" {

size_t ggc_cuda_work_flash_attn_ext(const ggc_node *n) {
    const fa_plan pl = plan_of(n);
    return qout_bytes(n) + (pl.max_chunks > 1 ? part_bytes_per_chunk(n, pl) * (size_t)pl.max_chunks : 0);
}

void ggc_cuda_op_flash_attn_ext(const ggc_node *n, const ggc_cuda_ctx *c) {
    const ggc_tensor *q = &n->src[0], *k = &n->src[1], *v = &n->src[2], *d = &n->dst;
    const ggc_tensor *mask = n->src[3].data ? &n->src[3] : nullptr, *sinks = n->src[4].data ? &n->src[4] : nullptr;
    const int64_t D = k->ne[0];
    if (q->type != GGC_TYPE_F32 || d->type != GGC_TYPE_F32) GGC_FA_UNSUPPORTED("q and dst must be f32");
    if (!kv_type_ok(k->type) || !kv_type_ok(v->type)) GGC_FA_UNSUPPORTED("K/V types %d, %d", k->type, v->type);
    if (v->ne[0] != D || q->ne[0] != D) GGC_FA_UNSUPPORTED("DK %lld != DV %lld", (long long)D, (long long)v->ne[0]);
    if (D != 64 && D != 96 && D != 128 && D != 256) GGC_FA_UNSUPPORTED("head size %lld", (long long)D);
    if (mask && mask->type != GGC_TYPE_F16) GGC_FA_UNSUPPORTED("mask type %d (f16 only)", mask->type);
    if (k->ne[2] != v->ne[2] || q->ne[2] % k->ne[2] != 0 || q->ne[3] % k->ne[3] != 0 || q->ne[3] % v->ne[3] != 0)
        GGC_FA_UNSUPPORTED("head / sequence broadcast");

    fa_args p;
    p.q = (const char *)q->data;
    p.k = (const char *)k->data;
    p.v = (const char *)v->data;
    p.mask = mask ? (const char *)mask->data : nullptr;
    p.sinks = sinks ? (const float *)sinks->data : nullptr;
    p.dst = (char *)d->data;
    p.sq = ggc_cuda_shape_of(q);
    p.sk = ggc_cuda_shape_of(k);
    p.sv = ggc_cuda_shape_of(v);
    p.sm = mask ? ggc_cuda_shape_of(mask) : p.sq;
    p.sd = ggc_cuda_shape_of(d);
    p.tk = k->type;
    p.tv = v->type;
    p.n_q = q->ne[1];
    p.H = q->ne[2];
    p.H_kv = k->ne[2];
    p.G = p.H / p.H_kv;
    p.B = q->ne[3];
    p.rk3 = q->ne[3] / k->ne[3];
    p.rv3 = q->ne[3] / v->ne[3];
    p.n_kv = c->n_kv > 0 && c->n_kv <= k->ne[1] ? c->n_kv : k->ne[1];
    const float scale = ggc_cuda_param_f32(n, 0), max_bias = ggc_cuda_param_f32(n, 1), softcap = ggc_cuda_param_f32(n, 2);
    p.qscale = softcap != 0.0f ? scale / softcap : scale * LOG2E;
    p.cap = softcap != 0.0f ? softcap * LOG2E : 0.0f;
    p.max_bias = max_bias;
    const uint32_t n_head = (uint32_t)p.H;
    p.n_head_log2 = 1u << (uint32_t)floor(log2((double)n_head));
    p.m0 = powf(2.0f, -(max_bias) / (float)p.n_head_log2);
    p.m1 = powf(2.0f, -(max_bias / 2.0f) / (float)p.n_head_log2);
    if (p.n_q <= 0 || p.H <= 0 || p.B <= 0) return;

    /* the split for this run: no more chunks than the plan (the work size), the work memory at
     * hand, the keys (one chunk per FA_CHUNK keys) and the SMs allow */
    const int n_sm = c->n_sm > 0 ? c->n_sm : FA_ASSUMED_SM;
    const fa_plan pl = plan_of(n), now = plan_of(n, n_sm);
    int64_t chunks = now.base_blocks >= now.split_below * n_sm ? 1 : ggc_cdiv(now.target * n_sm, now.base_blocks);
    if (chunks > pl.max_chunks) chunks = pl.max_chunks; /* what the work size allows for */
    if (chunks > ggc_cdiv(p.n_kv, pl.gran)) chunks = ggc_cdiv(p.n_kv, pl.gran);
    const size_t per_chunk = part_bytes_per_chunk(n, pl), qoff = qout_bytes(n);
    const int64_t fit = c->work && c->work_size > qoff ? (int64_t)((c->work_size - qoff) / per_chunk) : 0;
    if (chunks > fit) chunks = fit;
    if (chunks < 1) chunks = 1;
    p.chunk_len = ggc_cdiv(ggc_cdiv(p.n_kv, chunks), pl.gran) * pl.gran;
    p.n_chunks = (int)ggc_cdiv(p.n_kv, p.chunk_len);
    if (p.n_chunks < 1) p.n_chunks = 1;
    p.part_o = p.n_chunks > 1 ? (float *)((char *)c->work + qoff) : nullptr;
    p.qout = nullptr;
    p.qmeta = nullptr;
    const int64_t qk = D * p.H; /* the one output row's elements */
    if (c->quant_out) {
        if (!qoff || !c->work || c->work_size < qoff || qk % 32 != 0 || d->nb[1] != (size_t)D * 4 ||
            d->nb[2] != (size_t)qk * 4)
            GGC_FA_UNSUPPORTED("quant_out: one contiguous f32 output row of whole 32-element blocks");
        p.qout = (int8_t *)c->work;
        p.qmeta = (ggc_q8a_meta *)((char *)c->work + qk);
    }
    p.part_ml = p.n_chunks > 1 ? p.part_o + (size_t)pl.rows * p.n_chunks * D : nullptr;

    const bool kvec = aligned16(k), vvec = aligned16(v);
    cudaStream_t s = c->stream;
    p.fused = 0;
    if (pl.kind == FA_MMA) {
        const dim3 grid((unsigned)ggc_cdiv(p.n_q, MMA_BQ), (unsigned)p.n_chunks, (unsigned)(p.H * p.B));
        if (D == 64) launch_mma<64>(p, grid, s, kvec, vvec);
        else launch_mma<128>(p, grid, s, kvec, vvec);
    } else if (pl.kind == FA_DEC && kvec && vvec) {
        const int nr = dec_rows_for(p.G * p.n_q);
        const int64_t row_tiles = ggc_cdiv(p.G * p.n_q, nr);
        if (row_tiles > 65535 || p.H_kv * p.B > 65535) GGC_FA_UNSUPPORTED("grid too large");
        p.fused = p.n_chunks > 1 && row_tiles * p.H_kv * p.B <= GGC_FA_DEC_SLOTS;
        const dim3 grid((unsigned)p.n_chunks, (unsigned)row_tiles, (unsigned)(p.H_kv * p.B));
        if (D == 64) launch_dec<64>(p, grid, nr, s);
        else if (D == 128) launch_dec<128>(p, grid, nr, s);
        else launch_dec<256>(p, grid, nr, s);
    } else { /* the vector kernel (also decode of unaligned f16 views, with the decode split) */
        const int64_t row_tiles = ggc_cdiv(p.G * p.n_q, VEC_ROWS);
        if (row_tiles > 65535 || p.H_kv * p.B > 65535) GGC_FA_UNSUPPORTED("grid too large");
        const dim3 grid((unsigned)p.n_chunks, (unsigned)row_tiles, (unsigned)(p.H_kv * p.B));
        switch (D) {
        case 64: launch_vec<64>(p, grid, s, kvec, vvec); break;
        case 96: launch_vec<96>(p, grid, s, kvec, vvec); break;
        case 128: launch_vec<128>(p, grid, s, kvec, vvec); break;
        default: launch_vec<256>(p, grid, s, kvec, vvec); break;
        }
    }
    const bool quantized = pl.kind == FA_DEC && kvec && vvec; /* k_fa_dec wrote p.qout itself; the others
                                                                   leave it to k_fa_quant_out below */
    if (p.n_chunks > 1 && !p.fused)
        ggc_launch(k_fa_combine, dim3((unsigned)pl.rows, (unsigned)(D / 32), 1), 32 * (p.n_chunks < 8 ? p.n_chunks : 8), (size_t)p.n_chunks * sizeof(float), s, p, (int)D);
    if (c->quant_out && !quantized)
        ggc_launch(k_fa_quant_out, (unsigned)ggc_cdiv(qk / 32, 8), 256, 0, s, (const float *)d->data, qk / 32,
                   (int8_t *)c->work, (ggc_q8a_meta *)((char *)c->work + qk));
}

} // extern "C"
