/* ggc CUDA: the matrix-vector product of quantized weights and 8-bit activations (decode).
 *
 * Batch-1 decode is bound by reading the weights once, so what matters is how many weight bytes
 * each multiprocessor keeps in flight and how little else sits on the path. One warp owns R rows
 * (R grows with the column count so that more rows share each activation load). Each lane takes
 * 32-element sub-blocks lane, lane + 32, ... of its rows and decodes them straight from global
 * memory (ggc_q8dec, 2- or 4-byte loads as the block format allows): U sub-blocks a row are
 * decoded before any is used, so a warp issues R * U * 32 sub-blocks' loads at once (for a
 * 4096-wide q4_0 row that is the whole row in one go) and no staging through shared memory,
 * barrier or byte-wise copy of unaligned edges stands between DRAM and the integer dots.
 *
 * Activations are the q8a rows of the work buffer (int8 quants, a float4 {d, d*sum(lo16),
 * d*sum(hi16), 0} per 32 elements); they are small and shared by all rows, so they come through
 * the read-only cache. Included by ggc_cuda_matmul.cu (ggc_mm_args, ggc_mmv_column).
 */
#pragma once

#include "ggc_cuda_quants.cuh"

/* sub-blocks decoded per row before use: enough loads in flight, registers still bounded */
template <int R> struct ggc_gemv_unroll {
    static constexpr int U = R == 1 ? 4 : R == 2 ? 2 : 1;
};

template <ggc_type T, int NC>
static __global__ void __launch_bounds__(GGC_MMVQ_WARPS * 32) ggc_k_gemv(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    constexpr int R = ggc_mmv_rows(NC);
    constexpr int U = ggc_gemv_unroll<R>::U;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t row0 = ((int64_t)blockIdx.x * GGC_MMVQ_WARPS + warp) * R, z = blockIdx.y;
    if (row0 >= a.N) return;
    const int nr = (int)min((int64_t)R, a.N - row0);

    const uint8_t *wmat = nullptr;
    int64_t arow[NC], doff[NC];
    bool col[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) col[c] = ggc_mmv_column(a, z, c, wmat, arow[c], doff[c]);
    if (!col[0]) return; /* columns are filled from the first */
    const uint8_t *wr[R]; /* the warp's weight rows */
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = wmat + (row0 + r) * a.nb01;
    const int64_t K = a.K, nsub = K / 32;
    const int8_t *__restrict__ aq = (const int8_t *)a.act;
    const ggc_q8a_meta *__restrict__ am = (const ggc_q8a_meta *)a.act_aux;

    float acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;

    for (int64_t sb0 = lane; sb0 < nsub; sb0 += 32 * U) {
        int q[U][R][8];
        float2 dm[U][R][2];
        /* every load of this step first */
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t sb = sb0 + 32 * u;
#pragma unroll
            for (int r = 0; r < R; r++)
                if (sb < nsub && r < nr) ggc_q8dec_at<T>(wr[r], sb, q[u][r], dm[u][r]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t sb = sb0 + 32 * u;
            if (sb >= nsub) break;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                if (!col[c]) continue;
                const int4 *yp = (const int4 *)(aq + arow[c] * K + sb * 32);
                const int4 y0 = __ldg(yp), y1 = __ldg(yp + 1);
                const float4 m = __ldg((const float4 *)(am + arow[c] * nsub + sb));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr) acc[r][c] += ggc_q8a_dot(q[u][r], y0, y1, m, dm[u][r][0], dm[u][r][1]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float v = ggc_warp_sum(acc[r][c]);
            if (lane == 0 && r < nr && col[c]) ggc_mm_store(a, doff[c] + (row0 + r) * a.nbd0, v);
        }
}

/* One column (batch-1 decode): a block of 4 warps per ROWS weight rows, each thread one 32-element
 * sub-block of each row at a time (tid, tid + 128, ...), so a 4096-wide row is one load a thread and
 * the whole matrix is in flight in one wave of short-lived blocks; the activation sub-block is
 * loaded once for the ROWS rows. ncu on an H100 showed the warp-per-row kernel above latency-bound
 * here (80 registers, 1.3 waves, ~20 cycles between a warp's instructions, 25% of DRAM bandwidth).
 * SWIGLU: the ROWS output rows read gate rows from a.w and up rows from a.w2 (2 ROWS weight rows) and
 * store silu(gate) * up, as ggml's SWIGLU of the two products (silu in f32: x / (1 + e^-x)). */
#define GGC_GEMV1_THREADS 128
template <ggc_type T, int ROWS, bool SWIGLU>
static __global__ void __launch_bounds__(GGC_GEMV1_THREADS) ggc_k_gemv1(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    constexpr int WR = SWIGLU ? 2 * ROWS : ROWS, NW = GGC_GEMV1_THREADS / 32;
    __shared__ float red[WR][NW];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
    int64_t n0 = (int64_t)blockIdx.x * ROWS, N = a.N;
    const int64_t z = blockIdx.y;
    const uint8_t *wmat = nullptr;
    uint8_t *dst = a.dst;
    int64_t arow, doff;
    int cache;
    if (!ggc_mmv_column(a, z, 0, wmat, arow, doff)) return; /* the same for the whole block */
    ggc_mm_segment(a, ROWS, wmat, dst, N, n0, cache);       /* sibling products: this block's one */
    const uint8_t *wr[WR];
    ggc_mm_weight_rows<ROWS, SWIGLU>(a, wmat, n0, N, wr);
    const int nsub = (int)(a.K / 32);
    const int8_t *__restrict__ aq = (const int8_t *)a.act + arow * a.K;
    const ggc_q8a_meta *__restrict__ am = (const ggc_q8a_meta *)a.act_aux + arow * nsub;
    float acc[WR];
#pragma unroll
    for (int r = 0; r < WR; r++) acc[r] = 0.0f;
#pragma unroll 2
    for (int sb = tid; sb < nsub; sb += GGC_GEMV1_THREADS) {
        int q[WR][8];
        float2 dm[WR][2];
#pragma unroll
        for (int r = 0; r < WR; r++) ggc_q8dec_at<T>(wr[r], sb, q[r], dm[r]);
        const int4 *yp = (const int4 *)(aq + (int64_t)sb * 32);
        const int4 y0 = __ldg(yp), y1 = __ldg(yp + 1);
        const float4 m = __ldg((const float4 *)(am + sb));
#pragma unroll
        for (int r = 0; r < WR; r++) acc[r] += ggc_q8a_dot(q[r], y0, y1, m, dm[r][0], dm[r][1]);
    }
#pragma unroll
    for (int r = 0; r < WR; r++) {
        const float v = ggc_warp_sum(acc[r]);
        if (lane == 0) red[r][warp] = v;
    }
    __syncthreads();
    if (tid < ROWS && n0 + tid < N) {
        float v = 0.0f, u = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; w++) {
            v += red[tid][w];
            if (SWIGLU) u += red[ROWS + tid][w];
        }
        if (SWIGLU) v = v / (1.0f + expf(-v)) * u;
        ggc_mm_store_row(a, dst, cache, doff, n0 + tid, v);
    }
}
