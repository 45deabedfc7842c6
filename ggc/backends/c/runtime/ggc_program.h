/* What a generated program.c defines, for the runtime (ggc_model.c) and the GGUF loader. */
#ifndef GGC_PROGRAM_H
#define GGC_PROGRAM_H

#include "ggc.h"
#include "ggc_model.h"

typedef struct {
    int dst;                    /* index into GGC_TENSORS */
    int src[GGC_MAX_SRC];       /* index into GGC_TENSORS, -1 when absent */
    int32_t op_params[GGC_MAX_OP_PARAMS];
} ggc_node_desc;

extern const ggc_tensor_info GGC_TENSORS[];
extern const int GGC_N_TENSORS;
extern const ggc_node_desc GGC_NODES[];
extern const int GGC_N_NODES;
extern const int GGC_N_GROUPS;
extern const size_t GGC_ARENA_SIZE;
extern const size_t GGC_STATE_OFFSET, GGC_STATE_SIZE;

/* bytes of kernel work memory the nodes need */
size_t ggc_program_work_size(const ggc_node *nodes);
/* run kernel group g */
void ggc_program_run_group(int g, ggc_node *nodes, ggc_work *work, char *arena);

/* the GGUF loader (ggc_gguf.c): fill every weight of the arena from a file */
int ggc_gguf_load(const char *path, char *arena, char *err, size_t err_len);

#endif
