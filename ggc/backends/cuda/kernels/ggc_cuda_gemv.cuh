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

/* One column (batch-1 decode): a block of NT threads (4 warps, or 2 for rows of up to 2048 elements:
 * ggc_gemv1_threads) per group of ROWS weight rows, each thread one 32-element sub-block of each row at
 * a time (tid, tid + NT, ...), so a 4096-wide row is one load a thread; the activation sub-block is
 * loaded once for the ROWS rows. The grid is at most what the device holds at once (gemv1_grid) and each block takes every gridDim.x-th group, loading the next
 * item's weights before it dots the current one. ncu on an H100 showed the warp-per-row kernel above
 * latency-bound here (80 registers, 1.3 waves, ~20 cycles between a warp's instructions, 25% of DRAM
 * bandwidth), and the one-group-a-block form of this one, whose every block waited one DRAM round
 * trip and exited, at 0.9-1.5 TB/s on 7B-sized products.
 * SWIGLU: the ROWS output rows read gate rows from a.w and up rows from a.w2 (2 ROWS weight rows) and
 * store silu(gate) * up, as ggml's SWIGLU of the two products (silu in f32: x / (1 + e^-x)). */
#define GGC_GEMV1_THREADS 128
/* rows of at most 64 sub-blocks (K <= 2048) take 64-thread blocks: a thread an item either way, no
 * idle half, twice the blocks on the device */
static inline int ggc_gemv1_threads(int64_t K) {
    const char *env = getenv("GGC_GEMV1_NT"); /* =128: one block size for every K (for measuring) */
    return K <= 64 * 32 && !(env && atoi(env) == 128) ? 64 : GGC_GEMV1_THREADS;
}
template <ggc_type T, int ROWS, bool SWIGLU, int NT = GGC_GEMV1_THREADS>
static __global__ void __launch_bounds__(NT) ggc_k_gemv1(const ggc_mm_args a) {
    GGC_PDL_WAIT_UNLESS(a.w_const);
    constexpr int WR = SWIGLU ? 2 * ROWS : ROWS, NW = NT / 32;
    __shared__ float red[2][WR][NW]; /* by group parity: one barrier a group */
    const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
    const int64_t z = blockIdx.y;
    const uint8_t *wmat = nullptr;
    int64_t arow, doff;
    if (!ggc_mmv_column(a, z, 0, wmat, arow, doff)) return; /* the same for the whole block */
    const int nsub = (int)(a.K / 32);
    /* the weight rows of row group vb (its sibling segment's; the store finds its dst the same way) */
    auto rows_of = [&](int64_t vb, const uint8_t **w) {
        const uint8_t *wm = wmat;
        uint8_t *d = a.dst;
        int64_t N = a.N, n0 = vb * ROWS;
        ggc_mm_segment(a, vb, ROWS, wm, d, N, n0);
        ggc_mm_weight_rows<ROWS, SWIGLU>(a, wm, n0, N, w);
    };
    int64_t vb = blockIdx.x;
    const uint8_t *wr[WR];
    rows_of(vb, wr);
    ggc_q8item<T> cur[WR];
    /* the first sub-block of each row before the wait when the weights are constants: for a 4096-wide
     * row that is all of it, so the loads overlap the kernel before */
    if (tid < nsub) {
#pragma unroll
        for (int r = 0; r < WR; r++) cur[r].load(wr[r], tid);
    }
    GGC_PDL_AFTER_PREFETCH(a.w_const);
    const int8_t *__restrict__ aq = (const int8_t *)a.act + arow * a.K;
    const ggc_q8a_meta *__restrict__ am = (const ggc_q8a_meta *)a.act_aux + arow * nsub;
    /* Software-pipelined over the thread's (group, sub-block) items: the next item's weights, in this
     * group or the block's next one, are loaded (raw) before this one is decoded and dotted, so loads
     * stay in flight across the groups of a block that covers several (grid smaller than the groups). */
    for (int it = 0;; it++) {
        const int64_t vn = vb + gridDim.x;
        const bool more = vn < a.vblocks;
        float acc[WR];
#pragma unroll
        for (int r = 0; r < WR; r++) acc[r] = 0.0f;
        for (int sb = tid; sb < nsub; sb += NT) {
            ggc_q8item<T> nxt[WR];
            const int nx = sb + NT;
            const bool load = nx < nsub || more;
            if (nx >= nsub && more) rows_of(vn, wr); /* this thread's last item of the group: the next group's rows */
            if (load) {
#pragma unroll
                for (int r = 0; r < WR; r++) nxt[r].load(wr[r], nx < nsub ? nx : tid);
            }
            const int4 *yp = (const int4 *)(aq + (int64_t)sb * 32);
            const int4 y0 = __ldg(yp), y1 = __ldg(yp + 1);
            const float4 m = __ldg((const float4 *)(am + sb));
#pragma unroll
            for (int r = 0; r < WR; r++) {
                int q[8];
                float2 dm[2];
                cur[r].decode(q, dm);
                acc[r] += ggc_q8a_dot(q, y0, y1, m, dm[0], dm[1]);
                if (load) cur[r] = nxt[r];
            }
        }
        if (tid >= nsub && more) rows_of(vn, wr); /* threads without items keep up */
        float (*rd)[NW] = red[it & 1];
#pragma unroll
        for (int r = 0; r < WR; r++) {
            const float v = ggc_warp_sum(acc[r]);
            if (lane == 0) rd[r][warp] = v;
        }
        __syncthreads();
        if (tid < ROWS) {
            const uint8_t *wm = wmat;
            uint8_t *dst = a.dst;
            int64_t N = a.N, n0 = vb * ROWS;
            const int seg = ggc_mm_segment(a, vb, ROWS, wm, dst, N, n0);
            if (n0 + tid < N) {
                float v = 0.0f, u = 0.0f;
#pragma unroll
                for (int w = 0; w < NW; w++) {
                    v += rd[tid][w];
                    if (SWIGLU) u += rd[ROWS + tid][w];
                }
                if (SWIGLU) v = v / (1.0f + expf(-v)) * u;
                if constexpr (!SWIGLU && ROWS % 2 == 0) {
                    if (ggc_mm_roped(a, seg)) { /* the pair partner's sum, in the order of its own thread */
#pragma unroll
                        for (int w = 0; w < NW; w++) u += rd[tid ^ 1][w];
                        v = ggc_mm_rope_row(n0 + tid, v, u, ggc_mm_rope_cs(a, n0 + tid));
                    }
                }
                const int cache = ggc_mm_segment_cache(a, seg, dst);
                ggc_mm_store_row(a, dst, cache, doff, n0 + tid, v);
            }
        }
        if (!more) break;
        vb = vn;
    }
}
