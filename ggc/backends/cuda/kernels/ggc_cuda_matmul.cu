/* ggc CUDA: MUL_MAT and MUL_MAT_ID.
 *
 * dst[i0, i1, i2, i3] = dot(src0 row i0 of matrix (i2 / r2, i3 / r3), src1 row (i1, i2, i3)),
 * r2 = ne12 / ne02, r3 = ne13 / ne03, as ggml. src0 rows are contiguous within a row (nb00 = type
 * size, as ggml asserts); every other stride of src0 and all of src1's are free: src1 is first
 * converted into the work buffer (contiguous rows r = i11 + ne11 * (i12 + ne12 * i13)).
 *
 * The kernels:
 *  - gemv1 (quantized weights, one src1 column: batch-1 decode; ggc_cuda_gemv.cuh): src1 quantized
 *    to 8-bit blocks (ggc_q8a); a block of 4 warps per 2 weight rows, each thread one 32-element
 *    sub-block at a time, __dp4a, a block reduction.
 *  - mmvq (quantized weights, src1 ne11 <= 8): the same activations; ggc_k_gemv (a warp per R rows,
 *    sub-blocks decoded straight from global memory), or with GGC_CUDA_STAGED_MMV=1 the older
 *    kernel that streams rows through shared memory with cp.async.
 *  - gemvf1 (f32 / f16 / bf16 weights with 16-byte rows, one column): a warp per row, src1 rounded
 *    to the weights' type as ggml-CPU converts it before its dot.
 *  - mmvf (f32 / f16 / bf16 weights, ne11 <= 2): src1 as contiguous f32 (read in place when it is
 *    already); a row is read by 8, 16 or 32 lanes with 16-byte loads, f32 accumulation.
 *  - mmq4 (q4_0 weights, ne11 > 8; ggc_cuda_mmq4.cuh): f16 tensor cores with the weight fragments
 *    built in registers from the quant bytes, which come by cp.async like src1.
 *  - mmq (other weights, ne11 > 8): tensor cores, mma.sync m16n8k16 (f16, or bf16 for bf16
 *    weights; f32 accumulate). Tiles of BM = 32..128 src1 rows x BN = 128 weight rows x BK = 32;
 *    weights are dequantized to f16 in registers (8 elements a thread per chunk) and stored to
 *    shared memory, src1 (converted to f16/bf16) comes by cp.async; double-buffered, ldmatrix
 *    fragments. GGC_CUDA_MMQ4=0 sends q4_0 here too (for comparisons).
 * With quantized weights src1 is first quantized exactly as ggml-CPU quantizes it for that weight
 * type (q8_0 / q8_1 / q8_K, see ggc_cuda_quants.cuh): mmvq dots those quants, mmq and mmq4
 * multiply f16(q * d) of them, so all see the CPU's activations rather than unquantized ones.
 *
 * Optional sources that the generated program adds for fused groups (the graph's MUL_MAT has
 * none): src[2], a tensor laid out as dst that is added as each result is stored (a residual
 * ADD); src[3], a second weight matrix of src0's type and layout for gemv1: dst = silu(src0 . src1)
 * * (src3 . src1) (a SWIGLU of the two products); src[4], src[5] and src[6], src[7]: (weight, dst) of
 * further one-column products of src1 (Q, K, V), run in the same launch of gemv1 / gemvf1. Weights may be GGC_TYPE_Q4_0R8 (q4_0 regrouped
 * at load, see ggc.h). ctx->act_ready: src1 is in the work buffer already, converted by the
 * previous MUL_MAT of the same src1 and weight type.
 *
 * GQA: in the matrix-vector kernels, the src1 rows that share one weight matrix (r2 * r3 * ne11
 * <= 8) are the columns of one launch, so each weight row is read once.
 *
 * MUL_MAT_ID: src0 experts [K, N, n_as], src1 [K, ne11, n_tok] (ne11 = n_used or 1), ids i32
 * [n_used, n_tok]; dst[:, s, t] = expert ids[s, t] times src1 row (s % ne11, t). Up to 8 tokens:
 * the matrix-vector kernels, one (slot, token) pair per grid row. More: the pairs are grouped by
 * expert on the device (ggc_moe_group) into tiles of BM pairs, and mmq runs over the tile list,
 * gathering src1 rows and scattering dst rows.
 */
#include "ggc_cuda.cuh"
#include "ggc_cuda_quants.cuh"
#include "ggc_cuda_rope.cuh"

#define GGC_MMV_MAX_COLS 8
#define GGC_MMVF_MAX_COLS 2

/* ------------------------------------------------------------------ shared parameters */

struct ggc_mm_args {
    const uint8_t *w; /* src0 */
    int64_t K, N;     /* ne00, ne01 */
    int64_t nb01, nb02, nb03;
    int64_t ne02, ne03, r2, r3;
    int64_t ne11, ne12, ne13; /* src1 batch shape (MUL_MAT_ID: ne11, n_tok, 1) */
    uint8_t *dst;
    int64_t nbd0, nbd1, nbd2, nbd3;
    const uint8_t *add; /* MUL_MAT's src[2], or null: dst = product + add, add laid out as dst (a residual ADD) */
    const uint8_t *w2;  /* MUL_MAT's src[3], or null: dst = silu(src0 . src1) * (src3 . src1) (SWIGLU of two products) */
    const void *act;     /* converted src1 */
    const void *act_aux; /* q8a metas (mmvq) */
    int64_t act_stride;  /* elements per converted row */
    int grouped;         /* matrix-vector: z indexes weight matrices, columns cover r2 * r3 * ne11 rows */
    int64_t vblocks;     /* ggc_k_gemv1: row groups (ROWS rows, or a sibling segment's share) to cover; the
                            grid may be smaller, each block then takes every gridDim.x-th group */
    int w_const;         /* the weights are model constants: the one-column kernels load their first ones
                            before the PDL wait (GGC_PDL_WAIT_UNLESS), overlapping the kernel before */
    /* MUL_MAT_ID */
    const uint8_t *ids;
    int64_t ids_nb0, ids_nb1, n_used, n_as;
    const int *pairs, *offs, *n_tiles;
    const int2 *tiles;
    /* sibling products (MUL_MAT's src[4..7]): nseg > 1 one-column products of one input in one launch;
     * segment s covers blocks [seg_block[s], seg_block[s + 1]), rows seg_rows[s] of seg_w[s] into seg_dst[s] */
    int nseg;
    int64_t seg_block[4], seg_rows[3];
    const uint8_t *seg_w[3];
    uint8_t *seg_dst[3];
    /* segment s >= 1 with seg_cache[s] >= 0 stores into cache rows (a fused SET_ROWS): its one column goes
     * to row *seg_idx[s] (i64 when seg_idx64[s], else i32) of seg_dst[s], rows seg_nb1[s] bytes apart, as
     * type seg_cache[s] (f16 or bf16) */
    int seg_cache[3], seg_idx64[3];
    const void *seg_idx[3];
    int64_t seg_nb1[3];
    /* the segments whose bit is set in rope_segs store their rows rotated by a ROPE of one token in adjacent
     * pairs (ggml's normal mode) over heads of rope_head rows: rows (2i, 2i + 1) of each head are pair i,
     * at position *rope_pos, frequency factors rope_ff (or null), rotation parameters rope */
    int rope_segs;
    int64_t rope_head;
    const int32_t *rope_pos;
    const float *rope_ff;
    ggc_rope_yarn rope;
    /* mmq split-K */
    int split;        /* K slices (1: none) */
    float *partial;   /* [split][partial_rows][N] sums, or null: write dst */
    int64_t partial_rows;
};

/* a result to dst at byte offset off, through the fused residual ADD when there is one */
static __device__ __forceinline__ void ggc_mm_store_to(const ggc_mm_args &a, uint8_t *dst, int64_t off, float v) {
    if (a.add) v += *(const float *)(a.add + off);
    *(float *)(dst + off) = v;
}
static __device__ __forceinline__ void ggc_mm_store(const ggc_mm_args &a, int64_t off, float v) {
    ggc_mm_store_to(a, a.dst, off, v);
}

/* The one-column kernels' block of sibling products (a.nseg > 1): its segment's weights, dst and
 * rows, and its first row there; returns the segment (0 for a single product, left unchanged). Reads
 * kernel parameters only, so it may run before the PDL wait. */
static __device__ __forceinline__ int ggc_mm_segment(const ggc_mm_args &a, int64_t vb, int rows_per_block,
                                                     const uint8_t *&wmat, uint8_t *&dst, int64_t &N, int64_t &n0) {
    if (a.nseg < 2) return 0;
    int s = 0;
    while (s + 1 < a.nseg && vb >= a.seg_block[s + 1]) s++;
    wmat = a.seg_w[s];
    dst = a.seg_dst[s];
    N = a.seg_rows[s];
    n0 = (vb - a.seg_block[s]) * rows_per_block;
    return s;
}
/* -1, or the cache type when segment s stores into a cache row (dst then moves to that row, read
 * from the index tensor: after the PDL wait) */
static __device__ __forceinline__ int ggc_mm_segment_cache(const ggc_mm_args &a, int s, uint8_t *&dst) {
    if (a.nseg < 2 || a.seg_cache[s] < 0) return -1;
    const void *ix = a.seg_idx[s];
    const int64_t row = a.seg_idx64[s] ? *(const int64_t *)ix : *(const int32_t *)ix;
    dst += row * a.seg_nb1[s];
    return a.seg_cache[s];
}

/* whether segment s stores its rows roped (a.rope_segs) */
static __device__ __forceinline__ bool ggc_mm_roped(const ggc_mm_args &a, int s) { return a.nseg > 1 && (a.rope_segs >> s & 1); }

/* the rotation of row i's pair in a roped segment (pair (i % rope_head) / 2 of its head) */
static __device__ __forceinline__ float2 ggc_mm_rope_cs(const ggc_mm_args &a, int64_t i) {
    const int64_t pp = (i % a.rope_head) / 2;
    return ggc_rope_cs(ggc_rope_theta((float)*a.rope_pos, pp, a.rope.theta_scale), pp, a.rope_ff, a.rope);
}
/* row i of a roped segment from its product v and its pair partner's u (row i ^ 1): the ROPE kernel's
 * bits (the same rotation of the same f32 values) */
static __device__ __forceinline__ float ggc_mm_rope_row(int64_t i, float v, float u, float2 cs) {
    return (i & 1) ? ggc_rope_second(u, v, cs) : ggc_rope_first(v, u, cs);
}

/* the weight rows a one-column kernel reads from row n0 on (rows past N read row N - 1, whose result is
 * not stored); with SWIGLU the up rows of a.w2 follow the gate rows */
template <int ROWS, bool SWIGLU>
static __device__ __forceinline__ void ggc_mm_weight_rows(const ggc_mm_args &a, const uint8_t *wmat, int64_t n0,
                                                          int64_t N, const uint8_t **wr) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t n = min(n0 + r, N - 1);
        wr[r] = wmat + n * a.nb01;
        if (SWIGLU) wr[ROWS + r] = a.w2 + (wmat - a.w) + n * a.nb01;
    }
}

/* result row i of a one-column product: to dst at doff (f32, through the residual ADD), or into the
 * cache row of a storing segment (cache >= 0), converted as SET_ROWS converts */
static __device__ __forceinline__ void ggc_mm_store_row(const ggc_mm_args &a, uint8_t *dst, int cache, int64_t doff,
                                                        int64_t i, float v) {
    if (cache < 0) ggc_mm_store_to(a, dst, doff + i * a.nbd0, v);
    else ggc_store_f(dst + i * ggc_cuda_tsize((ggc_type)cache), (ggc_type)cache, v);
}

/* The weight matrix and the src1 rows (converted-row index, dst byte offset) of matrix-vector
 * grid row z, column c. Returns false when the column does not exist (an invalid expert id, a
 * column past the end of an expert's tile), or the whole grid row is idle (wmat stays null). */
static __device__ __forceinline__ bool ggc_mmv_column(const ggc_mm_args &a, int64_t z, int c, const uint8_t *&wmat,
                                                      int64_t &arow, int64_t &doff) {
    if (a.tiles) { /* MUL_MAT_ID grouped by expert: up to NC (slot, token) pairs of one expert per z */
        if (z >= *a.n_tiles) return false;
        const int2 tl = a.tiles[z];
        const int e = tl.x, beg = a.offs[e], cnt = a.offs[e + 1] - beg;
        wmat = a.w + e * a.nb02;
        if (tl.y + c >= cnt) return false;
        const int64_t p = a.pairs[beg + tl.y + c], s = p % a.n_used, t = p / a.n_used;
        arow = s % a.ne11 + a.ne11 * t;
        doff = s * a.nbd1 + t * a.nbd2;
        return true;
    }
    if (a.ids) { /* one (slot, token) pair per z */
        const int64_t s = z % a.n_used, t = z / a.n_used;
        const int e = *(const int32_t *)(a.ids + s * a.ids_nb0 + t * a.ids_nb1);
        if (e < 0 || e >= a.n_as) return false;
        wmat = a.w + e * a.nb02;
        arow = s % a.ne11 + a.ne11 * t;
        doff = s * a.nbd1 + t * a.nbd2;
        return true;
    }
    int64_t i11, i12, i13;
    if (a.grouped) {
        const int64_t i02 = z % a.ne02, i03 = z / a.ne02, j = c / a.ne11;
        i11 = c % a.ne11;
        i12 = i02 * a.r2 + j % a.r2;
        i13 = i03 * a.r3 + j / a.r2;
    } else {
        i11 = c;
        i12 = z % a.ne12;
        i13 = z / a.ne12;
    }
    wmat = a.w + (i12 / a.r2) * a.nb02 + (i13 / a.r3) * a.nb03;
    arow = i11 + a.ne11 * (i12 + a.ne12 * i13);
    doff = i11 * a.nbd1 + i12 * a.nbd2 + i13 * a.nbd3;
    return true;
}

/* ------------------------------------------------------------------ src1 conversion */

/* src1 rows -> q8a, quantized as ggml-CPU does for weights of vec_dot_type Q: one warp per
 * quantization block (32 elements, lane e element e; q8_K: 256, lane l elements 8l .. 8l+7) */
template <ggc_actq Q>
static __global__ void ggc_k_quantize_q8a(const uint8_t *src, ggc_type type, ggc_cuda_shape s, int64_t nblocks,
                                   int8_t *q, ggc_q8a_meta *meta) {
    GGC_PDL_BEGIN();
    constexpr int QB = ggc_actq_blck(Q);
    const int lane = threadIdx.x & 31;
    const int64_t bi = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (bi >= nblocks) return;
    const int64_t K = s.ne[0], bpr = K / QB, r = bi / bpr, kb = bi % bpr;
    int64_t i1, i2, i3;
    ggc_cuda_unravel_row(s, r, i1, i2, i3);
    if constexpr (Q == GGC_ACTQ_Q8_K) {
        float x[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            x[j] = ggc_load_f(ggc_cuda_ptr((void *)src, s, kb * QB + 8 * lane + j, i1, i2, i3), type);
        ggc_q8a_quant_k_warp(x, lane, q + r * K + kb * QB, meta + r * (K / 32) + kb * (QB / 32));
    } else {
        const float x = ggc_load_f(ggc_cuda_ptr((void *)src, s, kb * QB + lane, i1, i2, i3), type);
        ggc_q8a_quant_warp<Q>(x, lane, q + r * K + kb * QB, meta + bi);
    }
}

/* src1 rows -> f16 rows of `stride` elements for the tensor-core path with quantized weights:
 * each element f16(q * d) of the CPU's quantization (vec_dot_type Q), one warp per block as
 * above. K is a multiple of the weight block (32 or 256) and so of GGC_MMQ_BK: stride == K, no
 * padding. PERM: each 32-element block in ggc_k_mmq4's order (ggc_mmq4_pos). */
template <ggc_actq Q, bool PERM = false>
static __global__ void ggc_k_fake_quant_rows(const uint8_t *src, ggc_type type, ggc_cuda_shape s, int64_t stride,
                                             int64_t nblocks, uint16_t *out) {
    GGC_PDL_BEGIN();
    constexpr int QB = ggc_actq_blck(Q);
    const int lane = threadIdx.x & 31;
    const int64_t bi = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (bi >= nblocks) return;
    const int64_t bpr = s.ne[0] / QB, r = bi / bpr, kb = bi % bpr;
    int64_t i1, i2, i3;
    ggc_cuda_unravel_row(s, r, i1, i2, i3);
    uint16_t *o = out + r * stride + kb * QB;
    if constexpr (Q == GGC_ACTQ_Q8_K) {
        float x[8];
        uint16_t h[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            x[j] = ggc_load_f(ggc_cuda_ptr((void *)src, s, kb * QB + 8 * lane + j, i1, i2, i3), type);
        ggc_q8k_fake256(x, lane, h);
        uint32_t u[4];
#pragma unroll
        for (int j = 0; j < 4; j++) u[j] = (uint32_t)h[2 * j] | (uint32_t)h[2 * j + 1] << 16;
        *(uint4 *)(o + 8 * lane) = make_uint4(u[0], u[1], u[2], u[3]); /* 16-aligned: K % 256 == 0 */
    } else {
        o[PERM ? ggc_mmq4_pos(lane) : lane] =
            ggc_q8_fake32(ggc_load_f(ggc_cuda_ptr((void *)src, s, kb * QB + lane, i1, i2, i3), type));
    }
}

/* src1 rows -> contiguous rows of `stride` elements (zero padded) as f32 / f16 / bf16 */
static __global__ void ggc_k_convert_rows(const uint8_t *src, ggc_type type, ggc_cuda_shape s, int64_t stride, int64_t total,
                                   void *out, ggc_type otype) {
    GGC_PDL_BEGIN();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int64_t r = i / stride, k = i % stride;
    float x = 0.0f;
    if (k < s.ne[0]) {
        int64_t i1, i2, i3;
        ggc_cuda_unravel_row(s, r, i1, i2, i3);
        x = ggc_load_f(ggc_cuda_ptr((void *)src, s, k, i1, i2, i3), type);
    }
    if (otype == GGC_TYPE_F32)
        ((float *)out)[i] = x;
    else
        ((uint16_t *)out)[i] = otype == GGC_TYPE_BF16 ? ggc_f2bf(x) : ggc_f2h(x);
}

/* ------------------------------------------------------------------ PTX helpers */

static __device__ __forceinline__ uint32_t ggc_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ void ggc_cp_async16(void *smem, const void *gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(ggc_smem_addr(smem)), "l"(gmem));
}
static __device__ __forceinline__ void ggc_cp_async4(void *smem, const void *gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(ggc_smem_addr(smem)), "l"(gmem));
}
static __device__ __forceinline__ void ggc_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void ggc_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
static __device__ __forceinline__ void ggc_ldmatrix_x4(uint32_t r[4], const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ggc_smem_addr(smem)));
}
template <bool BF16>
static __device__ __forceinline__ void ggc_mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    if constexpr (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}
/* two floats as a half2 / bfloat162 bit pattern, x in the low half */
template <bool BF16> static __device__ __forceinline__ uint32_t ggc_pack2(float x, float y) {
    if constexpr (BF16) {
        return (uint32_t)ggc_f2bf(x) | ((uint32_t)ggc_f2bf(y) << 16);
    } else {
        const __half2 h = __floats2half2_rn(x, y);
        return *(const uint32_t *)&h;
    }
}

/* ------------------------------------------------------------------ mmvq: quantized weights, <= 8 columns */

#define GGC_MMVQ_WARPS 4
#define GGC_MMVQ_STAGES 3

template <ggc_type T> struct ggc_mmvq_geom {
    static constexpr int SUBS = ggc_cuda_blck(T) / 32;           /* 32-element sub-blocks per block */
    static constexpr int CH_BLOCKS = 32 / SUBS;                  /* blocks per 1024-element chunk */
    static constexpr int CH_BYTES = CH_BLOCKS * ggc_cuda_tsize(T);
    static constexpr int BUF = (CH_BYTES + 31 + 15) / 16 * 16;  /* room for a misaligned start */
};

/* Stage bytes [gs, ge) of global memory into buf so that buf[j] holds byte (gs & ~15) + j: whole
 * 16-byte granules by cp.async, the partial first and last granules byte by byte. */
static __device__ __forceinline__ void ggc_stage_bytes(uint8_t *buf, const uint8_t *gs, const uint8_t *ge, int lane) {
    const uint8_t *a0 = (const uint8_t *)((uintptr_t)gs & ~(uintptr_t)15);
    const int ng = (int)((ge - a0 + 15) >> 4);
    for (int g = lane; g < ng; g += 32) {
        const uint8_t *p = a0 + 16 * g;
        if (p >= gs && p + 16 <= ge) {
            ggc_cp_async16(buf + 16 * g, p);
        } else {
            for (int j = 0; j < 16; j++)
                if (p + j >= gs && p + j < ge) buf[16 * g + j] = p[j];
        }
    }
}

/* rows per warp for nc columns: more rows share each activation load when there are more columns */
static __host__ __device__ constexpr int ggc_mmv_rows(int nc) { return nc == 1 ? 1 : nc == 2 ? 2 : 4; }

template <ggc_type T, int NC>
static __global__ void __launch_bounds__(GGC_MMVQ_WARPS * 32) ggc_k_mmvq(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    using G = ggc_mmvq_geom<T>;
    constexpr int TS = ggc_cuda_tsize(T), R = ggc_mmv_rows(NC), ST = R >= 4 ? 2 : GGC_MMVQ_STAGES;
    __shared__ __align__(16) uint8_t smem[GGC_MMVQ_WARPS][ST][R][G::BUF];
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t row0 = ((int64_t)blockIdx.x * GGC_MMVQ_WARPS + warp) * R, z = blockIdx.y;
    if (row0 >= a.N) return;
    const int nr = (int)min((int64_t)R, a.N - row0); /* rows of this warp */

    const uint8_t *wmat = nullptr;
    int64_t arow[NC], doff[NC];
    bool col[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) col[c] = ggc_mmv_column(a, z, c, wmat, arow[c], doff[c]);
    if (!col[0]) return; /* columns are filled from the first */
    const uint8_t *wrow = wmat + row0 * a.nb01;
    const int64_t K = a.K, nsub = K / 32, row_bytes = (K / ggc_cuda_blck(T)) * TS;
    const int nch = (int)((K + 1023) / 1024);
    const int8_t *aq = (const int8_t *)a.act;
    const ggc_q8a_meta *am = (const ggc_q8a_meta *)a.act_aux;

    auto stage = [&](int ch) {
        if (ch < nch) {
            for (int r = 0; r < nr; r++) {
                const uint8_t *w = wrow + r * a.nb01;
                const uint8_t *gs = w + (int64_t)ch * G::CH_BYTES;
                const uint8_t *ge = w + min((int64_t)(ch + 1) * G::CH_BYTES, row_bytes);
                ggc_stage_bytes(smem[warp][ch % ST][r], gs, ge, lane);
            }
        }
        ggc_cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < ST - 1; s++) stage(s);

    float acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;

    for (int ch = 0; ch < nch; ch++) {
        ggc_cp_async_wait<ST - 2>();
        __syncwarp();
        stage(ch + ST - 1); /* into the buffer read in the previous iteration */
        const int64_t sb = (int64_t)ch * 32 + lane; /* this lane's sub-block of the rows */
        if (sb < nsub) {
            int q[R][8];
            float2 dm[R][2];
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r < nr) {
                    const uint8_t *gs = wrow + r * a.nb01 + (int64_t)ch * G::CH_BYTES;
                    const uint8_t *buf = smem[warp][ch % ST][r] + ((uintptr_t)gs & 15);
                    ggc_q8dec<T>::dec(buf + (lane / G::SUBS) * TS, lane % G::SUBS, q[r], dm[r]);
                }
            }
#pragma unroll
            for (int c = 0; c < NC; c++) {
                if (!col[c]) continue;
                const int4 *yp = (const int4 *)(aq + arow[c] * K + sb * 32);
                const int4 y0 = __ldg(yp), y1 = __ldg(yp + 1);
                const float4 m = __ldg((const float4 *)(am + arow[c] * nsub + sb));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr) acc[r][c] += ggc_q8a_dot(q[r], y0, y1, m, dm[r][0], dm[r][1]);
                }
            }
        }
    }
    ggc_cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float v = ggc_warp_sum(acc[r][c]);
            if (lane == 0 && r < nr && col[c]) ggc_mm_store(a, doff[c] + (row0 + r) * a.nbd0, v);
        }
}

#include "ggc_cuda_gemv.cuh"

/* ------------------------------------------------------------------ mmvf: f32 / f16 / bf16 weights, <= 8 columns */

#define GGC_MMVF_THREADS 128

/* 8 weights of type T as loaded (two 16-byte words for f32, one for f16 / bf16) -> f32 */
template <ggc_type T> struct ggc_raw8 {
    static constexpr int N = T == GGC_TYPE_F32 ? 2 : 1;
    uint4 v[N];
    __device__ __forceinline__ void load(const uint8_t *row, int64_t k) {
#pragma unroll
        for (int i = 0; i < N; i++) v[i] = __ldg((const uint4 *)(row + k * ggc_cuda_tsize(T)) + i);
    }
    __device__ __forceinline__ void unpack(float w[8]) const {
        if constexpr (T == GGC_TYPE_F32) {
#pragma unroll
            for (int i = 0; i < 4; i++) w[i] = __uint_as_float((&v[0].x)[i]), w[4 + i] = __uint_as_float((&v[1].x)[i]);
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint32_t u = (&v[0].x)[j];
                if constexpr (T == GGC_TYPE_BF16) {
                    w[2 * j] = __uint_as_float(u << 16);
                    w[2 * j + 1] = __uint_as_float(u & 0xFFFF0000u);
                } else {
                    w[2 * j] = ggc_h2f((uint16_t)u);
                    w[2 * j + 1] = ggc_h2f((uint16_t)(u >> 16));
                }
            }
        }
    }
};

/* 8 weights at element k of a row; VEC: 16-byte aligned, whole */
template <ggc_type T, bool VEC>
static __device__ __forceinline__ void ggc_load8_float(const uint8_t *row, int64_t k, int64_t K, float v[8]) {
    if (VEC && k + 8 <= K) {
        ggc_raw8<T> raw;
        raw.load(row, k);
        raw.unpack(v);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            v[j] = k + j < K ? ggc_load_f(row + (k + j) * ggc_cuda_tsize(T), T) : 0.0f;
    }
}

/* LPR lanes per group of R = ggc_mmv_rows(NC) weight rows (32 / LPR groups per warp). vec: the
 * weight rows are 16-byte aligned (a uniform branch; 16-byte loads then). */
template <ggc_type T, int NC, int LPR>
static __global__ void __launch_bounds__(GGC_MMVF_THREADS) ggc_k_mmvf(const ggc_mm_args a, const bool vec) {
    GGC_PDL_BEGIN();
    constexpr int R = ggc_mmv_rows(NC);
    const int lane = threadIdx.x & 31, sub = lane % LPR;
    const int64_t row0 = ((int64_t)blockIdx.x * GGC_MMVF_THREADS + threadIdx.x) / LPR * R, z = blockIdx.y;
    const uint8_t *wmat = nullptr;
    int64_t arow[NC], doff[NC];
    bool col[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) col[c] = ggc_mmv_column(a, z, c, wmat, arow[c], doff[c]);
    const bool ok = row0 < a.N && col[0]; /* columns are filled from the first */
    const int nr = ok ? (int)min((int64_t)R, a.N - row0) : 0;
    float acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;
    if (ok) { /* no early return: the reduction below needs the whole warp */
        const uint8_t *wrow = wmat + row0 * a.nb01;
        const float *act = (const float *)a.act;
        for (int64_t k = 8 * sub; k < a.K; k += 8 * LPR) {
            float w[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r < nr) {
                    if (vec)
                        ggc_load8_float<T, true>(wrow + r * a.nb01, k, a.K, w[r]);
                    else
                        ggc_load8_float<T, false>(wrow + r * a.nb01, k, a.K, w[r]);
                }
            }
#pragma unroll
            for (int c = 0; c < NC; c++) {
                if (!col[c]) continue;
                const float4 *yp = (const float4 *)(act + arow[c] * a.act_stride + k);
                const float4 y0 = __ldg(yp), y1 = __ldg(yp + 1);
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (r < nr)
                        acc[r][c] += w[r][0] * y0.x + w[r][1] * y0.y + w[r][2] * y0.z + w[r][3] * y0.w +
                                     w[r][4] * y1.x + w[r][5] * y1.y + w[r][6] * y1.z + w[r][7] * y1.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float v = acc[r][c];
#pragma unroll
            for (int o = LPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (sub == 0 && r < nr && col[c]) ggc_mm_store(a, doff[c] + (row0 + r) * a.nbd0, v);
        }
}

/* One column of float weights (batch-1 decode): a warp per ROWS weight rows (4 warps a block), each
 * lane 8 elements (16 bytes of f16 / bf16, 32 of f32) of each row at a time, lanes side by side so
 * that a warp's loads are whole 512-byte runs; U steps' loads are issued raw before any is converted,
 * so a lane keeps U * WR loads in flight (mmvf's warp kept one), and a warp reduction finishes the
 * row (no block barrier: blocks retire as their warps do). Needs 16-byte aligned rows and K % 8 == 0;
 * src1 is f32 (a.act, rows of a.act_stride), rounded to the weights' type as ggml-CPU converts it
 * (a fused SWIGLU pair is compared at the GLU's tight threshold). SWIGLU as in ggc_k_gemv1: gate rows from a.w, up rows
 * from a.w2. */
#define GGC_GEMVF1_WARPS 4
/* src1 as ggml-CPU dots it with weights of type T: converted to T first (vec_dot_type f16 / bf16) */
template <ggc_type T> static __device__ __forceinline__ float ggc_as_vec_dot(float y) {
    if constexpr (T == GGC_TYPE_F16) return ggc_h2f(ggc_f2h(y));
    if constexpr (T == GGC_TYPE_BF16) return ggc_bf2f(ggc_f2bf(y));
    return y;
}

/* the dot of 8 weights with 8 src1 values, in src1's CPU rounding */
template <ggc_type T>
static __device__ __forceinline__ float ggc_dot8(const ggc_raw8<T> &raw, const float4 y0, const float4 y1) {
    float w[8];
    raw.unpack(w);
    const float y[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
    float t = w[0] * ggc_as_vec_dot<T>(y[0]);
#pragma unroll
    for (int i = 1; i < 8; i++) t = fmaf(w[i], ggc_as_vec_dot<T>(y[i]), t);
    return t;
}

/* no loads before the wait here: hoisting the first step's out of the loop cost 1B F16 decode 12% (722 -> 636 tok/s) */
template <ggc_type T, int ROWS, bool SWIGLU>
static __global__ void __launch_bounds__(GGC_GEMVF1_WARPS * 32) ggc_k_gemvf1(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    constexpr int WR = SWIGLU ? 2 * ROWS : ROWS, U = 4;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    int64_t n0 = (int64_t)blockIdx.x * GGC_GEMVF1_WARPS * ROWS, N = a.N;
    const int64_t z = blockIdx.y;
    const uint8_t *wmat = nullptr;
    uint8_t *dst = a.dst;
    int64_t arow, doff;
    if (!ggc_mmv_column(a, z, 0, wmat, arow, doff)) return;
    const int seg = ggc_mm_segment(a, blockIdx.x, GGC_GEMVF1_WARPS * ROWS, wmat, dst, N, n0);
    const int cache = ggc_mm_segment_cache(a, seg, dst);
    n0 += (int64_t)warp * ROWS;
    if (n0 >= N) return; /* a whole warp: no barrier follows */
    const uint8_t *wr[WR];
    ggc_mm_weight_rows<ROWS, SWIGLU>(a, wmat, n0, N, wr);
    const float *__restrict__ x = (const float *)a.act + arow * a.act_stride;
    const int64_t K = a.K;
    float acc[WR];
#pragma unroll
    for (int r = 0; r < WR; r++) acc[r] = 0.0f;
    for (int64_t k0 = 8 * lane; k0 < K; k0 += 8 * 32 * U) {
        ggc_raw8<T> w[U][WR];
        float4 y[U][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t k = k0 + 8 * 32 * u;
            if (k < K) {
#pragma unroll
                for (int r = 0; r < WR; r++) w[u][r].load(wr[r], k);
                y[u][0] = __ldg((const float4 *)(x + k));
                y[u][1] = __ldg((const float4 *)(x + k) + 1);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (k0 + 8 * 32 * u >= K) break;
#pragma unroll
            for (int r = 0; r < WR; r++) acc[r] += ggc_dot8<T>(w[u][r], y[u][0], y[u][1]);
        }
    }
#pragma unroll
    for (int r = 0; r < WR; r++) acc[r] = ggc_warp_sum(acc[r]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (n0 + r >= N) break;
            float v = acc[r];
            if (SWIGLU) v = v / (1.0f + expf(-v)) * acc[ROWS + r];
            ggc_mm_store_row(a, dst, cache, doff, n0 + r, v);
        }
    }
}

/* ------------------------------------------------------------------ mmq: tensor cores, > 8 columns */

#define GGC_MMQ_BN 128
#define GGC_MMQ_BK 32
#define GGC_MMQ_LDS 40 /* halves per shared row: 32 + 8 padding, conflict-free ldmatrix */
#define GGC_MMQ_THREADS 256
#define GGC_MMQ_STAGES 4

/* dynamic shared memory of ggc_k_mmq: S activation tiles and S (f16 / bf16 by cp.async) or 2 weight tiles */
static constexpr size_t ggc_mmq_smem_bytes(int mt, bool direct) {
    return ((size_t)GGC_MMQ_STAGES * 32 * mt + (size_t)(direct ? GGC_MMQ_STAGES : 2) * GGC_MMQ_BN) * GGC_MMQ_LDS * 2;
}

/* The tile's src1 rows (grid.y, or a MUL_MAT_ID tile of one expert's pairs): s_arow[m] the converted
 * src1 row (-1: none), s_doff[m] its dst byte offset. Returns the weight matrix, or null when the
 * block has no tile (MUL_MAT_ID: past the device-side tile count). zb: the batch index of grid.z. */
template <int BM>
static __device__ __forceinline__ const uint8_t *ggc_mmq_tile_rows(const ggc_mm_args &a, int64_t zb, int64_t *s_arow,
                                                                  int64_t *s_doff) {
    const int tid = threadIdx.x;
    if (a.tiles) {
        if ((int)blockIdx.y >= *a.n_tiles) return nullptr;
        const int2 tl = a.tiles[blockIdx.y];
        const int e = tl.x, m0 = tl.y, beg = a.offs[e], cnt = a.offs[e + 1] - beg;
        for (int m = tid; m < BM; m += blockDim.x) {
            s_arow[m] = -1;
            if (m0 + m < cnt) {
                const int64_t p = a.pairs[beg + m0 + m], s = p % a.n_used, t = p / a.n_used;
                s_arow[m] = s % a.ne11 + a.ne11 * t;
                s_doff[m] = s * a.nbd1 + t * a.nbd2;
            }
        }
        return a.w + e * a.nb02;
    }
    const int64_t i12 = zb % a.ne12, i13 = zb / a.ne12, m0 = (int64_t)blockIdx.y * BM;
    for (int m = tid; m < BM; m += blockDim.x) {
        const int64_t i11 = m0 + m;
        s_arow[m] = i11 < a.ne11 ? i11 + a.ne11 * zb : -1;
        s_doff[m] = i11 * a.nbd1 + i12 * a.nbd2 + i13 * a.nbd3;
    }
    return a.w + (i12 / a.r2) * a.nb02 + (i13 / a.r3) * a.nb03;
}

/* A tile's results from the mma accumulators of a warp (wm, wn) of 8 (2 x 4), MT 16-row tiles by 4
 * 8-column tiles: c0, c1 at row lane / 4, columns 2 (lane % 4) + 0, 1; c2, c3 8 rows further. To
 * dst (through the residual ADD), or with split-K to slice sk's partial sums. */
template <int MT>
static __device__ __forceinline__ void ggc_mmq_store_tile(const ggc_mm_args &a, const float (&acc)[MT][4][4],
                                                          const int64_t *s_arow, const int64_t *s_doff, int64_t n0,
                                                          int64_t sk, int wm, int wn, int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = wm * 16 * MT + mt * 16 + (lane >> 2) + 8 * h;
            const int64_t r = s_arow[m];
            if (r < 0) continue;
            if (a.partial) { /* split-K: this slice's sums, [slice][converted row][N] */
                float *prow = a.partial + (sk * a.partial_rows + r) * a.N;
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int64_t n = n0 + wn * 32 + nt * 8 + (lane & 3) * 2;
                    if (n < a.N) prow[n] = acc[mt][nt][2 * h];
                    if (n + 1 < a.N) prow[n + 1] = acc[mt][nt][2 * h + 1];
                }
                continue;
            }
            const int64_t drow = s_doff[m];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const int64_t n = n0 + wn * 32 + nt * 8 + (lane & 3) * 2;
                if (n < a.N) ggc_mm_store(a, drow + n * a.nbd0, acc[mt][nt][2 * h]);
                if (n + 1 < a.N) ggc_mm_store(a, drow + (n + 1) * a.nbd0, acc[mt][nt][2 * h + 1]);
            }
        }
}

/* VEC: float weights with 16-byte aligned rows and K % 8 == 0; f16 / bf16 weight tiles then come
 * straight from global memory by cp.async, like the activations. Split-K (a.split > 1): grid.z
 * is batch + nzb * slice, each slice sums its share of the K tiles into a.partial. */
template <ggc_type T, int MT, bool VEC>
static __global__ void __launch_bounds__(GGC_MMQ_THREADS, 2) ggc_k_mmq(const ggc_mm_args a) {
    GGC_PDL_BEGIN();
    constexpr bool BF = T == GGC_TYPE_BF16;
    constexpr bool DIRECT = VEC && (T == GGC_TYPE_F16 || T == GGC_TYPE_BF16);
    constexpr int BM = 32 * MT, BN = GGC_MMQ_BN, BK = GGC_MMQ_BK, LDS = GGC_MMQ_LDS, S = GGC_MMQ_STAGES;
    extern __shared__ __align__(16) uint16_t ggc_mmq_smem[];
    uint16_t(*sA)[BM * LDS] = (uint16_t(*)[BM * LDS])ggc_mmq_smem;            /* [S] */
    uint16_t(*sB)[BN * LDS] = (uint16_t(*)[BN * LDS])(ggc_mmq_smem + S * BM * LDS); /* [S] or [2] */
    __shared__ int64_t s_arow[BM], s_doff[BM];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
    const int wm = warp / 4, wn = warp % 4;
    const int64_t n0 = (int64_t)blockIdx.x * BN;
    const int64_t nzb = a.tiles ? 1 : a.ne12 * a.ne13, zb = blockIdx.z % nzb, sk = blockIdx.z / nzb;

    const uint8_t *wmat = ggc_mmq_tile_rows<BM>(a, zb, s_arow, s_doff);
    if (!wmat) return;
    __syncthreads();

    const int64_t K = a.K, nk_all = (K + BK - 1) / BK;
    const int64_t kt0 = nk_all * sk / a.split, kt1 = nk_all * (sk + 1) / a.split;
    const uint16_t *act = (const uint16_t *)a.act;

    auto load_a = [&](int64_t kt, int buf) {
        for (int v = tid; v < BM * 4; v += GGC_MMQ_THREADS) {
            const int m = v / 4, kc = v % 4;
            uint16_t *dst = &sA[buf][m * LDS + kc * 8];
            const int64_t r = s_arow[m];
            if (r >= 0)
                ggc_cp_async16(dst, act + r * a.act_stride + kt * BK + kc * 8);
            else
                *(uint4 *)dst = make_uint4(0, 0, 0, 0);
        }
    };
    /* The weight tile: 128 rows x 32, 8 elements a thread twice. Quantized weights in two steps:
     * load_b only issues the loads (into braw) before the tensor-core work of the current tile,
     * store_b converts to f16 / bf16 and stores after it, so the loads' latency overlaps the mma.
     * Out-of-range elements load from a valid address and are zeroed on conversion. */
    constexpr bool QUANT = ggc_cuda_is_quant(T);
    using deq = ggc_deq<QUANT ? T : GGC_TYPE_F32>;
    typename deq::raw braw[2];
    uint32_t breg[2][4];
    bool bin[2];
    auto load_b = [&](int64_t kt, int buf) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = tid + GGC_MMQ_THREADS * i, n = c / 4, kc = c % 4;
            const int64_t k = kt * BK + kc * 8;
            const bool in = n0 + n < a.N && k < K;
            if constexpr (QUANT) {
                bin[i] = in;
                const int64_t nn = in ? n0 + n : 0, kk = in ? k : 0;
                deq::fetch(wmat + nn * a.nb01, kk, braw[i]);
            } else if constexpr (DIRECT) {
                uint16_t *dst = &sB[buf][n * LDS + kc * 8];
                if (in)
                    ggc_cp_async16(dst, wmat + (n0 + n) * a.nb01 + 2 * k);
                else
                    *(uint4 *)dst = make_uint4(0, 0, 0, 0);
            } else {
                float v[8];
                if (in) {
                    ggc_load8_float<T, VEC>(wmat + (n0 + n) * a.nb01, k, K, v);
                } else {
#pragma unroll
                    for (int j = 0; j < 8; j++) v[j] = 0.0f;
                }
#pragma unroll
                for (int j = 0; j < 4; j++) breg[i][j] = ggc_pack2<BF>(v[2 * j], v[2 * j + 1]);
            }
        }
    };
    auto store_b = [&](int64_t kt, int buf) {
        if constexpr (!DIRECT) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int c = tid + GGC_MMQ_THREADS * i, n = c / 4, kc = c % 4;
                if constexpr (QUANT) {
                    float v[8];
                    deq::convert(braw[i], bin[i] ? kt * BK + kc * 8 : 0, v);
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        breg[i][j] = bin[i] ? ggc_pack2<BF>(v[2 * j], v[2 * j + 1]) : 0u;
                }
                *(uint4 *)&sB[buf][n * LDS + kc * 8] = make_uint4(breg[i][0], breg[i][1], breg[i][2], breg[i][3]);
            }
        }
    };

    float acc[MT][4][4] = {};

    /* Pipeline: activation tiles (and f16 / bf16 weight tiles) by cp.async, S - 1 tiles ahead;
     * quantized weight tiles through registers, one tile ahead (double-buffered in shared). */
#pragma unroll
    for (int st = 0; st < S - 1; st++) {
        if (kt0 + st < kt1) {
            load_a(kt0 + st, st);
            if constexpr (DIRECT) load_b(kt0 + st, st);
        }
        ggc_cp_async_commit();
    }
    if constexpr (!DIRECT) {
        if (kt0 < kt1) {
            load_b(kt0, 0);
            store_b(kt0, 0);
        }
    }
    ggc_cp_async_wait<S - 2>();
    __syncthreads();

    for (int64_t kt = kt0; kt < kt1; kt++) {
        const int i = (int)(kt - kt0), cur = i % S, bcur = DIRECT ? cur : (i & 1);
        const bool more = kt + 1 < kt1;
        if (kt + S - 1 < kt1) { /* into the stage read in the previous iteration */
            load_a(kt + S - 1, (i + S - 1) % S);
            if constexpr (DIRECT) load_b(kt + S - 1, (i + S - 1) % S);
        }
        ggc_cp_async_commit();
        if constexpr (!DIRECT) {
            if (more) load_b(kt + 1, 0); /* loads only; converted after the mma below */
        }
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t af[MT][4], bf[4][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const int m = wm * 16 * MT + mt * 16 + (lane & 15), k = ks * 16 + (lane >> 4) * 8;
                ggc_ldmatrix_x4(af[mt], &sA[cur][m * LDS + k]);
            }
#pragma unroll
            for (int np = 0; np < 2; np++) {
                const int j = lane >> 3, n = wn * 32 + np * 16 + (j >> 1) * 8 + (lane & 7), k = ks * 16 + (j & 1) * 8;
                uint32_t r[4];
                ggc_ldmatrix_x4(r, &sB[bcur][n * LDS + k]);
                bf[2 * np][0] = r[0], bf[2 * np][1] = r[1], bf[2 * np + 1][0] = r[2], bf[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) ggc_mma16816<BF>(acc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
        }
        if constexpr (!DIRECT) {
            if (more) store_b(kt + 1, bcur ^ 1);
        }
        ggc_cp_async_wait<S - 2>();
        __syncthreads();
    }
    ggc_cp_async_wait<0>();

    ggc_mmq_store_tile<MT>(a, acc, s_arow, s_doff, n0, sk, wm, wn, lane);
}

/* split-K: dst(i0, i11, i12, i13) = the sum over slices of partial[slice][i11 + ne11 * (i12 + ne12 * i13)][i0] */
static __global__ void ggc_k_mmq_reduce(const ggc_mm_args a, int64_t total) {
    GGC_PDL_BEGIN();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int64_t n = i % a.N, r = i / a.N;
    float sum = 0.0f;
    for (int s = 0; s < a.split; s++) sum += a.partial[(s * a.partial_rows + r) * a.N + n];
    const int64_t i11 = r % a.ne11, i12 = (r / a.ne11) % a.ne12, i13 = r / (a.ne11 * a.ne12);
    ggc_mm_store(a, i11 * a.nbd1 + i12 * a.nbd2 + i13 * a.nbd3 + n * a.nbd0, sum);
}

#include "ggc_cuda_mmq4.cuh"

/* ------------------------------------------------------------------ MUL_MAT_ID grouping */

/* One block: count pairs per expert, offsets, pair lists (by expert), and the tile list. */
static __global__ void ggc_k_moe_group(ggc_mm_args a, int64_t n_tok, int bm, int *counts, int *offs, int *pairs, int2 *tiles,
                                int *n_tiles) {
    GGC_PDL_BEGIN();
    const int64_t n_pairs = a.n_used * n_tok;
    for (int64_t e = threadIdx.x; e < a.n_as; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int e = *(const int32_t *)(a.ids + (p % a.n_used) * a.ids_nb0 + (p / a.n_used) * a.ids_nb1);
        if (e >= 0 && e < a.n_as) atomicAdd(&counts[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, nt = 0;
        for (int64_t e = 0; e < a.n_as; e++) {
            offs[e] = off;
            for (int m = 0; m < counts[e]; m += bm) tiles[nt++] = make_int2((int)e, m);
            const int c = counts[e];
            counts[e] = off; /* from here on: the expert's cursor */
            off += c;
        }
        offs[a.n_as] = off;
        *n_tiles = nt;
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int e = *(const int32_t *)(a.ids + (p % a.n_used) * a.ids_nb0 + (p / a.n_used) * a.ids_nb1);
        if (e >= 0 && e < a.n_as) pairs[atomicAdd(&counts[e], 1)] = (int)p;
    }
}

/* ------------------------------------------------------------------ host side */

namespace {

enum mm_path { PATH_MMVQ, PATH_MMVF, PATH_MMQ, PATH_MMQ4 };

size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* GGC_CUDA_MMQ4=0: q4_0 weights on the general tensor-core kernel too (for comparisons), read once */
bool mmq4_enabled() {
    static const bool on = !(getenv("GGC_CUDA_MMQ4") && getenv("GGC_CUDA_MMQ4")[0] == '0');
    return on;
}
/* the tensor-core path of weight type t: ggc_k_mmq4 for q4_0 (GGUF or regrouped), else ggc_k_mmq */
mm_path mmq_path(ggc_type t) {
    return (t == GGC_TYPE_Q4_0 || t == GGC_TYPE_Q4_0R8) && mmq4_enabled() ? PATH_MMQ4 : PATH_MMQ;
}

/* matrix-vector kernels up to 8 columns of quantized weights (8-bit dot products), 2 of float
 * weights; tensor cores above */
mm_path choose_path(const ggc_tensor *w, int64_t cols) {
    if (ggc_cuda_is_quant(w->type)) return cols <= GGC_MMV_MAX_COLS ? PATH_MMVQ : mmq_path(w->type);
    return cols <= GGC_MMVF_MAX_COLS ? PATH_MMVF : PATH_MMQ;
}
int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* bytes of converted src1 for `rows` rows of k elements */
size_t act_bytes(mm_path p, int64_t rows, int64_t k) {
    switch (p) {
    case PATH_MMVQ: return align256(ggc_q8a_size(rows, k));
    case PATH_MMVF: return align256((size_t)rows * (size_t)round_up(k, 8) * 4);
    default: return align256((size_t)rows * (size_t)round_up(k, GGC_MMQ_BK) * 2);
    }
}

/* a kernel template over the activation quantization of weight type t */
#define GGC_ACTQ_LAUNCH(t, kern, grid, block, st, ...)                                                            \
    switch (ggc_actq_of(t)) {                                                                                      \
    case GGC_ACTQ_Q8_1: ggc_launch(kern<GGC_ACTQ_Q8_1>, grid, block, 0, st, __VA_ARGS__); break;                          \
    case GGC_ACTQ_Q8_K: ggc_launch(kern<GGC_ACTQ_Q8_K>, grid, block, 0, st, __VA_ARGS__); break;                          \
    default: ggc_launch(kern<GGC_ACTQ_Q8_0>, grid, block, 0, st, __VA_ARGS__); break;                                    \
    }

/* src1 that the float matrix-vector kernels can read in place: contiguous f32 rows of whole
 * 16-byte groups, 16-byte aligned */
bool direct_f32(const ggc_tensor *b) {
    return b->type == GGC_TYPE_F32 && b->ne[0] % 8 == 0 && (uintptr_t)b->data % 16 == 0 && ggc_cuda_is_contiguous(b);
}

/* src1 (any strides, f32 / f16 / bf16) into the work buffer in the path's format. With quantized
 * weights src1 goes through the CPU's quantization for that weight type (ggml-CPU quantizes it
 * before its integer dots): q8a for mmvq, dequantized f16 for mmq (in ggc_mmq4_pos order for mmq4). */
void convert_act(mm_path p, const ggc_tensor *b, const ggc_tensor *w, void *work, cudaStream_t st, ggc_mm_args &a,
                 bool ready = false) {
    const ggc_cuda_shape s = ggc_cuda_shape_of(b);
    const int64_t rows = ggc_cuda_nrows(b), k = b->ne[0];
    const int64_t nblocks = rows * (k / ggc_actq_blck(ggc_actq_of(w->type))); /* quantized weights */
    const unsigned qgrid = ggc_cuda_grid(nblocks, 8);                           /* 8 warps a CTA */
    if (p == PATH_MMVQ) {
        int8_t *q = (int8_t *)work;
        ggc_q8a_meta *meta = (ggc_q8a_meta *)((char *)work + (size_t)rows * (size_t)k);
        a.act = q;
        a.act_aux = meta;
        a.act_stride = k;
        if (ready) return;
        GGC_ACTQ_LAUNCH(w->type, ggc_k_quantize_q8a, qgrid, 256, st, (const uint8_t *)b->data, b->type, s, nblocks, q,
                        meta);
        return;
    }
    if (p == PATH_MMVF && direct_f32(b)) { /* already the rows mmvf reads: no conversion kernel */
        a.act = b->data;
        a.act_aux = nullptr;
        a.act_stride = k;
        return;
    }
    const int64_t stride = p == PATH_MMVF ? round_up(k, 8) : round_up(k, GGC_MMQ_BK);
    a.act = work;
    a.act_aux = nullptr;
    a.act_stride = stride;
    if (ready) return;
    if (p == PATH_MMQ4) { /* q4_0: q8_0 activations, in the kernel's order */
        ggc_launch(ggc_k_fake_quant_rows<GGC_ACTQ_Q8_0, true>, qgrid, 256, 0, st, (const uint8_t *)b->data, b->type, s,
                   stride, nblocks, (uint16_t *)work);
        return;
    }
    if (p == PATH_MMQ && ggc_cuda_is_quant(w->type)) {
        GGC_ACTQ_LAUNCH(w->type, ggc_k_fake_quant_rows, qgrid, 256, st, (const uint8_t *)b->data, b->type, s, stride,
                        nblocks, (uint16_t *)work);
        return;
    }
    const ggc_type ot = p == PATH_MMVF ? GGC_TYPE_F32 : w->type == GGC_TYPE_BF16 ? GGC_TYPE_BF16 : GGC_TYPE_F16;
    const int64_t total = rows * stride;
    ggc_launch(ggc_k_convert_rows, ggc_cuda_grid(total, 256), 256, 0, st, (const uint8_t *)b->data, b->type, s, stride, total,
                                                                   work, ot);
}
#undef GGC_ACTQ_LAUNCH

bool aligned16(const ggc_tensor *t) {
    return ((uintptr_t)t->data % 16 == 0) && t->nb[1] % 16 == 0 && t->nb[2] % 16 == 0 && t->nb[3] % 16 == 0;
}

/* ---- kernel tables */
typedef void (*mm_kernel)(const ggc_mm_args);

/* GGC_CUDA_STAGED_MMV=1: the shared-memory staged matrix-vector kernel instead of the direct-load
 * ones (for comparisons), read once */
bool staged_mmv() {
    static const bool staged = getenv("GGC_CUDA_STAGED_MMV") && getenv("GGC_CUDA_STAGED_MMV")[0] == '1';
    return staged;
}

template <ggc_type T> mm_kernel mmvq_kernel(int nc) {
    static const mm_kernel g[8] = {ggc_k_gemv<T, 1>, ggc_k_gemv<T, 2>, ggc_k_gemv<T, 3>, ggc_k_gemv<T, 4>,
                                   ggc_k_gemv<T, 5>, ggc_k_gemv<T, 6>, ggc_k_gemv<T, 7>, ggc_k_gemv<T, 8>};
    if constexpr (T != GGC_TYPE_Q4_0R8) { /* the staged kernel reads GGUF blocks only */
        static const mm_kernel k[8] = {ggc_k_mmvq<T, 1>, ggc_k_mmvq<T, 2>, ggc_k_mmvq<T, 3>, ggc_k_mmvq<T, 4>,
                                       ggc_k_mmvq<T, 5>, ggc_k_mmvq<T, 6>, ggc_k_mmvq<T, 7>, ggc_k_mmvq<T, 8>};
        if (staged_mmv()) return k[nc - 1];
    }
    return g[nc - 1];
}
typedef void (*mmvf_kernel_t)(const ggc_mm_args, bool);
template <ggc_type T, int LPR> mmvf_kernel_t mmvf_kernel2(int nc) {
    static const mmvf_kernel_t k[8] = {ggc_k_mmvf<T, 1, LPR>, ggc_k_mmvf<T, 2, LPR>, ggc_k_mmvf<T, 3, LPR>,
                                       ggc_k_mmvf<T, 4, LPR>, ggc_k_mmvf<T, 5, LPR>, ggc_k_mmvf<T, 6, LPR>,
                                       ggc_k_mmvf<T, 7, LPR>, ggc_k_mmvf<T, 8, LPR>};
    return k[nc - 1];
}
template <ggc_type T> mmvf_kernel_t mmvf_kernel(int nc, int lpr) {
    return lpr == 8 ? mmvf_kernel2<T, 8>(nc) : lpr == 16 ? mmvf_kernel2<T, 16>(nc) : mmvf_kernel2<T, 32>(nc);
}
template <ggc_type T> mm_kernel mmq_kernel(int mt, bool vec) {
    if constexpr (ggc_cuda_is_quant(T)) {
        return mt == 1 ? ggc_k_mmq<T, 1, false> : mt == 2 ? ggc_k_mmq<T, 2, false> : ggc_k_mmq<T, 4, false>;
    } else {
        if (vec) return mt == 1 ? ggc_k_mmq<T, 1, true> : mt == 2 ? ggc_k_mmq<T, 2, true> : ggc_k_mmq<T, 4, true>;
        return mt == 1 ? ggc_k_mmq<T, 1, false> : mt == 2 ? ggc_k_mmq<T, 2, false> : ggc_k_mmq<T, 4, false>;
    }
}

#define GGC_MM_TYPES(X)                                                                                              \
    X(GGC_TYPE_Q4_0) X(GGC_TYPE_Q4_0R8) X(GGC_TYPE_Q4_1) X(GGC_TYPE_Q5_0) X(GGC_TYPE_Q5_1) X(GGC_TYPE_Q8_0) X(GGC_TYPE_Q2_K)             \
        X(GGC_TYPE_Q3_K) X(GGC_TYPE_Q4_K) X(GGC_TYPE_Q5_K) X(GGC_TYPE_Q6_K)
#define GGC_MM_FLOAT_TYPES(X) X(GGC_TYPE_F32) X(GGC_TYPE_F16) X(GGC_TYPE_BF16)

/* one-column kernels: ggc_k_gemv1 2 rows a block, ggc_k_gemvf1 2 rows a warp; or 1 SWIGLU row (a
 * gate and an up row) */
#define GGC_GEMV1_ROWS 2
#define GGC_GEMVF1_ROWS 2
static_assert(GGC_GEMV1_ROWS % 2 == 0,
              "the ROPE epilogue of sibling products rotates row pairs (2i, 2i + 1) that one row group holds");
int gemv_rows_per_block(bool quant, bool swiglu) {
    return quant ? (swiglu ? 1 : GGC_GEMV1_ROWS) : GGC_GEMVF1_WARPS * (swiglu ? 1 : GGC_GEMVF1_ROWS);
}
mm_kernel pick_gemv1(ggc_type t, bool swiglu, int nt) {
    switch (t) {
#define X(T)                                                                                                 \
    case T:                                                                                                  \
        if (nt == 64) return swiglu ? ggc_k_gemv1<T, 1, true, 64> : ggc_k_gemv1<T, GGC_GEMV1_ROWS, false, 64>; \
        return swiglu ? ggc_k_gemv1<T, 1, true> : ggc_k_gemv1<T, GGC_GEMV1_ROWS, false>;
        GGC_MM_TYPES(X) X(GGC_TYPE_Q6_KR8) /* q6_K regrouped: kept so for one-column products only */
#undef X
    default: return nullptr;
    }
}
/* ggc_k_gemv1's grid for `groups` row groups: at most as many blocks as the device holds at once, each
 * then covering several groups. GGC_GEMV1_BLOCKS=0: one block a group (for measuring); =N: at most N
 * blocks (for tests of the several-groups path on small products). */
dim3 gemv1_grid(mm_kernel k, int nt, ggc_mm_args &a, int64_t groups, int64_t nz, const ggc_cuda_ctx *ctx) {
    static struct {
        mm_kernel k;
        int per_sm;
    } seen[64];
    static int nseen = 0;
    a.vblocks = groups;
    const char *env = getenv("GGC_GEMV1_BLOCKS");
    if (env && *env) {
        const long n = strtol(env, nullptr, 10);
        return dim3((unsigned)(n > 0 && n < groups ? n : groups), (unsigned)nz);
    }
    int per_sm = 0, i = 0;
    while (i < nseen && seen[i].k != k) i++;
    if (i < nseen) {
        per_sm = seen[i].per_sm;
    } else if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, nt, 0) != cudaSuccess) {
        cudaGetLastError();
        per_sm = 0;
    } else if (nseen < 64) {
        seen[nseen++] = {k, per_sm};
    }
    const int64_t cap = ctx->n_sm > 0 && per_sm > 0 ? (int64_t)ctx->n_sm * per_sm : groups;
    return dim3((unsigned)(groups < cap ? groups : cap), (unsigned)nz);
}
mm_kernel pick_gemvf1(ggc_type t, bool swiglu) {
    switch (t) {
#define X(T) \
    case T: return swiglu ? ggc_k_gemvf1<T, 1, true> : ggc_k_gemvf1<T, GGC_GEMVF1_ROWS, false>;
        GGC_MM_FLOAT_TYPES(X)
#undef X
    default: return nullptr;
    }
}
mm_kernel pick_mmvq(ggc_type t, int nc) {
    switch (t) {
#define X(T) \
    case T: return mmvq_kernel<T>(nc);
        GGC_MM_TYPES(X)
#undef X
    default: return nullptr;
    }
}
mmvf_kernel_t pick_mmvf(ggc_type t, int nc, int lpr) {
    switch (t) {
#define X(T) \
    case T: return mmvf_kernel<T>(nc, lpr);
        GGC_MM_FLOAT_TYPES(X)
#undef X
    default: return nullptr;
    }
}
mm_kernel pick_mmq_raw(ggc_type t, int mt, bool vec) {
    switch (t) {
#define X(T) \
    case T: return mmq_kernel<T>(mt, vec);
        GGC_MM_TYPES(X)
        GGC_MM_FLOAT_TYPES(X)
#undef X
    default: return nullptr;
    }
}

template <ggc_type T> mm_kernel mmq4_kernel(int mt) {
    return mt == 1 ? ggc_k_mmq4<T, 1> : mt == 2 ? ggc_k_mmq4<T, 2> : ggc_k_mmq4<T, 4>;
}
mm_kernel pick_mmq4(ggc_type t, int mt) {
    return t == GGC_TYPE_Q4_0R8 ? mmq4_kernel<GGC_TYPE_Q4_0R8>(mt) : t == GGC_TYPE_Q4_0 ? mmq4_kernel<GGC_TYPE_Q4_0>(mt) : nullptr;
}

/* launch the tensor-core kernel of path p (PATH_MMQ, PATH_MMQ4) for weight type t, with its shared
 * memory above 48 KB opted into */
void launch_mmq(mm_path p, ggc_type t, int mt, bool vec, dim3 grid, const ggc_mm_args &a, cudaStream_t st) {
    const mm_kernel k = p == PATH_MMQ4 ? pick_mmq4(t, mt) : pick_mmq_raw(t, mt, vec);
    if (!k) return;
    const bool direct = vec && (t == GGC_TYPE_F16 || t == GGC_TYPE_BF16);
    const size_t smem = p == PATH_MMQ4 ? ggc_mmq4_smem_bytes(mt) : ggc_mmq_smem_bytes(mt, direct);
    /* per device and cheap: set on every launch rather than cached */
    GGC_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    ggc_launch(k, grid, GGC_MMQ_THREADS, smem, st, a);
}

ggc_mm_args base_args(const ggc_node *n) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1], *d = &n->dst;
    ggc_mm_args a = {};
    a.w = (const uint8_t *)w->data;
    a.K = w->ne[0];
    a.N = w->ne[1];
    a.nb01 = (int64_t)w->nb[1];
    a.nb02 = (int64_t)w->nb[2];
    a.nb03 = (int64_t)w->nb[3];
    a.ne02 = w->ne[2];
    a.ne03 = w->ne[3];
    a.ne11 = b->ne[1];
    a.ne12 = b->ne[2];
    a.ne13 = b->ne[3];
    a.r2 = a.ne02 > 0 ? b->ne[2] / a.ne02 : 1;
    a.r3 = a.ne03 > 0 ? b->ne[3] / a.ne03 : 1;
    a.dst = (uint8_t *)d->data;
    a.nbd0 = (int64_t)d->nb[0];
    a.nbd1 = (int64_t)d->nb[1];
    a.nbd2 = (int64_t)d->nb[2];
    a.nbd3 = (int64_t)d->nb[3];
    return a;
}

int mmq_mt(int64_t rows_per_tile_hint) { return rows_per_tile_hint >= 128 ? 4 : rows_per_tile_hint >= 64 ? 2 : 1; }

/* matrix-vector launch: grid rows = weight rows, grid.y = z */
void launch_mmv(mm_path p, const ggc_tensor *w, const ggc_mm_args &a, int nc, int64_t nz, cudaStream_t st) {
    if (p == PATH_MMVQ) {
        const dim3 grid(ggc_cuda_grid(a.N, GGC_MMVQ_WARPS * ggc_mmv_rows(nc)), (unsigned)nz);
        ggc_launch(pick_mmvq(w->type, nc), grid, GGC_MMVQ_WARPS * 32, 0, st, a);
    } else {
        const int lpr = a.K <= 64 ? 8 : a.K <= 128 ? 16 : 32;
        const bool vec = aligned16(w);
        const int64_t groups = ggc_cdiv(a.N, ggc_mmv_rows(nc));
        const dim3 grid(ggc_cuda_grid(groups * lpr, GGC_MMVF_THREADS), (unsigned)nz);
        ggc_launch(pick_mmvf(w->type, nc, lpr), grid, GGC_MMVF_THREADS, 0, st, a, vec);
    }
}

}  // namespace

/* ------------------------------------------------------------------ MUL_MAT */

namespace {

#define GGC_MMQ_TARGET_CTAS 264 /* two per multiprocessor of an H100; split-K below that */

struct mmq_plan {
    int mt, split;
    dim3 grid;
    size_t partial_bytes;
};
mmq_plan plan_mmq(const ggc_node *n, mm_path path) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1];
    mmq_plan p;
    p.mt = mmq_mt(b->ne[1]);
    const int64_t gx = ggc_cdiv(w->ne[1], GGC_MMQ_BN), gy = ggc_cdiv(b->ne[1], 32 * p.mt), gz = b->ne[2] * b->ne[3];
    const int64_t nk = ggc_cdiv(w->ne[0], path == PATH_MMQ4 ? GGC_MMQ4_BK : GGC_MMQ_BK), ctas = gx * gy * gz;
    p.split = 1;
    while (p.split < 8 && ctas * p.split < GGC_MMQ_TARGET_CTAS && nk / (2 * p.split) >= 8) p.split *= 2;
    p.grid = dim3((unsigned)gx, (unsigned)gy, (unsigned)(gz * p.split));
    p.partial_bytes = p.split > 1 ? align256((size_t)p.split * (size_t)ggc_cuda_nrows(b) * (size_t)w->ne[1] * 4) : 0;
    return p;
}

/* float weights that ggc_k_gemvf1 reads: 16-byte aligned rows of whole 8-element groups */
bool gemvf1_ok(const ggc_tensor *w) { return !ggc_cuda_is_quant(w->type) && aligned16(w) && w->ne[0] % 8 == 0; }

bool mmq_vec(const ggc_tensor *w) { return !ggc_cuda_is_quant(w->type) && aligned16(w) && w->ne[0] % 8 == 0; }

/* MUL_MAT with src[4], src[5] (and src[6], src[7]): more products of src1, each (weight, dst), in one
 * launch of the one-column kernel with the first; every weight of src0's type and row layout. A later
 * product whose dst is an f16 / bf16 cache takes the row that its index picks, src[8] for the second
 * product and src[9] for the third (a fused SET_ROWS). src[2], when present: the positions of a ROPE
 * whose op_params the node carries, applied to the products whose bit is set in op_params[0] (ROPE's
 * unused n_past word) as they store (the generated program checked that it rotates adjacent pairs of
 * whole heads, for one token; src[3] its frequency factors or null). */
void launch_siblings(const ggc_node *n, mm_path p, ggc_mm_args &a, const ggc_cuda_ctx *ctx) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1];
    const bool quant = p == PATH_MMVQ;
    bool ok = (quant || (p == PATH_MMVF && gemvf1_ok(w))) && b->ne[1] == 1 && b->ne[2] == 1 && b->ne[3] == 1;
    const ggc_tensor *ws[3] = {w, &n->src[4], &n->src[6]}, *ds[3] = {&n->dst, &n->src[5], &n->src[7]};
    const ggc_tensor *idx[3] = {nullptr, &n->src[8], &n->src[9]};
    const int rows = gemv_rows_per_block(quant, false);
    a.nseg = n->src[6].data ? 3 : 2;
    a.seg_block[0] = 0;
    a.rope_segs = n->src[2].data ? n->op_params[0] : 0;
    if (a.rope_segs) {
        const ggc_tensor *pos = &n->src[2], *ff = &n->src[3];
        a.rope_head = n->op_params[1]; /* n_dims: every channel of a head rotates */
        a.rope_pos = (const int32_t *)pos->data;
        a.rope_ff = ff->data ? (const float *)ff->data : nullptr;
        a.rope = ggc_rope_yarn_of(n, (int)a.rope_head);
        ok = ok && quant && n->op_params[2] == 0 && a.rope_head > 0 && a.rope_head % 2 == 0 && pos->type == GGC_TYPE_I32 &&
             ggc_cuda_nelements(pos) == 1 && (!ff->data || ff->type == GGC_TYPE_F32) && a.rope_segs < (1 << a.nseg);
    }
    for (int s = 0; s < a.nseg && ok; s++) {
        const ggc_tensor *ws_ = ws[s], *d = ds[s];
        ok = ws_->type == w->type && ws_->ne[0] == w->ne[0] && ws_->nb[1] == w->nb[1] && ws_->ne[2] == 1 &&
             ws_->ne[3] == 1 && (quant || aligned16(ws_));
        if ((a.rope_segs >> s & 1) && ws_->ne[1] % a.rope_head) ok = false;
        a.seg_cache[s] = -1;
        if (s > 0 && d->type != GGC_TYPE_F32 && idx[s]->data) {
            /* a fused SET_ROWS: d is the cache, its row *idx takes this product's column */
            const ggc_tensor *ix = idx[s];
            ok = ok && (d->type == GGC_TYPE_F16 || d->type == GGC_TYPE_BF16) && d->nb[0] == 2 && d->ne[0] == ws_->ne[1] &&
                 (ix->type == GGC_TYPE_I32 || ix->type == GGC_TYPE_I64) && ggc_cuda_nelements(ix) == 1;
            a.seg_cache[s] = d->type;
            a.seg_idx[s] = ix->data;
            a.seg_idx64[s] = ix->type == GGC_TYPE_I64;
            a.seg_nb1[s] = (int64_t)d->nb[1];
        } else {
            /* f32 rows in a row, whatever the shape (a roped product's result is [head, heads]) */
            ok = ok && d->type == GGC_TYPE_F32 && ggc_cuda_is_contiguous(d) && ggc_cuda_nelements(d) == ws_->ne[1];
        }
        a.seg_w[s] = (const uint8_t *)ws_->data;
        a.seg_dst[s] = (uint8_t *)d->data;
        a.seg_rows[s] = ws_->ne[1];
        a.seg_block[s + 1] = a.seg_block[s] + ggc_cdiv(ws_->ne[1], rows);
    }
    if (!ok)
        GGC_UNSUPPORTED("MUL_MAT with src[4..7] (sibling products): one column, weights of one layout, f32 results "
                        "(later ones may be f16/bf16 cache rows, src[8] / src[9] their one index), a ROPE of "
                        "adjacent pairs over whole heads (quantized weights)");
    convert_act(p, b, w, ctx->work, ctx->stream, a, ctx->act_ready != 0);
    if (quant) {
        const int nt = ggc_gemv1_threads(a.K);
        const mm_kernel k = pick_gemv1(w->type, false, nt);
        const dim3 grid = gemv1_grid(k, nt, a, a.seg_block[a.nseg], 1, ctx);
        ggc_launch(k, grid, nt, 0, ctx->stream, a);
    } else {
        ggc_launch(pick_gemvf1(w->type, false), dim3((unsigned)a.seg_block[a.nseg], 1), GGC_GEMVF1_WARPS * 32, 0,
                   ctx->stream, a);
    }
}

}  // namespace

extern "C" size_t ggc_cuda_work_mul_mat(const ggc_node *n) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1];
    const mm_path p = choose_path(w, b->ne[1]);
    const size_t act = act_bytes(p, ggc_cuda_nrows(b), b->ne[0]);
    return p == PATH_MMQ || p == PATH_MMQ4 ? act + plan_mmq(n, p).partial_bytes : act;
}

extern "C" void ggc_cuda_op_mul_mat(const ggc_node *n, const ggc_cuda_ctx *ctx) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1];
    if (ggc_cuda_nelements(&n->dst) == 0) return;
    const mm_path p = choose_path(w, b->ne[1]);
    ggc_mm_args a = base_args(n);
    a.split = 1;
    a.w_const = ctx->w_const && ggc_pdl_prefetch();
    if (n->src[4].data) { /* sibling products of one column (the generated program checked the layouts) */
        launch_siblings(n, p, a, ctx);
        return;
    }
    if (n->src[3].data) { /* SWIGLU of two products of one column (the generated program checked the shapes) */
        const ggc_tensor *w2 = &n->src[3];
        bool ok = (p == PATH_MMVQ || (p == PATH_MMVF && gemvf1_ok(w))) && w2->type == w->type && b->ne[1] == 1 &&
                  b->ne[2] == 1 && b->ne[3] == 1 && w->ne[2] == 1 && w->ne[3] == 1 && aligned16(w2);
        for (int i = 0; i < 4; i++) ok = ok && w2->ne[i] == w->ne[i] && w2->nb[i] == w->nb[i];
        if (!ok) GGC_UNSUPPORTED("MUL_MAT with src[3] (SWIGLU): one column, weights of one layout (float: 16-byte rows)");
        a.w2 = (const uint8_t *)w2->data;
    }
    if (n->src[2].data) { /* a fused residual ADD: the generated program checked the layouts */
        const ggc_tensor *r = &n->src[2], *d = &n->dst;
        for (int i = 0; i < 4; i++)
            if (r->ne[i] != d->ne[i] || r->nb[i] != d->nb[i] || r->type != GGC_TYPE_F32 || d->type != GGC_TYPE_F32)
                GGC_UNSUPPORTED("MUL_MAT's added src[2] must be f32 laid out as dst");
        a.add = (const uint8_t *)r->data;
    }
    if (w->type == GGC_TYPE_Q6_KR8 && !(p == PATH_MMVQ && a.ne11 == 1 && a.r2 == 1 && a.r3 == 1))
        GGC_UNSUPPORTED("MUL_MAT: q6_K regrouped weights (GGC_TYPE_Q6_KR8) are for one-column products only");
    convert_act(p, b, w, ctx->work, ctx->stream, a, ctx->act_ready != 0);
    if (p == PATH_MMQ || p == PATH_MMQ4) {
        const mmq_plan pl = plan_mmq(n, p);
        a.split = pl.split;
        if (pl.split > 1) {
            a.partial = (float *)((char *)ctx->work + act_bytes(p, ggc_cuda_nrows(b), b->ne[0]));
            a.partial_rows = ggc_cuda_nrows(b);
        }
        launch_mmq(p, w->type, pl.mt, mmq_vec(w), pl.grid, a, ctx->stream);
        if (pl.split > 1) {
            const int64_t total = a.partial_rows * a.N;
            ggc_launch(ggc_k_mmq_reduce, ggc_cuda_grid(total, 256), 256, 0, ctx->stream, a, total);
        }
        return;
    }
    if (p == PATH_MMVQ && a.ne11 == 1 && a.r2 == 1 && a.r3 == 1 &&
        (a.w2 || !staged_mmv() || w->type == GGC_TYPE_Q6_KR8)) { /* batch-1 decode */
        const int nt = ggc_gemv1_threads(a.K);
        const mm_kernel k = pick_gemv1(w->type, a.w2 != nullptr, nt);
        const dim3 grid = gemv1_grid(k, nt, a, ggc_cuda_grid(a.N, gemv_rows_per_block(true, a.w2)), a.ne12 * a.ne13, ctx);
        ggc_launch(k, grid, nt, 0, ctx->stream, a);
        return;
    }
    if (p == PATH_MMVF && a.ne11 == 1 && a.r2 == 1 && a.r3 == 1 && gemvf1_ok(w)) { /* batch-1 decode */
        const dim3 grid(ggc_cuda_grid(a.N, gemv_rows_per_block(false, a.w2)), (unsigned)(a.ne12 * a.ne13));
        ggc_launch(pick_gemvf1(w->type, a.w2 != nullptr), grid, GGC_GEMVF1_WARPS * 32, 0, ctx->stream, a);
        return;
    }
    const int64_t shared_cols = a.ne11 * a.r2 * a.r3;
    if ((a.r2 > 1 || a.r3 > 1) && shared_cols <= GGC_MMV_MAX_COLS) {
        a.grouped = 1;
        launch_mmv(p, w, a, (int)shared_cols, a.ne02 * a.ne03, ctx->stream);
    } else {
        launch_mmv(p, w, a, (int)a.ne11, a.ne12 * a.ne13, ctx->stream);
    }
}

/* ------------------------------------------------------------------ MUL_MAT_ID */

namespace {
/* how MUL_MAT_ID runs: per (slot, token) pair (up to 8 tokens), grouped by expert in tiles of up
 * to 8 pairs through the matrix-vector kernels (sparse: at most 8 pairs per expert on average),
 * or grouped into tensor-core tiles */
enum id_mode { ID_PAIRS, ID_GROUPED_MMV, ID_GROUPED_MMQ };
id_mode choose_id(const ggc_node *n) {
    const int64_t n_as = n->src[0].ne[2], n_tok = n->src[2].ne[1], n_pairs = n->src[2].ne[0] * n_tok;
    if (n_tok <= GGC_MMV_MAX_COLS) return ID_PAIRS;
    return n_pairs <= GGC_MMV_MAX_COLS * n_as ? ID_GROUPED_MMV : ID_GROUPED_MMQ;
}
struct id_layout {
    id_mode mode;
    mm_path path;
    int bm; /* pairs per tile */
    size_t counts, offs, pairs, tiles, n_tiles, total;
    int64_t max_tiles;
};
id_layout id_work(const ggc_node *n) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1], *ids = &n->src[2];
    const int64_t n_as = w->ne[2], n_pairs = ids->ne[0] * ids->ne[1];
    id_layout l = {};
    l.mode = choose_id(n);
    l.path = l.mode == ID_GROUPED_MMQ ? mmq_path(w->type) : choose_path(w, 1);
    l.bm = l.mode == ID_GROUPED_MMQ ? 32 * mmq_mt(n_pairs / (n_as > 0 ? n_as : 1)) : GGC_MMV_MAX_COLS;
    size_t o = act_bytes(l.path, ggc_cuda_nrows(b), b->ne[0]);
    if (l.mode != ID_PAIRS) {
        l.max_tiles = n_pairs / l.bm + (n_as < n_pairs ? n_as : n_pairs);
        l.counts = o;
        o += align256((size_t)n_as * 4);
        l.offs = o;
        o += align256((size_t)(n_as + 1) * 4);
        l.pairs = o;
        o += align256((size_t)n_pairs * 4);
        l.tiles = o;
        o += align256((size_t)(l.max_tiles + 1) * 8);
        l.n_tiles = o;
        o += 256;
    }
    l.total = o;
    return l;
}
}  // namespace

extern "C" size_t ggc_cuda_work_mul_mat_id(const ggc_node *n) { return id_work(n).total; }

extern "C" void ggc_cuda_op_mul_mat_id(const ggc_node *n, const ggc_cuda_ctx *ctx) {
    const ggc_tensor *w = &n->src[0], *b = &n->src[1], *ids = &n->src[2];
    if (ggc_cuda_nelements(&n->dst) == 0) return;
    const int64_t n_as = w->ne[2], n_used = ids->ne[0], n_tok = ids->ne[1], n_pairs = n_used * n_tok;
    ggc_mm_args a = base_args(n);
    a.ids = (const uint8_t *)ids->data;
    a.ids_nb0 = (int64_t)ids->nb[0];
    a.ids_nb1 = (int64_t)ids->nb[1];
    a.n_used = n_used;
    a.n_as = n_as;
    a.r2 = a.r3 = 1;
    a.split = 1;
    char *work = (char *)ctx->work;
    const id_layout l = id_work(n);
    convert_act(l.path, b, w, work, ctx->stream, a);
    if (l.mode == ID_PAIRS) {
        launch_mmv(l.path, w, a, 1, n_pairs, ctx->stream);
        return;
    }
    int *counts = (int *)(work + l.counts), *offs = (int *)(work + l.offs), *pairs = (int *)(work + l.pairs);
    int2 *tiles = (int2 *)(work + l.tiles);
    int *n_tiles = (int *)(work + l.n_tiles);
    ggc_launch(ggc_k_moe_group, 1, 1024, 0, ctx->stream, a, n_tok, l.bm, counts, offs, pairs, tiles, n_tiles);
    a.pairs = pairs;
    a.offs = offs;
    a.tiles = tiles;
    a.n_tiles = n_tiles;
    const unsigned nt = (unsigned)(l.max_tiles < 1 ? 1 : l.max_tiles);
    if (l.mode == ID_GROUPED_MMV) {
        launch_mmv(l.path, w, a, GGC_MMV_MAX_COLS, nt, ctx->stream);
        return;
    }
    const dim3 grid(ggc_cuda_grid(a.N, GGC_MMQ_BN), nt, 1);
    launch_mmq(l.path, w->type, l.bm / 32, mmq_vec(w), grid, a, ctx->stream);
}
