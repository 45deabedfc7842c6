/* The runtime of a generated program: the arena, the kernel nodes of each graph, the C API.
 *
 * A program of several ranks (GGC_RANKS > 1, tensor parallelism) is built with GGC_MPI (make
 * MPI=1) and run with mpirun, one process a rank: the runtime initializes MPI and gives the
 * kernels' ALL_REDUCE and ALL_GATHER their collectives.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime; the Makefile sets it too */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef GGC_MPI
#include <mpi.h>
#endif

#include "ggc_program.h"

#define GGC_ALIGN 64

struct ggc_model {
    char *arena;
    ggc_node *nodes[16]; /* per graph */
    ggc_work work;
    size_t work_per_thread; /* kernels' ggc_work_<op> sizes are per thread */
    double last_ms;         /* wall time of the last ggc_model_run_graph */
    int64_t queued[GGC_MAX_QUEUED], last_index; /* ggc_model_queue_graph_argmax's results, the latest */
    double queued_ms[GGC_MAX_QUEUED];
    int q_head, q_count;
    int rank; /* this process's rank in a tensor-parallel program; 0 without MPI */
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void *aligned_zalloc(size_t size) {
    size = (size + GGC_ALIGN - 1) / GGC_ALIGN * GGC_ALIGN;
    void *p = aligned_alloc(GGC_ALIGN, size ? size : GGC_ALIGN);
    if (p) memset(p, 0, size);
    return p;
}

static void fill_tensor(ggc_tensor *t, const ggc_tensor_info *info, char *arena) {
    t->data = arena + info->offset;
    t->type = (ggc_type)info->type;
    for (int i = 0; i < 4; i++) {
        t->ne[i] = info->ne[i];
        t->nb[i] = info->nb[i];
    }
}

static int valid_graph(int g) { return g >= 0 && g < GGC_N_GRAPHS; }

static char last_error[256] = "out of memory";
const char *ggc_last_error(void) { return last_error; }

#ifdef GGC_MPI
/* The sum over ranks, bit-identical on every rank and from run to run: each rank gathers all
 * ranks' values and adds them in rank order 0..R-1 (MPI_Allreduce promises neither an order nor
 * the same bits on every rank). At most CHUNK floats a round, which bounds the scratch and keeps
 * MPI's int counts in range. */
#define GGC_MPI_CHUNK ((int64_t)1 << 22)
static float *mpi_scratch; /* GGC_RANKS x CHUNK floats at most; freed with a model and at exit */
static size_t mpi_scratch_n;
static int mpi_we_init;

static void all_reduce_mpi(float *x, int64_t n) {
    for (int64_t at = 0; at < n; at += GGC_MPI_CHUNK) {
        const int64_t k = n - at < GGC_MPI_CHUNK ? n - at : GGC_MPI_CHUNK;
        const size_t need = (size_t)k * (size_t)GGC_RANKS;
        if (need > mpi_scratch_n) {
            float *b = realloc(mpi_scratch, need * sizeof *b);
            if (!b) {
                fprintf(stderr, "ggc: out of memory for the all-reduce of %lld floats\n", (long long)k);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            mpi_scratch = b;
            mpi_scratch_n = need;
        }
        MPI_Allgather(x + at, (int)k, MPI_FLOAT, mpi_scratch, (int)k, MPI_FLOAT, MPI_COMM_WORLD);
        for (int64_t i = 0; i < k; i++) {
            float s = mpi_scratch[i];
            for (int r = 1; r < GGC_RANKS; r++) s += mpi_scratch[(size_t)r * (size_t)k + (size_t)i];
            x[at + i] = s;
        }
    }
}

/* every rank's bytes, in rank order; MPI counts are ints */
static void all_gather_mpi(const void *part, size_t bytes, void *all) {
    if (bytes > (size_t)INT32_MAX) {
        fprintf(stderr, "ggc: an all-gather of %zu bytes a rank is over MPI's count limit\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Allgather(part, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
}

static void mpi_release(void) {
    free(mpi_scratch);
    mpi_scratch = NULL;
    mpi_scratch_n = 0;
}

static void mpi_exit(void) {
    mpi_release();
    int done = 0;
    if (mpi_we_init && MPI_Finalized(&done) == MPI_SUCCESS && !done) MPI_Finalize();
}

/* MPI up (initialized here unless the host program did), with GGC_RANKS processes: this one's
   rank, or -1 with last_error set */
static int mpi_start(void) {
    int up = 0, size = 0, rank = 0;
    MPI_Initialized(&up);
    if (!up) {
        if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
            snprintf(last_error, sizeof last_error, "MPI_Init failed");
            return -1;
        }
        mpi_we_init = 1;
        atexit(mpi_exit);
    }
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (size != GGC_RANKS) {
        snprintf(last_error, sizeof last_error,
                 "this program is built for %d ranks: run it with mpirun -n %d (it runs on %d)", GGC_RANKS, GGC_RANKS,
                 size);
        return -1;
    }
    ggc_all_reduce_hook = GGC_RANKS > 1 ? all_reduce_mpi : NULL;
    ggc_all_gather_hook = GGC_RANKS > 1 ? all_gather_mpi : NULL;
    return rank;
}
#else
static int mpi_start(void) {
    if (GGC_RANKS == 1) return 0;
    snprintf(last_error, sizeof last_error,
             "this program is built for %d ranks but without MPI: rebuild with make MPI=1 and run it with mpirun -n %d",
             GGC_RANKS, GGC_RANKS);
    return -1;
}
#endif
const char *ggc_model_error(const ggc_model *m) { (void)m; return ""; }
/* n_kv rounds up to a multiple of 256, as llama.cpp pads it; 0 (or less) = all cells. Only
 * FLASH_ATTN_EXT reads it. Without flash attention llama.cpp's graph does the attention as
 * MUL_MAT (K^T Q), SOFT_MAX_EXT (mask) and MUL_MAT (V KQ) over views of the whole cache: those
 * kernels keep the graph's (full) KV length, which is correct (cells past n_kv are masked to -inf,
 * so their weights are 0), only slower. */
#define GGC_KV_PAD 256
void ggc_model_set_n_kv(ggc_model *m, int64_t n_kv) {
    m->work.n_kv = n_kv <= 0 ? 0 : (n_kv + GGC_KV_PAD - 1) / GGC_KV_PAD * GGC_KV_PAD;
}

int ggc_model_write(ggc_model *m, size_t offset, const void *src, size_t n) {
    if (offset > GGC_ARENA_SIZE || n > GGC_ARENA_SIZE - offset) return -1;
    memcpy(m->arena + offset, src, n);
    return 0;
}

int ggc_model_read(ggc_model *m, size_t offset, void *dst, size_t n) {
    if (offset > GGC_ARENA_SIZE || n > GGC_ARENA_SIZE - offset) return -1;
    memcpy(dst, m->arena + offset, n);
    return 0;
}

int ggc_model_argmax(ggc_model *m, size_t offset, int64_t n, int64_t *index) {
    if (n <= 0 || offset % sizeof(float) || offset > GGC_ARENA_SIZE || (size_t)n > (GGC_ARENA_SIZE - offset) / 4)
        return -1;
    const float *x = (const float *)(m->arena + offset);
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best] || (x[best] != x[best] && x[i] == x[i])) best = i; /* a NaN start gives way */
    *index = best;
    return 0;
}

ggc_model *ggc_model_create(void) {
    snprintf(last_error, sizeof last_error, "out of memory");
    if (GGC_N_GRAPHS > 16) return NULL;
    const int rank = mpi_start();
    if (rank < 0) return NULL;
    ggc_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->rank = rank;
    m->arena = aligned_zalloc(GGC_ARENA_SIZE);
    if (!m->arena) goto fail;
    for (int g = 0; g < GGC_N_GRAPHS; g++) {
        const ggc_graph_desc *G = &GGC_GRAPHS[g];
        m->nodes[g] = calloc(G->n_nodes ? (size_t)G->n_nodes : 1, sizeof(ggc_node));
        if (!m->nodes[g]) goto fail;
        for (int i = 0; i < G->n_nodes; i++) {
            const ggc_node_desc *d = &G->nodes[i];
            fill_tensor(&m->nodes[g][i].dst, &G->tensors[d->dst], m->arena);
            for (int j = 0; j < GGC_MAX_SRC; j++)
                if (d->src[j] >= 0) fill_tensor(&m->nodes[g][i].src[j], &G->tensors[d->src[j]], m->arena);
            memcpy(m->nodes[g][i].op_params, d->op_params, sizeof d->op_params);
        }
        size_t w = G->work_size(m->nodes[g]);
        if (w > m->work_per_thread) m->work_per_thread = w;
    }
    m->work.size = m->work_per_thread;
    m->work.data = aligned_zalloc(m->work.size);
    m->work.n_threads = 1;
    if (!m->work.data) goto fail;
    return m;
fail:
    ggc_model_free(m);
    return NULL;
}

void ggc_model_free(ggc_model *m) {
    if (!m) return;
#ifdef GGC_MPI
    mpi_release(); /* the next all-reduce grows it again */
#endif
    free(m->arena);
    for (int g = 0; g < 16; g++) free(m->nodes[g]);
    free(m->work.data);
    free(m);
}

int ggc_model_load_weights(ggc_model *m, const char *path, char *err, size_t err_len) {
    return ggc_gguf_load(path, m->arena, m->rank, err, err_len);
}

int ggc_model_rank(const ggc_model *m) { return m->rank; }

int ggc_model_n_graphs(void) { return GGC_N_GRAPHS; }
const char *ggc_model_graph_name(int g) { return valid_graph(g) ? GGC_GRAPHS[g].name : NULL; }
int ggc_model_find_graph(const char *name) {
    for (int g = 0; g < GGC_N_GRAPHS; g++)
        if (strcmp(GGC_GRAPHS[g].name, name) == 0) return g;
    return -1;
}

static void *find(ggc_model *m, int g, const char *name, int k, int role) {
    if (!valid_graph(g)) return NULL;
    for (int i = 0; i < GGC_GRAPHS[g].n_tensors; i++) {
        const ggc_tensor_info *t = &GGC_GRAPHS[g].tensors[i];
        if (t->role == role && strcmp(t->name, name) == 0 && k-- == 0) return m->arena + t->offset;
    }
    return NULL;
}

void *ggc_model_graph_input(ggc_model *m, int g, const char *name, int k) { return find(m, g, name, k, GGC_ROLE_INPUT); }
const void *ggc_model_graph_output(ggc_model *m, int g, const char *name, int k) {
    return find(m, g, name, k, GGC_ROLE_OUTPUT);
}
void *ggc_model_input(ggc_model *m, const char *name, int k) { return find(m, 0, name, k, GGC_ROLE_INPUT); }
const void *ggc_model_output(ggc_model *m, const char *name, int k) { return find(m, 0, name, k, GGC_ROLE_OUTPUT); }

int ggc_model_run_graph(ggc_model *m, int g) {
    if (!valid_graph(g)) return -1;
    const double t0 = now_ms();
    for (int i = 0; i < GGC_GRAPHS[g].n_groups; i++) GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->work, m->arena);
    m->last_ms = now_ms() - t0;
    return 0;
}
double ggc_model_last_run_ms(const ggc_model *m) { return m->last_ms; }
int ggc_model_run_graph_argmax(ggc_model *m, int g, size_t offset, int64_t n, int64_t *index) {
    return ggc_model_run_graph(m, g) != 0 ? -1 : ggc_model_argmax(m, offset, n, index);
}

/* the C target runs at once: the queue only keeps the results in order */
int ggc_model_queue_graph_argmax(ggc_model *m, int g, size_t offset, int64_t n, size_t feed_offset) {
    if (m->q_count == GGC_MAX_QUEUED) return -1;
    if (feed_offset != SIZE_MAX) {
        if (feed_offset > GGC_ARENA_SIZE - sizeof(int32_t)) return -1;
        const int32_t tok = (int32_t)m->last_index;
        memcpy(m->arena + feed_offset, &tok, sizeof tok);
    }
    int64_t index = 0;
    if (ggc_model_run_graph_argmax(m, g, offset, n, &index) != 0) return -1;
    const int slot = (m->q_head + m->q_count++) % GGC_MAX_QUEUED;
    m->queued[slot] = m->last_index = index;
    m->queued_ms[slot] = m->last_ms;
    return 0;
}

int ggc_model_argmax_result(ggc_model *m, int64_t *index) {
    if (m->q_count == 0) return -1;
    *index = m->queued[m->q_head];
    m->last_ms = m->queued_ms[m->q_head];
    m->q_head = (m->q_head + 1) % GGC_MAX_QUEUED;
    m->q_count--;
    return 0;
}

int ggc_model_profile_graph(ggc_model *m, int g, float *ms) {
    if (!valid_graph(g)) return -1;
    for (int i = 0; i < GGC_GRAPHS[g].n_groups; i++) {
        const double t0 = now_ms();
        GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->work, m->arena);
        ms[i] = (float)(now_ms() - t0);
    }
    return 0;
}
int ggc_model_run(ggc_model *m) { return ggc_model_run_graph(m, 0); }

int ggc_model_run_group(ggc_model *m, int g, int i) {
    if (!valid_graph(g) || i < 0 || i >= GGC_GRAPHS[g].n_groups) return -1;
    GGC_GRAPHS[g].run_group(i, m->nodes[g], &m->work, m->arena);
    return 0;
}

int ggc_model_set_threads(ggc_model *m, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    void *w = aligned_zalloc(m->work_per_thread * (size_t)n_threads);
    if (!w) return -1;
    free(m->work.data);
    m->work.data = w;
    m->work.size = m->work_per_thread * (size_t)n_threads;
    m->work.n_threads = n_threads;
    return 0;
}

void ggc_model_reset_state(ggc_model *m) { memset(m->arena + GGC_STATE_OFFSET, 0, GGC_STATE_SIZE); }
int ggc_model_n_tensors(int g) { return valid_graph(g) ? GGC_GRAPHS[g].n_tensors : 0; }
const ggc_tensor_info *ggc_model_tensor(int g, int i) {
    return valid_graph(g) && i >= 0 && i < GGC_GRAPHS[g].n_tensors ? &GGC_GRAPHS[g].tensors[i] : NULL;
}
void *ggc_model_arena(ggc_model *m) { return m->arena; }
size_t ggc_model_arena_size(void) { return GGC_ARENA_SIZE; }
int ggc_model_n_groups(int g) { return valid_graph(g) ? GGC_GRAPHS[g].n_groups : 0; }
