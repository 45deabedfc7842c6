/* Communication between the ranks of a tensor-parallel program: ALL_REDUCE and ALL_GATHER.
 *
 * The kernel library knows no MPI: the runtime (ggc_model.c built with GGC_MPI) sets the hooks to
 * its collectives. Unset, the program runs on one rank: the sum over ranks is the value itself, and
 * the one part is the whole.
 */
#include "ggc.h"

void (*ggc_all_reduce_hook)(float *data, int64_t n) = NULL;

/* dst = the element-wise sum of src0 over all ranks (f32, contiguous; dst may be src0) */
void ggc_op_all_reduce(const ggc_node *n, ggc_work *w) {
    (void)w;
    const int64_t ne = ggc_nelements(&n->dst);
    if (n->dst.data != n->src[0].data) memmove(n->dst.data, n->src[0].data, (size_t)ne * sizeof(float));
    if (ggc_all_reduce_hook) ggc_all_reduce_hook((float *)n->dst.data, ne);
}

void (*ggc_all_gather_hook)(const void *part, size_t bytes, void *all) = NULL;

static size_t contiguous_bytes(const ggc_tensor *t) { return t->nb[GGC_MAX_DIMS - 1] * (size_t)t->ne[GGC_MAX_DIMS - 1]; }

/* all ranks' parts, in rank order, before they are interleaved into dst */
size_t ggc_work_all_gather(const ggc_node *n) { return contiguous_bytes(&n->dst); }

/* dst (contiguous, the whole) from every rank's src0 (contiguous, its part along dim op_params[0]):
 * the parts arrive one after the other and are interleaved per index of the dims above dim */
void ggc_op_all_gather(const ggc_node *n, ggc_work *w) {
    const int d = n->op_params[0];
    const size_t part = contiguous_bytes(&n->src[0]);
    if (!ggc_all_gather_hook) {
        if (n->dst.data != n->src[0].data) memmove(n->dst.data, n->src[0].data, part);
        return;
    }
    const int64_t ranks = n->dst.ne[d] / n->src[0].ne[d];
    char *all = (char *)w->data;
    ggc_all_gather_hook(n->src[0].data, part, all);
    const size_t chunk = d < GGC_MAX_DIMS - 1 ? n->src[0].nb[d + 1] : part; /* one rank's run below dim+1 */
    char *dst = (char *)n->dst.data;
    for (size_t o = 0; o < part / chunk; o++)
        for (int64_t r = 0; r < ranks; r++) memcpy(dst + (o * (size_t)ranks + (size_t)r) * chunk, all + (size_t)r * part + o * chunk, chunk);
}
