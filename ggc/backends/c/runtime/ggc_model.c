/* The runtime of a generated program: the arena, the kernel nodes, the C API. */
#include <stdlib.h>
#include <string.h>

#include "ggc_program.h"

#define GGC_ALIGN 64

struct ggc_model {
    char *arena;
    ggc_node *nodes;
    ggc_work work;
    size_t work_per_thread; /* kernels' ggc_work_<op> sizes are per thread */
};

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

ggc_model *ggc_model_create(void) {
    ggc_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->arena = aligned_zalloc(GGC_ARENA_SIZE);
    m->nodes = calloc(GGC_N_NODES ? (size_t)GGC_N_NODES : 1, sizeof *m->nodes);
    if (!m->arena || !m->nodes) goto fail;
    for (int i = 0; i < GGC_N_NODES; i++) {
        const ggc_node_desc *d = &GGC_NODES[i];
        fill_tensor(&m->nodes[i].dst, &GGC_TENSORS[d->dst], m->arena);
        for (int j = 0; j < GGC_MAX_SRC; j++)
            if (d->src[j] >= 0) fill_tensor(&m->nodes[i].src[j], &GGC_TENSORS[d->src[j]], m->arena);
        memcpy(m->nodes[i].op_params, d->op_params, sizeof d->op_params);
    }
    m->work_per_thread = ggc_program_work_size(m->nodes);
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
    free(m->nodes);
    free(m->work.data);
    free(m);
}

int ggc_model_load_weights(ggc_model *m, const char *path, char *err, size_t err_len) {
    return ggc_gguf_load(path, m->arena, err, err_len);
}

static void *find(ggc_model *m, const char *name, int k, int role) {
    for (int i = 0; i < GGC_N_TENSORS; i++) {
        const ggc_tensor_info *t = &GGC_TENSORS[i];
        if (t->role == role && strcmp(t->name, name) == 0 && k-- == 0) return m->arena + t->offset;
    }
    return NULL;
}

void *ggc_model_input(ggc_model *m, const char *name, int k) { return find(m, name, k, GGC_ROLE_INPUT); }
const void *ggc_model_output(ggc_model *m, const char *name, int k) { return find(m, name, k, GGC_ROLE_OUTPUT); }

void ggc_model_run(ggc_model *m) {
    for (int g = 0; g < GGC_N_GROUPS; g++) ggc_program_run_group(g, m->nodes, &m->work, m->arena);
}

void ggc_model_run_group(ggc_model *m, int g) {
    if (g >= 0 && g < GGC_N_GROUPS) ggc_program_run_group(g, m->nodes, &m->work, m->arena);
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
int ggc_model_n_tensors(void) { return GGC_N_TENSORS; }
const ggc_tensor_info *ggc_model_tensor(int i) { return i >= 0 && i < GGC_N_TENSORS ? &GGC_TENSORS[i] : NULL; }
void *ggc_model_arena(ggc_model *m) { return m->arena; }
size_t ggc_model_arena_size(void) { return GGC_ARENA_SIZE; }
int ggc_model_n_groups(void) { return GGC_N_GROUPS; }
