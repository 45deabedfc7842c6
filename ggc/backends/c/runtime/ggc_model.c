/* The runtime of a generated program: the arena, the kernel nodes of each graph, the C API. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime; the Makefile sets it too */
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

const char *ggc_last_error(void) { return "out of memory"; }
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
    if (GGC_N_GRAPHS > 16) return NULL;
    ggc_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
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
    free(m->arena);
    for (int g = 0; g < 16; g++) free(m->nodes[g]);
    free(m->work.data);
    free(m);
}

int ggc_model_load_weights(ggc_model *m, const char *path, char *err, size_t err_len) {
    return ggc_gguf_load(path, m->arena, err, err_len);
}

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
