/* GGUF loader: copies each weight the program needs from a GGUF file into its arena offset.
 *
 * The file is untrusted. Every count, length and offset is checked against the file size before
 * it is used, arithmetic is overflow-checked, and allocations are bounded by the file size, so a
 * truncated or hostile file gives an error message, never a crash. Each weight's type and shape
 * must equal what the program was compiled for; a split weight (ggc_program.h) must be this
 * rank's share of its GGUF tensor, and only that share is read.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggc_program.h"

#define MAX_NAME 256
#define MAX_DIMS 4

enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY, T_U64, T_I64, T_F64 };

typedef struct {
    FILE *f;
    const char *path;
    uint64_t size, pos;
    char *err;
    size_t err_len;
} reader;

typedef struct {
    char name[MAX_NAME];
    uint32_t n_dims;
    int64_t ne[MAX_DIMS];
    uint32_t type;
    uint64_t offset;
} tensor_info;

static int fail(reader *r, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->err && r->err_len) snprintf(r->err, r->err_len, "%s: at byte %" PRIu64 ": %s", r->path, r->pos, msg);
    return -1;
}

static int read_bytes(reader *r, void *dst, uint64_t n) {
    if (n > r->size - r->pos) return fail(r, "truncated: needs %" PRIu64 " more bytes", n);
    if (n && fread(dst, 1, (size_t)n, r->f) != n) return fail(r, "read error");
    r->pos += n;
    return 0;
}

static int skip(reader *r, uint64_t n) {
    if (n > r->size - r->pos) return fail(r, "truncated: needs %" PRIu64 " more bytes", n);
    if (fseek(r->f, (long)n, SEEK_CUR) != 0) return fail(r, "seek error");
    r->pos += n;
    return 0;
}

static int read_u32(reader *r, uint32_t *v) { return read_bytes(r, v, 4); }
static int read_u64(reader *r, uint64_t *v) { return read_bytes(r, v, 8); }

/* a string: read into buf (NUL-terminated) when it fits, else refuse */
static int read_string(reader *r, char *buf, size_t cap) {
    uint64_t n;
    if (read_u64(r, &n)) return -1;
    if (n >= cap) return fail(r, "string of %" PRIu64 " bytes is too long", n);
    if (read_bytes(r, buf, n)) return -1;
    buf[n] = 0;
    return 0;
}

static int skip_string(reader *r) {
    uint64_t n;
    if (read_u64(r, &n)) return -1;
    return skip(r, n);
}

static uint64_t scalar_size(uint32_t t) {
    switch (t) {
    case T_U8: case T_I8: case T_BOOL: return 1;
    case T_U16: case T_I16: return 2;
    case T_U32: case T_I32: case T_F32: return 4;
    case T_U64: case T_I64: case T_F64: return 8;
    default: return 0;
    }
}

/* a metadata value; general.alignment is the one key the loader needs */
static int read_value(reader *r, uint32_t type, int want_u32, uint32_t *out) {
    if (type == T_STRING) return skip_string(r);
    if (type == T_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (read_u32(r, &et) || read_u64(r, &n)) return -1;
        if (et == T_STRING) {
            if (n > (r->size - r->pos) / 8) return fail(r, "array of %" PRIu64 " strings runs past the end", n);
            for (uint64_t i = 0; i < n; i++)
                if (skip_string(r)) return -1;
            return 0;
        }
        uint64_t es = scalar_size(et);
        if (!es) return fail(r, "array of unsupported element type %u", et);
        if (n > (r->size - r->pos) / es) return fail(r, "array of %" PRIu64 " elements runs past the end", n);
        return skip(r, n * es);
    }
    uint64_t s = scalar_size(type);
    if (!s) return fail(r, "unknown metadata value type %u", type);
    if (want_u32) {
        if (type != T_U32) return fail(r, "general.alignment must be a u32");
        return read_u32(r, out);
    }
    return skip(r, s);
}

/* GGUF type numbers (fixed by the GGUF format) to ggc types; -1 for types this backend lacks */
static int ggc_type_of_gguf(uint32_t t) {
    switch (t) {
    case 0: return GGC_TYPE_F32;
    case 1: return GGC_TYPE_F16;
    case 2: return GGC_TYPE_Q4_0;
    case 3: return GGC_TYPE_Q4_1;
    case 6: return GGC_TYPE_Q5_0;
    case 7: return GGC_TYPE_Q5_1;
    case 8: return GGC_TYPE_Q8_0;
    case 9: return GGC_TYPE_Q8_1;
    case 10: return GGC_TYPE_Q2_K;
    case 11: return GGC_TYPE_Q3_K;
    case 12: return GGC_TYPE_Q4_K;
    case 13: return GGC_TYPE_Q5_K;
    case 14: return GGC_TYPE_Q6_K;
    case 15: return GGC_TYPE_Q8_K;
    case 24: return GGC_TYPE_I8;
    case 25: return GGC_TYPE_I16;
    case 26: return GGC_TYPE_I32;
    case 27: return GGC_TYPE_I64;
    case 28: return GGC_TYPE_F64;
    case 30: return GGC_TYPE_BF16;
    default: return -1;
    }
}

static const char *TYPE_NAMES[GGC_TYPE_COUNT] = {
    "f32", "f16", "bf16", "i8", "i16", "i32", "i64", "f64", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
    "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K",
};

static const char *type_name(int t) {
    return t >= 0 && t < GGC_TYPE_COUNT ? TYPE_NAMES[t]
           : t == GGC_TYPE_Q4_0R8       ? "q4_0 (regrouped by 8 blocks)"
           : t == GGC_TYPE_Q6_KR8       ? "q6_K (regrouped by 8 blocks)"
                                        : "?";
}

/* Rows of blocks of `blk` bytes regrouped in place for GPU programs, by 8 blocks: each block splits
 * into parts of the sizes given, and a group holds part 0 of its 8 blocks, then part 1 of the 8, ...
 * (the same bytes, so that a block's quants are aligned wide loads) */
static void regroup8(char *data, size_t nbytes, size_t blk, const size_t *parts, int n_parts) {
    char tmp[8 * 256];
    for (size_t g = 0; g + 8 * blk <= nbytes; g += 8 * blk) {
        memcpy(tmp, data + g, 8 * blk);
        size_t at = 0, in = 0;
        for (int p = 0; p < n_parts; in += parts[p++])
            for (int b = 0; b < 8; b++, at += parts[p]) memcpy(data + g + at, tmp + blk * b + in, parts[p]);
    }
}

/* q4_0 -> GGC_TYPE_Q4_0R8: {d, qs[16]} x 8 becomes d x 8, qs[16] x 8 (144 bytes a group) */
static void regroup_q4_0(char *data, size_t nbytes) {
    static const size_t parts[] = {2, 16};
    regroup8(data, nbytes, 18, parts, 2);
}

/* q6_K -> GGC_TYPE_Q6_KR8: {ql[128], qh[64], scales[16], d} x 8 becomes ql x 8, qh x 8, scales x 8,
 * d x 8 (1680 bytes a group) */
static void regroup_q6_k(char *data, size_t nbytes) {
    static const size_t parts[] = {128, 64, 16, 2};
    regroup8(data, nbytes, 210, parts, 4);
}

/* the weights of every graph, each GGUF tensor once (graphs share them at the same offset) */
static int n_weights(void) {
    int n = 0;
    for (int g = 0; g < GGC_N_GRAPHS; g++) n += GGC_GRAPHS[g].n_tensors;
    return n;
}
static const ggc_tensor_info *weight(int k) {
    int g = 0;
    while (k >= GGC_GRAPHS[g].n_tensors) k -= GGC_GRAPHS[g++].n_tensors;
    const ggc_tensor_info *w = &GGC_GRAPHS[g].tensors[k];
    if (w->role != GGC_ROLE_WEIGHT) return NULL;
    for (int h = 0; h < g; h++)
        for (int i = 0; i < GGC_GRAPHS[h].n_tensors; i++) {
            const ggc_tensor_info *o = &GGC_GRAPHS[h].tensors[i];
            if (o->role == GGC_ROLE_WEIGHT && o->offset == w->offset) return NULL;
        }
    return w;
}

/* the dimension a weight is split along across ranks, or -1 */
static int split_dim(const char *name) {
    for (int i = 0; i < GGC_N_SPLITS; i++)
        if (strcmp(GGC_SPLITS[i].name, name) == 0) return GGC_SPLITS[i].dim;
    return -1;
}

/* Where this rank's share of a weight split along dim d lies in the file's tensor: n_chunks runs
 * of chunk bytes, one for each index over the dimensions above d, at stride chunk * GGC_RANKS
 * (the file's tensor is GGC_RANKS times the program's along d). 0, or -1 when the program's
 * tensor is not whole blocks laid out contiguously. */
static int split_chunks(const ggc_tensor_info *w, int type, int d, uint64_t *chunk, uint64_t *n_chunks) {
    const int64_t blck = ggc_blck_size((ggc_type)type);
    if (w->ne[0] % blck) return -1;
    uint64_t c = (uint64_t)(w->ne[0] / blck) * ggc_type_size((ggc_type)type), n = 1;
    for (int k = 1; k <= d; k++) c *= (uint64_t)w->ne[k];
    for (int k = d + 1; k < MAX_DIMS; k++) n *= (uint64_t)w->ne[k];
    *chunk = c;
    *n_chunks = n;
    return c * n == w->nbytes ? 0 : -1;
}

static int load(reader *r, char *arena, int rank) {
    char magic[4];
    uint32_t version, alignment = 32;
    uint64_t n_tensors, n_kv;
    if (read_bytes(r, magic, 4)) return -1;
    if (memcmp(magic, "GGUF", 4) != 0) return fail(r, "not a GGUF file (bad magic)");
    if (read_u32(r, &version)) return -1;
    if (version != 2 && version != 3) return fail(r, "unsupported GGUF version %u", version);
    if (read_u64(r, &n_tensors) || read_u64(r, &n_kv)) return -1;
    /* a tensor info takes at least 24 bytes and a key-value pair at least 12 */
    if (n_tensors > r->size / 24 || n_kv > r->size / 12)
        return fail(r, "implausible counts: %" PRIu64 " tensors, %" PRIu64 " keys", n_tensors, n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        char key[MAX_NAME];
        uint32_t type;
        if (read_string(r, key, sizeof key) || read_u32(r, &type)) return -1;
        int is_align = strcmp(key, "general.alignment") == 0;
        if (read_value(r, type, is_align, &alignment)) return -1;
        if (is_align && (alignment == 0 || (alignment & (alignment - 1))))
            return fail(r, "general.alignment %u is not a power of two", alignment);
    }
    tensor_info *infos = calloc(n_tensors ? n_tensors : 1, sizeof *infos);
    if (!infos) return fail(r, "out of memory for %" PRIu64 " tensor infos", n_tensors);
    int rc = -1;
    for (uint64_t i = 0; i < n_tensors; i++) {
        tensor_info *t = &infos[i];
        if (read_string(r, t->name, sizeof t->name) || read_u32(r, &t->n_dims)) goto done;
        if (t->n_dims < 1 || t->n_dims > MAX_DIMS) {
            fail(r, "tensor '%s' has %u dimensions", t->name, t->n_dims);
            goto done;
        }
        for (int d = 0; d < MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if (read_bytes(r, &t->ne[d], 8)) goto done;
        if (read_u32(r, &t->type) || read_u64(r, &t->offset)) goto done;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(infos[j].name, t->name) == 0) {
                fail(r, "tensor '%s' appears twice", t->name);
                goto done;
            }
    }
    uint64_t data = (r->pos + alignment - 1) / alignment * alignment;
    if (data > r->size) {
        fail(r, "the data section starts past the end of the file");
        goto done;
    }
    for (int k = 0; k < n_weights(); k++) {
        const ggc_tensor_info *w = weight(k);
        if (!w) continue; /* shared with an earlier graph: loaded once */
        const tensor_info *t = NULL;
        for (uint64_t i = 0; i < n_tensors && !t; i++)
            if (strcmp(infos[i].name, w->name) == 0) t = &infos[i];
        if (!t) {
            fail(r, "tensor '%s' is missing", w->name);
            goto done;
        }
        int type = ggc_type_of_gguf(t->type);
        const int regroup = (w->type == GGC_TYPE_Q4_0R8 && type == GGC_TYPE_Q4_0) ||
                            (w->type == GGC_TYPE_Q6_KR8 && type == GGC_TYPE_Q6_K);
        if (type != (int)w->type && !regroup) {
            fail(r, "tensor '%s' has GGUF type %u (%s), the program expects %s", w->name, t->type,
                 type >= 0 ? TYPE_NAMES[type] : "unsupported", type_name(w->type));
            goto done;
        }
        /* the file's shape: the program's, GGC_RANKS times longer along a split dimension */
        const int split = split_dim(w->name);
        int64_t want[MAX_DIMS];
        for (int d = 0; d < MAX_DIMS; d++) want[d] = w->ne[d] * (d == split ? GGC_RANKS : 1);
        for (int d = 0; d < MAX_DIMS; d++)
            if (t->ne[d] != want[d]) {
                char how[96] = "";
                if (split >= 0)
                    snprintf(how, sizeof how, " (this rank's [%" PRId64 "] along dimension %d, times %d ranks)",
                             w->ne[split], split, GGC_RANKS);
                fail(r, "tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "], the program expects "
                        "[%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "]%s", w->name, t->ne[0], t->ne[1], t->ne[2],
                     t->ne[3], want[0], want[1], want[2], want[3], how);
                goto done;
            }
        if (t->offset % alignment) {
            fail(r, "tensor '%s': offset %" PRIu64 " is not aligned to %u", w->name, t->offset, alignment);
            goto done;
        }
        /* n_chunks runs of chunk bytes at stride chunk * GGC_RANKS, this rank's at rank * chunk in
           each; an unsplit weight is one run of all its bytes */
        uint64_t chunk = w->nbytes, n_chunks = 1, stride = w->nbytes, skip_to = 0;
        if (split >= 0) {
            if (split_chunks(w, type, split, &chunk, &n_chunks) != 0) {
                fail(r, "tensor '%s': the program's share of it is not contiguous whole blocks", w->name);
                goto done;
            }
            stride = chunk * (uint64_t)GGC_RANKS;
            skip_to = chunk * (uint64_t)rank;
        }
        /* the whole tensor must be in the file, all ranks' shares (so every rank checks the same bounds) */
        const uint64_t total = n_chunks * stride;
        if (t->offset > r->size - data || total > r->size - data - t->offset) {
            fail(r, "tensor '%s': data [%" PRIu64 ", +%" PRIu64 ") runs past the end of the file", w->name, t->offset, total);
            goto done;
        }
        for (uint64_t c = 0; c < n_chunks; c++) {
            const uint64_t at = data + t->offset + c * stride + skip_to;
            if (fseek(r->f, (long)at, SEEK_SET) != 0 || fread(arena + w->offset + c * chunk, 1, chunk, r->f) != chunk) {
                fail(r, "tensor '%s': read error", w->name);
                goto done;
            }
        }
        if (regroup) /* whole rows of whole groups: the compiler's choice */
            (type == GGC_TYPE_Q4_0 ? regroup_q4_0 : regroup_q6_k)(arena + w->offset, w->nbytes);
    }
    rc = 0;
done:
    free(infos);
    return rc;
}

int ggc_gguf_load(const char *path, char *arena, int rank, char *err, size_t err_len) {
    reader r = {NULL, path, 0, 0, err, err_len};
    if (err && err_len) err[0] = 0;
    if (rank < 0 || rank >= GGC_RANKS) return fail(&r, "rank %d of a program of %d ranks", rank, GGC_RANKS);
    r.f = fopen(path, "rb");
    if (!r.f) return fail(&r, "cannot open: %s", strerror(errno));
    int rc = -1;
    if (fseek(r.f, 0, SEEK_END) == 0) {
        long end = ftell(r.f);
        if (end >= 0 && fseek(r.f, 0, SEEK_SET) == 0) {
            r.size = (uint64_t)end;
            rc = load(&r, arena, rank);
        }
    }
    if (rc != 0 && err && err_len && !err[0]) fail(&r, "cannot read the file");
    fclose(r.f);
    return rc;
}
