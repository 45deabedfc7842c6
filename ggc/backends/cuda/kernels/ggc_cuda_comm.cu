// Communication between the ranks of a tensor-parallel program on several GPUs: ALL_REDUCE and
// ALL_GATHER, as the C backend's ggc_comm.c does them over MPI.
//
// The kernel library knows no NCCL: the runtime of a multi-rank program (ggc_model_cuda.cu built
// with GGC_NCCL) sets the hooks to its collectives, which queue on the stream they are given (and so
// are recorded into the program's CUDA graph with the kernels). Unset, the program runs on one rank:
// the sum over ranks is the value itself, and the one part is the whole.
#include "ggc_cuda.cuh"

extern "C" {
ggc_cuda_all_reduce_fn ggc_cuda_all_reduce_hook = nullptr;
ggc_cuda_all_gather_fn ggc_cuda_all_gather_hook = nullptr;
}

static size_t contiguous_bytes(const ggc_tensor *t) { return t->nb[GGC_MAX_DIMS - 1] * (size_t)t->ne[GGC_MAX_DIMS - 1]; }

// dst = the element-wise sum of src0 over all ranks (f32, contiguous; dst may be src0)
extern "C" void ggc_cuda_op_all_reduce(const ggc_node *n, const ggc_cuda_ctx *c) {
    const int64_t ne = ggc_nelements(&n->dst);
    if (ggc_cuda_all_reduce_hook) {
        ggc_cuda_all_reduce_hook((const float *)n->src[0].data, (float *)n->dst.data, ne, c->stream);
    } else if (n->dst.data != n->src[0].data) {
        cudaMemcpyAsync(n->dst.data, n->src[0].data, (size_t)ne * sizeof(float), cudaMemcpyDeviceToDevice, c->stream);
    }
}

// all ranks' parts, in rank order, before they are interleaved into dst
extern "C" size_t ggc_cuda_work_all_gather(const ggc_node *n) { return contiguous_bytes(&n->dst); }

// dst (contiguous, the whole) from every rank's src0 (contiguous, its part along dim op_params[0]).
// The parts arrive one after the other in the work buffer; each is then a strided 2-D copy into
// dst, where it fills one run of `chunk` bytes (its part of dim and those below) per index of the
// dims above.
extern "C" void ggc_cuda_op_all_gather(const ggc_node *n, const ggc_cuda_ctx *c) {
    const int d = n->op_params[0];
    const size_t part = contiguous_bytes(&n->src[0]);
    if (!ggc_cuda_all_gather_hook) {
        if (n->dst.data != n->src[0].data)
            cudaMemcpyAsync(n->dst.data, n->src[0].data, part, cudaMemcpyDeviceToDevice, c->stream);
        return;
    }
    const int64_t ranks = n->dst.ne[d] / n->src[0].ne[d];
    char *all = (char *)c->work;
    ggc_cuda_all_gather_hook(n->src[0].data, part, all, c->stream);
    const size_t chunk = d < GGC_MAX_DIMS - 1 ? n->src[0].nb[d + 1] : part;
    char *dst = (char *)n->dst.data;
    for (int64_t r = 0; r < ranks; r++)
        cudaMemcpy2DAsync(dst + (size_t)r * chunk, (size_t)ranks * chunk, all + (size_t)r * part, chunk, chunk,
                          part / chunk, cudaMemcpyDeviceToDevice, c->stream);
}
