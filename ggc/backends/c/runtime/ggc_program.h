/* What a generated program.c defines, for the runtime (ggc_model.c) and the GGUF loader. */
#ifndef GGC_PROGRAM_H
#define GGC_PROGRAM_H

#include "ggc.h"
#include "ggc_model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int dst;                    /* index into the graph's tensors */
    int src[GGC_MAX_SRC];       /* index into the graph's tensors, -1 when absent */
    int32_t op_params[GGC_MAX_OP_PARAMS];
} ggc_node_desc;

/* one graph of the program (say prefill or decode); all graphs share the arena */
typedef struct {
    const char *name;
    const ggc_tensor_info *tensors;
    int n_tensors;
    const ggc_node_desc *nodes;
    int n_nodes;
    int n_groups;
    size_t (*work_size)(const ggc_node *nodes);                     /* kernel work bytes, per thread */
    /* run kernel group g; ctx is the target's (ggc_work for C, ggc_cuda_ctx for CUDA) */
    void (*run_group)(int g, ggc_node *nodes, void *ctx, char *arena);
} ggc_graph_desc;

extern const ggc_graph_desc GGC_GRAPHS[];
extern const int GGC_N_GRAPHS;
extern const size_t GGC_ARENA_SIZE;
extern const size_t GGC_STATE_OFFSET, GGC_STATE_SIZE;
/* weights in [0, GGC_HOST_SIZE) stay in host memory (CUDA: pinned, read by the GPU over the bus);
   0 on the C target */
extern const size_t GGC_HOST_SIZE;

/* Tensor parallelism: every rank runs this same program (SPMD). A split weight holds this rank's
   equal share of its GGUF tensor along dimension dim: the file's tensor has ne[dim] * GGC_RANKS
   elements there, and rank r loads [r * ne[dim], (r + 1) * ne[dim]). */
typedef struct {
    const char *name; /* the GGUF tensor */
    int dim;
} ggc_split_info;

extern const int GGC_RANKS; /* 1: a program of one process */
extern const ggc_split_info GGC_SPLITS[];
extern const int GGC_N_SPLITS;

/* the GGUF loader (ggc_gguf.c): fill every weight of the arena from a file, split weights with
   rank's share (0 <= rank < GGC_RANKS) */
int ggc_gguf_load(const char *path, char *arena, int rank, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
