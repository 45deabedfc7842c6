/* ggc CUDA: matrix products of q4_0 weights on the tensor cores (prefill).
 *
 * The f16 tensor-core kernel (ggc_k_mmq) dequantizes each weight tile through registers into shared
 * memory and reads it back by ldmatrix: per element a nibble extraction, an int-to-float
 * conversion, a multiply and a float-to-half conversion, a shared store, and a one-tile-ahead
 * register prefetch whose global loads the short tile cannot hide. Here the q4_0 quant bytes
 * themselves go to shared memory by cp.async, as many stages ahead as src1, and each warp builds
 * its mma.sync m16n8k16 weight fragments straight from them: one 4-byte word a lane holds the 8
 * nibbles of its fragments for both 16-element steps of a block, and each f16 pair is one
 * LOP3 ((nibble | 0x6400) = 1024 + q), one HSUB2 (- 1032: q - 8, exact) and one HMUL2 (by the
 * block's d: one rounding of d * (q - 8), the value ggc_k_mmq stores). The pairs come out in the
 * order the bytes hold them, so src1 is written in that order too (ggc_mmq4_pos, by the
 * conversion kernel); the sums are of the same terms.
 *
 * Tiles: BM = 32 * MT src1 rows x BN = 128 weight rows x BK = 64 (two blocks); 8 warps as 2 x 4,
 * each 16 * MT rows x 32 columns; S stages of both operands. q4_0 regrouped (GGC_TYPE_Q4_0R8:
 * aligned 16-byte quants) is all asynchronous; GGUF-layout q4_0 (2-byte aligned blocks) goes
 * through registers into the same layout. Included by ggc_cuda_matmul.cu.
 */
#pragma once

#include "ggc_cuda_quants.cuh"

#define GGC_MMQ4_BK 64
#define GGC_MMQ4_LDA 72 /* halves per shared src1 row: rows 36 words apart, conflict-free ldmatrix */
#define GGC_MMQ4_LDB 48 /* bytes per shared weight row: 2 x 16 quant bytes, rows 12 words apart */
#define GGC_MMQ4_STAGES 4

/* one stage: src1 [BM][LDA] halves, weight quants [BN][LDB] bytes, weight scales [BN][2] halves */
static __host__ __device__ constexpr size_t ggc_mmq4_stage_bytes(int mt) {
    return (size_t)32 * mt * GGC_MMQ4_LDA * 2 + (size_t)GGC_MMQ_BN * (GGC_MMQ4_LDB + 4);
}
static __host__ __device__ constexpr size_t ggc_mmq4_smem_bytes(int mt) { return GGC_MMQ4_STAGES * ggc_mmq4_stage_bytes(mt); }

/* the nibbles at bits 0 and 16 of x as f16 d * (q - 8) */
static __device__ __forceinline__ uint32_t ggc_q4_pair(uint32_t x, __half2 d2) {
    const uint32_t h = (x & 0x000F000Fu) | 0x64006400u; /* 1024 + q, both halves */
    const __half2 v = __hmul2(__hsub2(*(const __half2 *)&h, __half2half2(__ushort_as_half(0x6408))), d2);
    return *(const uint32_t *)&v;
}

template <ggc_type T, int MT>
static __global__ void __launch_bounds__(GGC_MMQ_THREADS, 2) ggc_k_mmq4(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    static_assert(T == GGC_TYPE_Q4_0 || T == GGC_TYPE_Q4_0R8, "ggc_k_mmq4: q4_0 weights");
    constexpr int BM = 32 * MT, BN = GGC_MMQ_BN, BK = GGC_MMQ4_BK, LDA = GGC_MMQ4_LDA, LDB = GGC_MMQ4_LDB;
    constexpr int S = GGC_MMQ4_STAGES, STAGE = (int)ggc_mmq4_stage_bytes(MT);
    extern __shared__ __align__(16) uint8_t ggc_mmq4_smem[];
    __shared__ int64_t s_arow[BM], s_doff[BM];
    auto sa = [&](int st) { return (uint16_t *)(ggc_mmq4_smem + st * STAGE); };
    auto sq = [&](int st) { return ggc_mmq4_smem + st * STAGE + BM * LDA * 2; };
    auto sd = [&](int st) { return (uint16_t *)(ggc_mmq4_smem + st * STAGE + BM * LDA * 2 + BN * LDB); };

    const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
    const int wm = warp / 4, wn = warp % 4;
    const int64_t n0 = (int64_t)blockIdx.x * BN;
    const int64_t nzb = a.tiles ? 1 : a.ne12 * a.ne13, zb = blockIdx.z % nzb, sk = blockIdx.z / nzb;
    const uint8_t *wmat = ggc_mmq_tile_rows<BM>(a, zb, s_arow, s_doff);
    if (!wmat) return;
    __syncthreads();

    const int64_t K = a.K, nsb = K / 32, nk_all = (K + BK - 1) / BK;
    const int64_t kt0 = nk_all * sk / a.split, kt1 = nk_all * (sk + 1) / a.split;
    const uint16_t *act = (const uint16_t *)a.act;

    /* stage st <- k tile kt: src1 rows by 16-byte chunks (zeros past the rows or past K); each
     * thread one (weight row, block): quants and scale, scale 0 past N or K (so the product adds
     * nothing whatever the quant bytes there) */
    auto load = [&](int64_t kt, int st) {
        uint16_t *A = sa(st);
        for (int v = tid; v < BM * (BK / 8); v += GGC_MMQ_THREADS) {
            const int m = v / (BK / 8), c = v % (BK / 8);
            const int64_t r = s_arow[m], k = kt * BK + 8 * c;
            if (r >= 0 && k < K)
                ggc_cp_async16(A + m * LDA + 8 * c, act + r * a.act_stride + k);
            else
                *(uint4 *)(A + m * LDA + 8 * c) = make_uint4(0, 0, 0, 0);
        }
        static_assert(BN * 2 == GGC_MMQ_THREADS, "one (row, block) a thread");
        const int n = tid / 2, j = tid % 2;
        const int64_t sb = kt * 2 + j;
        uint8_t *q = sq(st) + n * LDB + 16 * j;
        uint16_t *d = sd(st) + 2 * n + j;
        if (n0 + n >= a.N || sb >= nsb) {
            *d = 0;
            return;
        }
        const uint8_t *row = wmat + (n0 + n) * a.nb01;
        if constexpr (T == GGC_TYPE_Q4_0R8) {
            const uint8_t *g = ggc_r8_group(row, sb);
            const int e = (int)(sb & 7);
            ggc_cp_async16(q, g + 16 + 16 * e);
            if (j == 0) ggc_cp_async4(d, g + 2 * e); /* both scales of the pair: K is a multiple of 256 */
        } else {
            const uint8_t *b = row + sb * sizeof(ggc_blk_q4_0);
            uint32_t w[4];
#pragma unroll
            for (int k = 0; k < 4; k++) w[k] = ggc_ld_u32_a2(b + 2 + 4 * k);
            *(uint4 *)q = make_uint4(w[0], w[1], w[2], w[3]);
            *d = (uint16_t)ggc_ld_u16(b);
        }
    };

    float acc[MT][4][4] = {};

#pragma unroll
    for (int st = 0; st < S - 1; st++) {
        if (kt0 + st < kt1) load(kt0 + st, st);
        ggc_cp_async_commit();
    }
    ggc_cp_async_wait<S - 2>();
    __syncthreads();

    for (int64_t kt = kt0; kt < kt1; kt++) {
        const int i = (int)(kt - kt0), cur = i % S;
        if (kt + S - 1 < kt1) load(kt + S - 1, (i + S - 1) % S); /* into the stage read last iteration */
        ggc_cp_async_commit();
        const uint16_t *A = sa(cur);
        const uint8_t *Q = sq(cur);
        const uint16_t *D = sd(cur);
#pragma unroll
        for (int j = 0; j < 2; j++) {
            /* this lane's fragments of its 4 column tiles: [nt][step 0 b0, b1, step 1 b0, b1] */
            uint32_t bq[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const int n = wn * 32 + nt * 8 + (lane >> 2);
                const uint32_t w = *(const uint32_t *)(Q + n * LDB + 16 * j + 4 * (lane & 3));
                const __half2 d2 = __half2half2(__ushort_as_half(D[2 * n + j]));
                bq[nt][0] = ggc_q4_pair(w, d2);
                bq[nt][1] = ggc_q4_pair(w >> 8, d2);
                bq[nt][2] = ggc_q4_pair(w >> 4, d2);
                bq[nt][3] = ggc_q4_pair(w >> 12, d2);
            }
#pragma unroll
            for (int s = 0; s < 2; s++)
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    uint32_t af[4];
                    const int m = wm * 16 * MT + mt * 16 + (lane & 15);
                    ggc_ldmatrix_x4(af, A + m * LDA + 32 * j + 16 * s + (lane >> 4) * 8);
#pragma unroll
                    for (int nt = 0; nt < 4; nt++) ggc_mma16816<false>(acc[mt][nt], af, bq[nt][2 * s], bq[nt][2 * s + 1]);
                }
        }
        ggc_cp_async_wait<S - 2>();
        __syncthreads();
    }
    ggc_cp_async_wait<0>();
    ggc_mmq_store_tile<MT>(a, acc, s_arow, s_doff, n0, sk, wm, wn, lane);
}
