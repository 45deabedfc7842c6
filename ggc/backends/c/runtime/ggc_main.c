/* A small command-line driver for a generated program:
 *
 *   ./model MODEL.gguf [-g GRAPH] [-i NAME=FILE]... [-o NAME=FILE]... [-t THREADS] [-r RUNS] [--list]
 *
 * GRAPH names one of the program's graphs (say prefill or decode); the default is the first.
 * Inputs and outputs are raw little-endian tensor bytes; NAME may end in #K for the K-th tensor
 * of that name. Errors go to stderr with exit status 2.
 *
 * A program of several ranks runs under mpirun (mpirun -n RANKS ./model ...): every rank loads its
 * share of the weights and reads the inputs; rank 0 alone reports the time and writes the outputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggc_model.h"

static const char *ROLES[] = {"weight", "state", "input", "output", "scratch", "view"};

static int split(const char *arg, char *name, size_t cap, const char **file, int *k) {
    const char *eq = strchr(arg, '=');
    if (!eq || (size_t)(eq - arg) >= cap) return -1;
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = 0;
    *file = eq + 1;
    *k = 0;
    char *hash = strrchr(name, '#');
    if (hash) {
        *k = atoi(hash + 1);
        *hash = 0;
    }
    return 0;
}

static int graph = 0;

static const ggc_tensor_info *info_of(const char *name, int k, int role) {
    for (int i = 0; i < ggc_model_n_tensors(graph); i++) {
        const ggc_tensor_info *t = ggc_model_tensor(graph, i);
        if (t->role == role && strcmp(t->name, name) == 0 && k-- == 0) return t;
    }
    return NULL;
}

static int die(const char *msg, const char *what) {
    fprintf(stderr, "error: %s%s\n", msg, what ? what : "");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: %s MODEL.gguf [-g GRAPH] [-i NAME=FILE]... [-o NAME=FILE]... [-t N] [-r RUNS] [--list]\n",
                argv[0]);
        return 2;
    }
    for (int a = 1; a + 1 < argc; a++)
        if (!strcmp(argv[a], "-g") && (graph = ggc_model_find_graph(argv[a + 1])) < 0) return die("no graph named ", argv[a + 1]);
    if (!strcmp(argv[1], "--list")) {
        for (int g = 0; g < ggc_model_n_graphs(); g++) printf("graph   %s\n", ggc_model_graph_name(g));
        for (int i = 0; i < ggc_model_n_tensors(graph); i++) {
            const ggc_tensor_info *t = ggc_model_tensor(graph, i);
            if (t->role != GGC_ROLE_SCRATCH && t->role != GGC_ROLE_VIEW)
                printf("%-7s %-32s [%lld, %lld, %lld, %lld] %zu bytes\n", ROLES[t->role], t->name, (long long)t->ne[0],
                       (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], t->nbytes);
        }
        return 0;
    }
    ggc_model *m = ggc_model_create();
    if (!m) return die(ggc_last_error(), NULL);
    char err[1024];
    if (ggc_model_load_weights(m, argv[1], err, sizeof err) != 0) {
        ggc_model_free(m);
        return die(err, NULL);
    }
    const int rank = ggc_model_rank(m);
    int runs = 1, rc = 0;
    for (int a = 2; a < argc && rc == 0; a++) {
        char name[256];
        const char *file;
        int k;
        if (!strcmp(argv[a], "-t") && a + 1 < argc) {
            if (ggc_model_set_threads(m, atoi(argv[++a])) != 0) rc = die("out of memory for kernel work", NULL);
        } else if (!strcmp(argv[a], "-r") && a + 1 < argc) {
            runs = atoi(argv[++a]);
        } else if (!strcmp(argv[a], "-i") && a + 1 < argc) {
            if (split(argv[++a], name, sizeof name, &file, &k)) { rc = die("bad -i argument: ", argv[a]); break; }
            const ggc_tensor_info *t = info_of(name, k, GGC_ROLE_INPUT);
            if (!t) { rc = die("no input named ", name); break; }
            FILE *f = fopen(file, "rb");
            if (!f) { rc = die("cannot open ", file); break; }
            char *buf = malloc(t->nbytes ? t->nbytes : 1);
            size_t got = buf ? fread(buf, 1, t->nbytes, f) : 0;
            int extra = fgetc(f) != EOF;
            fclose(f);
            if (got != t->nbytes || extra) rc = die("input file size differs from the tensor's: ", file);
            else if (ggc_model_write(m, t->offset, buf, t->nbytes) != 0) rc = die("cannot write the input ", name);
            free(buf);
            if (rc) break;
        } else if ((!strcmp(argv[a], "-o") || !strcmp(argv[a], "-g")) && a + 1 < argc) {
            a++; /* -o is handled after the run, -g before */
        } else {
            rc = die("unknown argument ", argv[a]);
        }
    }
    if (rc == 0) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int r = 0; r < runs && rc == 0; r++)
            if (ggc_model_run_graph(m, graph) != 0) rc = die(ggc_model_error(m), NULL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6) / runs;
        if (rank == 0) fprintf(stderr, "%d run(s), %.3f ms per run\n", runs, ms);
        for (int a = 2; a < argc && rc == 0 && rank == 0; a++) {
            if (strcmp(argv[a], "-o") || a + 1 >= argc) continue;
            char name[256];
            const char *file;
            int k;
            if (split(argv[++a], name, sizeof name, &file, &k)) { rc = die("bad -o argument: ", argv[a]); break; }
            const ggc_tensor_info *t = info_of(name, k, GGC_ROLE_OUTPUT);
            if (!t) { rc = die("no output named ", name); break; }
            char *buf = malloc(t->nbytes ? t->nbytes : 1);
            FILE *f = fopen(file, "wb");
            if (!buf || ggc_model_read(m, t->offset, buf, t->nbytes) != 0 || !f || fwrite(buf, 1, t->nbytes, f) != t->nbytes)
                rc = die("cannot write ", file);
            if (f) fclose(f);
            free(buf);
        }
    }
    ggc_model_free(m);
    return rc;
}
