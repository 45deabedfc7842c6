// A measuring prototype for issue 6's persistent decode kernel, not product code: the 16 layers of a
// Llama-3.2-1B-shaped Q4_0 decode step (the matrix-vector products, RMS norms, attention over 512 cells,
// SWIGLU and residual adds; no ROPE, KV write, embedding or output head) as ONE launch of one block per
// multiprocessor, to see how far continuous weight streaming plus grid-wide counters get against the
// per-op path's ~40 us a layer (docs/DECODE.md, items 32-34).
//
// What it does differently from the per-op path:
//  - every block walks a fixed list of weight tiles for the whole step (its rows of every product of every
//    layer) and keeps DEPTH of them in flight in a shared-memory ring (cp.async.bulk on mbarriers), whatever
//    the dependency state: the weights of the next products stream while the block waits on a barrier or
//    works on attention;
//  - dependencies are counters in global memory (every block adds 1 when it has finished a stage; a stage's
//    consumers spin until the count reaches the grid), 5 a layer;
//  - norms, the activations' q8 quantization and attention's merge run redundantly in every block at the
//    start of the stage that needs them, instead of as kernels (and barriers) of their own.
//
// Usage: nvcc -O3 -arch=sm_90 -std=c++17 [-DSHAPE_7B] bench/persist_proto.cu -o /tmp/pp && /tmp/pp
// Prints, per variant, microseconds a step and a layer and the weight bytes over that time, beside the device's
// copy bandwidth measured in the same run. Weights and caches are random; the check is that two runs of
// the full variant give the same residual bit for bit and that it is finite.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* the shapes: Llama-3.2-1B by default; -DSHAPE_7B for Llama-2-7B (no GQA, 128-wide heads, 32 layers) */
#ifdef SHAPE_7B
constexpr int H = 4096, FF = 11008, NL = 32, NH = 32, NKV = 32, HD = 128;
#else
constexpr int H = 2048, FF = 8192, NL = 16, NH = 32, NKV = 8, HD = 64;
#endif
constexpr int QKV = H + 2 * NKV * HD, CELLS = 512, SPLIT = 4;
#ifndef THREADS
#define THREADS 512
#endif
constexpr int WARPS = THREADS / 32;
#ifdef SHAPE_7B
constexpr int SLOT = 32 * 1024, MAX_DEPTH = 3; /* the attention merge's scratch is larger */
#else
constexpr int SLOT = 32 * 1024, MAX_DEPTH = 5;
#endif
constexpr int KMAX = FF;
/* scratch floats a block: [0, H) the norm's and the merge's rows; from H the merge's partials, or attention's
 * K and V slice (loaded ahead with kvpre), scores and per-subset sums; or h (FF) from 0 */
constexpr int ATT = (CELLS / SPLIT) * HD + (CELLS / SPLIT) + (THREADS / HD) * HD;
constexpr int BUF = H + (NH * SPLIT * (HD + 2) > ATT ? NH * SPLIT * (HD + 2) : ATT);
static_assert(BUF >= FF, "scratch");
enum { S_QKV, S_O, S_GU, S_DOWN, NSTAGE };
constexpr int NPH = 16, TRACE_LAYER = 5; /* phase marks of one layer, for the breakdown */
__host__ __device__ constexpr int stage_k(int s) { return s == S_DOWN ? FF : H; }
constexpr int STAGE_N[NSTAGE] = {QKV, H, 2 * FF, H}; /* GU: gate row i at 2i, up row i at 2i + 1 */

/* q4_0 regrouped by 8 blocks as ggc keeps it (GGC_TYPE_Q4_0R8): 8 f16 scales, then 8 x 16 quant bytes */
__host__ __device__ constexpr int row_bytes(int K) { return K / 256 * 144; }

struct Tile {
    int stage; /* layer * NSTAGE + stage */
    int row0, nrows;
};
struct Args {
    const uint8_t *w[NL][NSTAGE];
    const float *nw[NL][2];
    const __half *kc[NL], *vc[NL]; /* [CELLS][NKV][HD] */
    float *x, *qkv, *part, *h;     /* part: [NH][SPLIT][HD + 2] attention partials */
    float *attn;                   /* [H]: the merged attention output (merge1) */
    unsigned *headcnt;             /* [NL][NH]: splits of a head done (merge1) */
    int merge1;                    /* the last split of a head to finish merges it, once, into attn */
    const Tile *tiles;
    const int *tile_off;
    unsigned *bar; /* [NL][5] */
    int depth, wait;
    int barmode;    /* see arrive */
    int flags;      /* barriers as one flag a block (release stores, a warp polls them) instead of a counter */
    unsigned *flag; /* [NL * 5][grid] */
    int kvpre;      /* attention's K and V slice loaded (cp.async) at the layer's start, before its barriers */
    unsigned long long *trace; /* [grid][NPH]: %globaltimer at each phase of layer TRACE_LAYER (thread 0), or null */
    int skip; /* for the breakdown: 1 attention and its merge, 2 the norms, 4 the products' math, 8 the h fetch */
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *b) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(b)));
}
__device__ __forceinline__ void bulk(void *dst, const void *src, uint32_t n, uint64_t *b) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(n) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(n), "r"(smem_u32(b))
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
}
/* a flag barrier: every block stores 1 to its own flag with release semantics; a waiting block's first warp
 * polls all the flags (a few a lane) with acquire loads. No atomics and no single contended word. */
__device__ __forceinline__ void flag_arrive(unsigned *f) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("st.release.gpu.global.u32 [%0], 1;" ::"l"(f + blockIdx.x) : "memory");
}
__device__ __forceinline__ void flag_wait(unsigned *f) {
    if (threadIdx.x < 32) {
        for (int b = threadIdx.x; b < (int)gridDim.x; b += 32) {
            unsigned v;
            do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(f + b) : "memory");
            while (v == 0);
        }
        __syncwarp();
    }
    __syncthreads();
}
/* barmode 0: fence, then a relaxed atomic add; pollers spin on acquire loads. 1: the same, pollers back off
 * (__nanosleep) between loads. 2: a release reduction (red.release.gpu) instead of fence + atomic, and backing
 * off. */
__device__ __forceinline__ void arrive(unsigned *c, int mode) {
    __syncthreads();
    if (threadIdx.x == 0) {
        if (mode == 2) {
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(c) : "memory");
        } else {
            __threadfence();
            atomicAdd(c, 1u);
        }
    }
}
__device__ __forceinline__ void wait_all(const Args &a, unsigned *c) {
    if (a.wait && threadIdx.x == 0) {
        unsigned v;
        while (true) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
            if (v >= gridDim.x) break;
            if (a.barmode) __nanosleep(64);
        }
    }
    __syncthreads();
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < WARPS; i++) t += red[i];
    __syncthreads();
    return t;
}

/* the stage's input as q8 activations in shared memory: 32-element blocks, int8 quants + {d, d * sum} */
struct Act {
    int8_t q[KMAX];
    float2 m[KMAX / 32];
};
__device__ void quantize(const float *v, int K, Act &s) { /* v: K floats in shared memory */
    /* 8 lanes a 32-element block, 4 elements a lane (a warp covers 4 blocks, so whole warps skip or run) */
    const int sub = threadIdx.x % 8;
    for (int b = threadIdx.x / 8; b < K / 32; b += THREADS / 8) {
        const float4 x = *(const float4 *)(v + b * 32 + sub * 4);
        float amax = fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w)));
        for (int o = 4; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        const int q0 = __float2int_rn(x.x * id), q1 = __float2int_rn(x.y * id), q2 = __float2int_rn(x.z * id),
                  q3 = __float2int_rn(x.w * id);
        *(int *)(s.q + b * 32 + sub * 4) = (q0 & 255) | (q1 & 255) << 8 | (q2 & 255) << 16 | (q3 & 255) << 24;
        int sum = q0 + q1 + q2 + q3;
        for (int o = 4; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (sub == 0) s.m[b] = make_float2(d, d * (float)sum);
    }
    __syncthreads();
}
/* K floats of global memory into shared memory: every load in flight at once (one L2 round trip) */
template <int K> __device__ void fetch(const float *g, float *buf) {
    static_assert(K % 4 == 0, "float4 pieces");
    constexpr int N = (K / 4 + THREADS - 1) / THREADS;
    float4 v[N];
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int j = threadIdx.x + i * THREADS;
        if (j < K / 4) v[i] = ((const float4 *)g)[j];
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int j = threadIdx.x + i * THREADS;
        if (j < K / 4) ((float4 *)buf)[j] = v[i];
    }
    __syncthreads();
}
/* rmsnorm(x) * w, quantized */
__device__ void norm_quant(const float *x, const float *w, Act &s, float *buf, float *red) {
    float xv[H / THREADS], wv[H / THREADS], ss = 0.0f;
#pragma unroll
    for (int i = 0; i < H / THREADS; i++) {
        xv[i] = x[threadIdx.x + i * THREADS];
        wv[i] = w[threadIdx.x + i * THREADS];
    }
#pragma unroll
    for (int i = 0; i < H / THREADS; i++) ss += xv[i] * xv[i];
    const float scale = rsqrtf(block_sum(ss, red) / H + 1e-5f);
#pragma unroll
    for (int i = 0; i < H / THREADS; i++) buf[threadIdx.x + i * THREADS] = xv[i] * scale * wv[i];
    __syncthreads();
    quantize(buf, H, s);
}

/* one row (K/32 blocks) of a staged tile against the activations: a warp, lane-strided blocks */
template <int K> __device__ __forceinline__ float row_dot(const uint8_t *row, const Act &s) {
    float acc = 0.0f;
#pragma unroll
    for (int b = threadIdx.x % 32; b < K / 32; b += 32) {
        const uint8_t *g = row + 144 * (b >> 3);
        const int e = b & 7;
        const float d = __half2float(*(const __half *)(g + 2 * e));
        const int4 qv = *(const int4 *)(g + 16 + 16 * e);
        const int4 a0 = *(const int4 *)(s.q + b * 32), a1 = *(const int4 *)(s.q + b * 32 + 16);
        const int w[4] = {qv.x, qv.y, qv.z, qv.w}, lo[4] = {a0.x, a0.y, a0.z, a0.w}, hi[4] = {a1.x, a1.y, a1.z, a1.w};
        int sum = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            sum = __dp4a(w[k] & 0x0F0F0F0F, lo[k], sum);
            sum = __dp4a((w[k] >> 4) & 0x0F0F0F0F, hi[k], sum);
        }
        const float2 m = s.m[b];
        acc += d * (m.x * (float)sum - 8.0f * m.y);
    }
    return warp_sum(acc);
}

/* the K and V slice of this block's first attention item, by cp.async into scratch (not waited for here) */
__device__ void kv_prefetch(const Args &a, int l, float *scratch) {
    const int item = blockIdx.x;
    if (item >= NH * SPLIT) return;
    const int hq = item / SPLIT, sp = item % SPLIT, hk = hq / (NH / NKV);
    const int c0 = sp * (CELLS / SPLIT), nc = CELLS / SPLIT;
    __half *sk = (__half *)scratch, *sv = sk + nc * HD;
    for (int piece = threadIdx.x; piece < nc * HD / 8; piece += THREADS) {
        const int c = piece / (HD / 8), part = piece % (HD / 8);
        const size_t off = ((size_t)(c0 + c) * NKV + hk) * HD + part * 8;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(sk + piece * 8)), "l"(a.kc[l] + off));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(sv + piece * 8)), "l"(a.vc[l] + off));
    }
    asm volatile("cp.async.commit_group;" ::);
}
/* attention for (head, split) pairs spread over the grid: partial softmax state of 128 cells; with pre, the
 * block's first item's K and V are in scratch already (kv_prefetch) */
__device__ void attention(const Args &a, int l, float *scratch, float *red, bool pre) {
    if (pre) {
        asm volatile("cp.async.wait_all;" ::: "memory");
        __syncthreads();
    }
    for (int item = blockIdx.x; item < NH * SPLIT; item += gridDim.x) {
        const int hq = item / SPLIT, sp = item % SPLIT, hk = hq / (NH / NKV);
        const int c0 = sp * (CELLS / SPLIT), nc = CELLS / SPLIT;
        const float *q = a.qkv + hq * HD;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        /* the slice's K and V rows (128 B a cell) into shared memory, every load in flight at once */
        __half *sk = (__half *)scratch, *sv = sk + nc * HD;
        float *sc = (float *)(sv + nc * HD);
        if (!(pre && item == (int)blockIdx.x)) {
            constexpr int PER = (CELLS / SPLIT) * HD * 2 / 16 / THREADS; /* 16-byte pieces a thread, K and V each */
            int4 kv[PER], vv[PER];
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int piece = threadIdx.x + i * THREADS, c = piece / (HD / 8), part = piece % (HD / 8);
                kv[i] = *((const int4 *)(a.kc[l] + ((size_t)(c0 + c) * NKV + hk) * HD) + part);
                vv[i] = *((const int4 *)(a.vc[l] + ((size_t)(c0 + c) * NKV + hk) * HD) + part);
            }
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int piece = threadIdx.x + i * THREADS;
                ((int4 *)sk)[piece] = kv[i];
                ((int4 *)sv)[piece] = vv[i];
            }
        }
        constexpr int DL = HD / 32; /* dims a lane: 2 or 4 */
        float qv[DL];
#pragma unroll
        for (int i = 0; i < DL; i++) qv[i] = q[DL * lane + i] * rsqrtf((float)HD);
        __syncthreads();
        for (int c = warp; c < nc; c += WARPS) {
            float t = 0.0f;
#pragma unroll
            for (int i = 0; i < DL; i++) t += qv[i] * __half2float(sk[c * HD + DL * lane + i]);
            const float s = warp_sum(t);
            if (lane == 0) sc[c] = s;
        }
        __syncthreads();
        float m = -INFINITY;
        for (int c = threadIdx.x; c < nc; c += THREADS) m = fmaxf(m, sc[c]);
        m = warp_max(m);
        if (lane == 0) red[warp] = m;
        __syncthreads();
        m = red[0];
        for (int i = 1; i < WARPS; i++) m = fmaxf(m, red[i]);
        __syncthreads();
        float ls = 0.0f;
        for (int c = threadIdx.x; c < nc; c += THREADS) {
            const float p = __expf(sc[c] - m);
            sc[c] = p;
            ls += p;
        }
        ls = block_sum(ls, red);
        /* out[d]: 64 dims x 4 cell quarters over the block's threads */
        constexpr int NQ = THREADS / HD; /* cell subsets */
        const int d = threadIdx.x % HD, qq = threadIdx.x / HD;
        float o = 0.0f;
        for (int c = qq; c < nc; c += NQ)
            o += sc[c] * __half2float(sv[c * HD + d]);
        float *op = sc + nc; /* [NQ][HD] */
        op[qq * HD + d] = o;
        __syncthreads();
        float *dst = a.part + (size_t)item * (HD + 2);
        if (threadIdx.x < HD) {
            float t = 0.0f;
            for (int i = 0; i < NQ; i++) t += op[i * HD + threadIdx.x];
            dst[threadIdx.x] = t;
        }
        if (threadIdx.x == 0) {
            dst[HD] = m;
            dst[HD + 1] = ls;
        }
        __syncthreads();
        if (a.merge1) { /* the head's last split merges its SPLIT partials into attn, once for the grid */
            __shared__ int last;
            if (threadIdx.x == 0) {
                __threadfence();
                last = atomicAdd(a.headcnt + l * NH + hq, 1u) == SPLIT - 1;
            }
            __syncthreads();
            if (last && threadIdx.x < HD) {
                /* attn_merge's formula, written out again on purpose: one helper for both raised k_step's spills at
                 * 7B's shapes from 204 to 276 bytes and its layer from 70 to 75 us */
                __threadfence();
                const float *pp = a.part + (size_t)hq * SPLIT * (HD + 2);
                float mm = -INFINITY;
                for (int s2 = 0; s2 < SPLIT; s2++) mm = fmaxf(mm, __ldcg(pp + s2 * (HD + 2) + HD));
                float o2 = 0.0f, l2 = 0.0f;
                for (int s2 = 0; s2 < SPLIT; s2++) {
                    const float f = __expf(__ldcg(pp + s2 * (HD + 2) + HD) - mm);
                    o2 += f * __ldcg(pp + s2 * (HD + 2) + threadIdx.x);
                    l2 += f * __ldcg(pp + s2 * (HD + 2) + HD + 1);
                }
                a.attn[hq * HD + threadIdx.x] = o2 / l2;
            }
            __syncthreads();
        }
    }
}
/* the merged attention output (all heads), into buf */
__device__ void attn_merge(const Args &a, float *buf) {
    float *pp = buf + H; /* the partials, NH * SPLIT * (HD + 2) floats */
    fetch<NH * SPLIT * (HD + 2)>(a.part, pp);
    for (int i = threadIdx.x; i < H; i += THREADS) {
        const int hq = i / HD, d = i % HD;
        const float *p = pp + (size_t)hq * SPLIT * (HD + 2);
        float m = -INFINITY;
        for (int s = 0; s < SPLIT; s++) m = fmaxf(m, p[s * (HD + 2) + HD]);
        float o = 0.0f, l = 0.0f;
        for (int s = 0; s < SPLIT; s++) {
            const float f = __expf(p[s * (HD + 2) + HD] - m);
            o += f * p[s * (HD + 2) + d];
            l += f * p[s * (HD + 2) + HD + 1];
        }
        buf[i] = o / l;
    }
    __syncthreads();
}

/* A block's weight tiles through its ring of `depth` slots of shared memory: start() arms the barriers and issues
 * the first tiles (thread 0), wait(t) returns tile t's slot once it has arrived, refill(t) reissues tile t's slot
 * for tile t + depth once the block is done with it (after a barrier). The kernel's Args are passed, not held: a
 * reference kept in a struct makes the compiler copy the parameters to local memory. */
struct Ring {
    uint8_t *slots;
    uint64_t *full;
    const Tile *tl;
    int nt, depth;
    __device__ Ring(const Args &a, uint8_t *slots_, uint64_t *full_)
        : slots(slots_), full(full_), tl(a.tiles + a.tile_off[blockIdx.x]),
          nt(a.tile_off[blockIdx.x + 1] - a.tile_off[blockIdx.x]), depth(a.depth) {}
    __device__ void issue(const Args &a, int t) const {
        const Tile &T = tl[t];
        const int st = T.stage % NSTAGE, l = T.stage / NSTAGE, rb = row_bytes(stage_k(st));
        bulk(slots + (t % depth) * SLOT, a.w[l][st] + (size_t)T.row0 * rb, (uint32_t)(T.nrows * rb), &full[t % depth]);
    }
    __device__ void start(const Args &a) const {
        if (threadIdx.x == 0) {
            for (int i = 0; i < depth; i++) mbar_init(&full[i]);
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
            for (int t = 0; t < depth && t < nt; t++) issue(a, t);
        }
        __syncthreads();
    }
    __device__ const uint8_t *wait(int t) const {
        mbar_wait(&full[t % depth], (uint32_t)((t / depth) & 1));
        return slots + (t % depth) * SLOT;
    }
    __device__ void refill(const Args &a, int t) const {
        if (threadIdx.x == 0 && t + depth < nt) issue(a, t + depth);
    }
};

__global__ void __launch_bounds__(THREADS, 1) k_step(const Args a) {
    extern __shared__ __align__(128) uint8_t smem[];
    Act &act = *(Act *)(smem + MAX_DEPTH * SLOT);                    /* q8 activations of the stage */
    float *buf = (float *)(smem + MAX_DEPTH * SLOT + sizeof(Act));  /* BUF floats: norm / merge / attention / h */
    __shared__ uint64_t full[MAX_DEPTH];
    __shared__ float red[WARPS];
    const Ring ring(a, smem, full); /* the ring takes the first MAX_DEPTH slots of smem */
    const Tile *tl = ring.tl;
    const int nt = ring.nt;
    ring.start(a);
    int t = 0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    /* the block's tiles of stage `stage`: rows against act; out(row, v) for plain rows, or per gate/up pair */
    auto consume = [&](int stage, auto &&out) {
        const int st = stage % NSTAGE, K = stage_k(st), rb = row_bytes(K);
        while (t < nt && tl[t].stage == stage) {
            const uint8_t *tile = ring.wait(t);
            const Tile &T = tl[t];
            if (a.skip & 4) {
            } else if (st == S_GU) {
                for (int p = warp; p < T.nrows / 2; p += WARPS) {
                    const float g = row_dot<H>(tile + (size_t)(2 * p) * rb, act);
                    const float u = row_dot<H>(tile + (size_t)(2 * p + 1) * rb, act);
                    if (lane == 0) out((T.row0 / 2) + p, g / (1.0f + __expf(-g)) * u);
                }
            } else {
                for (int r = warp; r < T.nrows; r += WARPS) {
                    const float v = K == FF ? row_dot<FF>(tile + (size_t)r * rb, act) : row_dot<H>(tile + (size_t)r * rb, act);
                    if (lane == 0) out(T.row0 + r, v);
                }
            }
            __syncthreads(); /* the slot is free */
            ring.refill(a, t);
            t++;
        }
    };
    auto sync_arrive = [&](int i) {
        if (a.flags) flag_arrive(a.flag + (size_t)i * gridDim.x);
        else arrive(a.bar + i, a.barmode);
    };
    auto sync_wait = [&](int i) {
        if (!a.wait) __syncthreads();
        else if (a.flags) flag_wait(a.flag + (size_t)i * gridDim.x);
        else wait_all(a, a.bar + i);
    };
    for (int l = 0; l < NL; l++) {
        const int bar = l * 5;
        /* phase marks of one layer (bench's breakdown): thread 0's %globaltimer after each step */
        auto mark = [&](int k) {
            if (a.trace && l == TRACE_LAYER && threadIdx.x == 0) {
                unsigned long long ns;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
                a.trace[blockIdx.x * NPH + k] = ns;
            }
        };
        mark(0);
        if (a.kvpre) kv_prefetch(a, l, buf + H);
        if (l > 0) sync_wait(bar - 1);
        mark(1);
        if (!(a.skip & 2)) norm_quant(a.x, a.nw[l][0], act, buf, red);
        mark(2);
        consume(l * NSTAGE + S_QKV, [&](int r, float v) { a.qkv[r] = v; });
        mark(3);
        sync_arrive(bar + 0);
        sync_wait(bar + 0);
        mark(4);
        if (!(a.skip & 1)) attention(a, l, buf + H, red, a.kvpre != 0);
        mark(5);
        sync_arrive(bar + 1);
        sync_wait(bar + 1);
        mark(6);
        if (!(a.skip & 1)) {
            if (a.merge1) fetch<H>(a.attn, buf);
            else attn_merge(a, buf);
            quantize(buf, H, act);
        }
        mark(7);
        consume(l * NSTAGE + S_O, [&](int r, float v) { a.x[r] += v; });
        mark(8);
        sync_arrive(bar + 2);
        sync_wait(bar + 2);
        mark(9);
        if (!(a.skip & 2)) norm_quant(a.x, a.nw[l][1], act, buf, red);
        mark(10);
        consume(l * NSTAGE + S_GU, [&](int r, float v) { a.h[r] = v; });
        mark(11);
        sync_arrive(bar + 3);
        sync_wait(bar + 3);
        mark(12);
        if (!(a.skip & 8)) {
            fetch<FF>(a.h, buf);
            quantize(buf, FF, act);
        }
        mark(13);
        consume(l * NSTAGE + S_DOWN, [&](int r, float v) { a.x[r] += v; });
        mark(14);
        sync_arrive(bar + 4);
        mark(15);
    }
}

/* streaming alone: the same tiles through the same ring, no activations, barriers or math beyond a touch */
__global__ void __launch_bounds__(THREADS, 1) k_stream(const Args a, int *sink) {
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ uint64_t full[MAX_DEPTH];
    const Ring ring(a, smem, full);
    ring.start(a);
    int acc = 0;
    for (int t = 0; t < ring.nt; t++) {
        acc += ring.wait(t)[threadIdx.x];
        __syncthreads();
        ring.refill(a, t);
    }
    if (acc == 0x7fffffff) sink[0] = acc;
}

__global__ void k_fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        p[i] = (uint8_t)h;
    }
}
/* f16 values in [-r, r) at every 2-byte position (scales of weights, caches) */
__global__ void k_fill_h(__half *p, size_t n, float r, uint32_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2246822519u ^ seed;
        h ^= h >> 15;
        h *= 0x27d4eb2du;
        h ^= h >> 13;
        p[i] = __float2half(((h & 0xffff) / 65536.0f * 2.0f - 1.0f) * r);
    }
}
/* every q4_0R8 group's 8 scales: small f16 values */
__global__ void k_fix_scales(uint8_t *w, size_t groups, float r) {
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x)
        for (int e = 0; e < 8; e++) ((__half *)(w + g * 144))[e] = __float2half(r * (0.5f + 0.0625f * ((g + e) % 8)));
}

int main() {
    int dev = 0, nsm = 0;
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs\n", prop.name, nsm);
    Args a = {};
    size_t wbytes = 0;
    for (int l = 0; l < NL; l++)
        for (int s = 0; s < NSTAGE; s++) {
            const size_t n = (size_t)STAGE_N[s] * row_bytes(stage_k(s));
            uint8_t *p;
            CK(cudaMalloc(&p, n));
            k_fill<<<1024, 256>>>(p, n, l * 16 + s);
            k_fix_scales<<<1024, 256>>>(p, n / 144, s == S_DOWN ? 0.004f : 0.008f);
            a.w[l][s] = p;
            wbytes += n;
        }
    for (int l = 0; l < NL; l++) {
        for (int j = 0; j < 2; j++) {
            float *p;
            CK(cudaMalloc(&p, H * 4));
            std::vector<float> one(H, 1.0f);
            CK(cudaMemcpy(p, one.data(), H * 4, cudaMemcpyHostToDevice));
            a.nw[l][j] = p;
        }
        __half *k, *v;
        const size_t n = (size_t)CELLS * NKV * HD;
        CK(cudaMalloc(&k, n * 2));
        CK(cudaMalloc(&v, n * 2));
        k_fill_h<<<512, 256>>>(k, n, 1.0f, 7 + l);
        k_fill_h<<<512, 256>>>(v, n, 1.0f, 9 + l);
        a.kc[l] = k;
        a.vc[l] = v;
    }
    float *x0;
    CK(cudaMalloc(&x0, H * 4));
    std::vector<float> hx(H);
    for (int i = 0; i < H; i++) hx[i] = sinf(0.37f * i);
    CK(cudaMemcpy(x0, hx.data(), H * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&a.x, H * 4));
    CK(cudaMalloc(&a.qkv, QKV * 4));
    CK(cudaMalloc(&a.part, NH * SPLIT * (HD + 2) * 4));
    CK(cudaMalloc(&a.h, FF * 4));
    CK(cudaMalloc(&a.bar, NL * 5 * 4));
    int *sink;
    CK(cudaMalloc(&sink, 4));

    /* tiles: each product's rows split evenly over the blocks (pairs for GU), each block's share in tiles of
     * at most SLOT bytes, in stage order */
    std::vector<std::vector<Tile>> per(nsm);
    for (int l = 0; l < NL; l++)
        for (int s = 0; s < NSTAGE; s++) {
            const int unit = s == S_GU ? 2 : 1, units = STAGE_N[s] / unit, rb = row_bytes(stage_k(s));
            const int max_rows = SLOT / rb / unit * unit;
            for (int b = 0; b < nsm; b++) {
                int r0 = (int)((int64_t)units * b / nsm) * unit, r1 = (int)((int64_t)units * (b + 1) / nsm) * unit;
                for (int r = r0; r < r1; r += max_rows) per[b].push_back({l * NSTAGE + s, r, std::min(max_rows, r1 - r)});
            }
        }
    std::vector<Tile> all;
    std::vector<int> off(1, 0);
    for (auto &v : per) {
        all.insert(all.end(), v.begin(), v.end());
        off.push_back((int)all.size());
    }
    Tile *dt;
    int *doff;
    CK(cudaMalloc(&dt, all.size() * sizeof(Tile)));
    CK(cudaMalloc(&doff, off.size() * 4));
    CK(cudaMemcpy(dt, all.data(), all.size() * sizeof(Tile), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(doff, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    a.tiles = dt;
    a.tile_off = doff;
    const size_t smem = MAX_DEPTH * SLOT + sizeof(Act) + BUF * 4;
    CK(cudaFuncSetAttribute(k_step, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaFuncSetAttribute(k_stream, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaDeviceSynchronize());

    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    /* the copy ceiling of this run: a 1 GiB device-to-device copy, reads plus writes */
    {
        uint8_t *s1, *s2;
        const size_t n = 1ull << 30;
        CK(cudaMalloc(&s1, n));
        CK(cudaMalloc(&s2, n));
        std::vector<float> ts;
        for (int i = 0; i < 7; i++) {
            cudaEventRecord(e0);
            cudaMemcpyAsync(s2, s1, n, cudaMemcpyDeviceToDevice);
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            ts.push_back(ms);
        }
        std::sort(ts.begin(), ts.end());
        printf("copy bandwidth: %.0f GB/s (1 GiB device-to-device, median of 7, read + write)\n", 2.0 * n / (ts[3] * 1e6));
        cudaFree(s1);
        cudaFree(s2);
    }
    printf("weights a step: %.1f MB (%d layers of %.2f MB), %zu tiles of up to %d KiB on %d blocks\n", wbytes / 1e6, NL,
           wbytes / 1e6 / NL, all.size(), SLOT / 1024, nsm);

    CK(cudaMalloc(&a.flag, (size_t)NL * 5 * nsm * 4));
    CK(cudaMalloc(&a.attn, H * 4));
    CK(cudaMalloc(&a.headcnt, NL * NH * 4));
    auto run = [&](bool stream, int depth, int wait, std::vector<float> *out, int skip = 0, int flags = 0,
                   int kvpre = 0, int merge1 = 0, int barmode = 0) {
        a.barmode = barmode;
        a.kvpre = kvpre;
        a.merge1 = merge1;
        a.depth = depth;
        a.wait = wait;
        a.skip = skip;
        a.flags = flags;
        std::vector<float> ts;
        for (int i = 0; i < 25; i++) {
            CK(cudaMemcpyAsync(a.x, x0, H * 4, cudaMemcpyDeviceToDevice));
            CK(cudaMemsetAsync(a.bar, 0, NL * 5 * 4));
            CK(cudaMemsetAsync(a.flag, 0, (size_t)NL * 5 * nsm * 4));
            CK(cudaMemsetAsync(a.headcnt, 0, NL * NH * 4));
            cudaEventRecord(e0);
            if (stream) k_stream<<<nsm, THREADS, smem>>>(a, sink);
            else k_step<<<nsm, THREADS, smem>>>(a);
            cudaEventRecord(e1);
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            if (i >= 5) ts.push_back(ms);
        }
        std::sort(ts.begin(), ts.end());
        const float us = ts[ts.size() / 2] * 1000.0f;
        char what[128];
        snprintf(what, sizeof what, "%s%s%s%s%s%s", barmode == 1 ? "[backoff] " : barmode == 2 ? "[red.release] " : "",
                 merge1 ? "[merged once] " : "", flags ? "[flags] " : "",
                 kvpre ? "[K/V ahead] " : "", stream ? "streaming only (k_stream)" : wait ? "persistent step (k_step)" : "k_step without barrier waits",
                 skip == 1 ? ", no attention" : skip == 2 ? ", no norms" : skip == 4 ? ", no product math" : skip == 8 ? ", no h fetch" : skip == 15 ? ", barriers + streaming" : "");
        printf("%-50s depth %d: %8.1f us a step, %6.2f us a layer, %5.0f GB/s of weights\n", what, depth, us, us / NL,
               wbytes / (us * 1e3));
        if (out) {
            out->resize(H);
            CK(cudaMemcpy(out->data(), a.x, H * 4, cudaMemcpyDeviceToHost));
        }
    };
    for (int d : {1, 2, 3, 5})
        if (d <= MAX_DEPTH) run(true, d, 1, nullptr);
    std::vector<float> r1, r2, r3;
    for (int d : {1, 2, 3, 5})
        if (d <= MAX_DEPTH) run(false, d, 1, d == 3 ? &r1 : nullptr);
    run(false, 3, 1, &r2);
    run(false, 3, 0, nullptr);
    for (int skip : {1, 2, 4, 8, 15}) run(false, 3, 1, nullptr, skip);
    run(false, 3, 1, &r3, 0, 1);
    run(false, 3, 1, nullptr, 15, 1);
    std::vector<float> r4, r5;
    for (int d : {2, 3}) run(false, d, 1, d == 3 ? &r4 : nullptr, 0, 0, 1);
    run(false, 3, 1, &r5, 0, 0, 1, 1);
    std::vector<float> r6;
    run(false, 3, 1, nullptr, 0, 0, 1, 1, 1);
    run(false, 3, 1, &r6, 0, 0, 1, 1, 2);
    run(false, 3, 1, nullptr, 15, 0, 0, 0, 1);
    run(false, 3, 1, nullptr, 15, 0, 0, 0, 2);
    {
        /* where one layer's time goes, block by block: each phase's end as the median, the last and the first
         * block reach it, in us after the first block started the layer */
        unsigned long long *dtr;
        CK(cudaMalloc(&dtr, (size_t)nsm * NPH * 8));
        a.trace = dtr;
        run(false, 3, 1, nullptr, 0, 0, 1, 1);
        a.trace = nullptr;
        std::vector<unsigned long long> tr((size_t)nsm * NPH);
        CK(cudaMemcpy(tr.data(), dtr, tr.size() * 8, cudaMemcpyDeviceToHost));
        unsigned long long t0 = ~0ull;
        for (int b = 0; b < nsm; b++) t0 = std::min(t0, tr[(size_t)b * NPH]);
        static const char *names[NPH] = {"layer start", "waited for the last down product", "norm + q8",
                                         "Q/K/V tiles", "Q/K/V barrier", "attention", "attention barrier",
                                         "merge + q8", "output tiles", "output barrier", "norm + q8", "gate/up tiles",
                                         "gate/up barrier", "h read + q8", "down tiles", "arrived"};
        printf("layer %d, traced (depth 3, K/V ahead, merged once): us after the layer's first block start; first / median / last block\n",
               TRACE_LAYER);
        for (int k = 0; k < NPH; k++) {
            std::vector<double> v;
            for (int b = 0; b < nsm; b++) v.push_back((tr[(size_t)b * NPH + k] - t0) / 1e3);
            std::sort(v.begin(), v.end());
            printf("  %2d %-34s %7.2f %7.2f %7.2f\n", k, names[k], v.front(), v[v.size() / 2], v.back());
        }
    }
    bool finite = true;
    double norm = 0.0;
    for (float v : r1) {
        finite = finite && std::isfinite(v);
        norm += (double)v * v;
    }
    if (memcmp(r5.data(), r6.data(), H * 4) != 0) printf("check: red.release barriers gave a DIFFERENT residual\n");
    double dmax = 0.0;
    for (int i = 0; i < H; i++) dmax = std::max(dmax, (double)fabsf(r1[i] - r5[i]) / (fabsf(r1[i]) + 1e-3));
    printf("check: residual after the step %s across runs (%s with flag barriers, %s with K/V ahead, merged once: "
           "largest relative difference %.1e, other rounding), %s, |x| = %.3f\n",
           memcmp(r1.data(), r2.data(), H * 4) == 0 ? "identical" : "DIFFERENT",
           memcmp(r1.data(), r3.data(), H * 4) == 0 ? "identical" : "DIFFERENT",
           memcmp(r1.data(), r4.data(), H * 4) == 0 ? "identical" : "DIFFERENT", dmax, finite ? "finite" : "NOT FINITE",
           sqrt(norm));
    return 0;
}
