"""The generated programs' GGUF loader against hostile and mismatched files, under ASan and UBSan.

The loader (ggc_gguf.c) and runtime (ggc_model.c) are built with a tiny stand-in program.c that
declares two weights, f32 [8, 4] "a" and f16 [32] "b", and a driver that loads a file and prints
the error. Every bad file must give a clear error and exit 1: no crash, no sanitizer report.
Built with -DSPLIT, the stand-in is one rank of two, each holding half of both weights ("a" split
along dimension 1, "b" along 0), and the driver loads the given rank's shares.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ggc.backends.c.abi import KERNEL_DIR
from ggc.backends.c.emit import RUNTIME_DIR

PROGRAM = r"""
#include "ggc_program.h"
#ifdef SPLIT
static const ggc_tensor_info T0[] = {
    {0, "a", GGC_TYPE_F32, {8, 2, 1, 1}, {4, 32, 64, 64}, 0, 64, GGC_ROLE_WEIGHT},
    {1, "b", GGC_TYPE_F16, {16, 1, 1, 1}, {2, 32, 32, 32}, 64, 32, GGC_ROLE_WEIGHT},
};
static const ggc_tensor_info T1[] = {
    {0, "b", GGC_TYPE_F16, {16, 1, 1, 1}, {2, 32, 32, 32}, 64, 32, GGC_ROLE_WEIGHT},
};
const int GGC_RANKS = 2;
const ggc_split_info GGC_SPLITS[] = {{"a", 1}, {"b", 0}};
const int GGC_N_SPLITS = 2;
const size_t GGC_ARENA_SIZE = 96, GGC_STATE_OFFSET = 96, GGC_STATE_SIZE = 0;
#else
static const ggc_tensor_info T0[] = {
    {0, "a", GGC_TYPE_F32, {8, 4, 1, 1}, {4, 32, 128, 128}, 0, 128, GGC_ROLE_WEIGHT},
    {1, "b", GGC_TYPE_F16, {32, 1, 1, 1}, {2, 64, 64, 64}, 128, 64, GGC_ROLE_WEIGHT},
};
static const ggc_tensor_info T1[] = {  /* a second graph sharing "b": loaded once */
    {0, "b", GGC_TYPE_F16, {32, 1, 1, 1}, {2, 64, 64, 64}, 128, 64, GGC_ROLE_WEIGHT},
};
const int GGC_RANKS = 1;
const ggc_split_info GGC_SPLITS[] = {{NULL, -1}};
const int GGC_N_SPLITS = 0;
const size_t GGC_ARENA_SIZE = 192, GGC_STATE_OFFSET = 192, GGC_STATE_SIZE = 0;
#endif
static const ggc_node_desc N0[] = {{0, {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1}, {0}}};
static size_t work_size(const ggc_node *n) { (void)n; return 0; }
static void run_group(int g, ggc_node *n, void *w, char *a) { (void)g; (void)n; (void)w; (void)a; }
const ggc_graph_desc GGC_GRAPHS[] = {{"g0", T0, 2, N0, 0, 0, work_size, run_group},
                                     {"g1", T1, 1, N0, 0, 0, work_size, run_group}};
const int GGC_N_GRAPHS = 2;
"""

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggc_program.h"
int main(int argc, char **argv) {
    if (argc == 3) { /* SPLIT: load rank argv[2]'s shares, print them as hex */
        char err[512], *arena = calloc(1, GGC_ARENA_SIZE);
        int rc = ggc_gguf_load(argv[1], arena, atoi(argv[2]), err, sizeof err);
        if (rc == 0)
            for (size_t i = 0; i < GGC_ARENA_SIZE; i++) printf("%02x", (unsigned char)arena[i]);
        else
            printf("error: %s\n", err);
        free(arena);
        return rc == 0 ? 0 : 1;
    }
    if (argc != 2) return 2;
    ggc_model *m = ggc_model_create();
    char err[512];
    int rc = ggc_model_load_weights(m, argv[1], err, sizeof err);
    if (rc == 0) {
        const float *a = (const float *)ggc_model_arena(m);
        printf("ok %g %g\n", a[0], a[31]);
    } else {
        printf("error: %s\n", err);
    }
    ggc_model_free(m);
    return rc == 0 ? 0 : 1;
}
"""

A = np.arange(32, dtype=np.float32)
B = np.linspace(-1, 1, 32).astype(np.float16)


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf(tensors: list | None = None, kv: bytes | None = None, n_kv: int | None = None, version: int = 3,
         magic: bytes = b"GGUF", n_tensors: int | None = None, align: int = 32, data: bytes | None = None) -> bytes:
    """A GGUF file built field by field. tensors: (name, n_dims, ne, type, offset)."""
    if tensors is None:
        tensors = [(b"a", 2, (8, 4), 0, 0), (b"b", 1, (32,), 1, 128)]
    if kv is None:
        kv = _str(b"general.alignment") + struct.pack("<II", 4, align)
        n_kv = 1
    out = magic + struct.pack("<I", version)
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, n_kv or 0) + kv
    for name, n_dims, ne, ttype, offset in tensors:
        out += _str(name) + struct.pack("<I", n_dims) + b"".join(struct.pack("<q", n) for n in ne)
        out += struct.pack("<IQ", ttype, offset)
    out += bytes(-len(out) % 32)
    return out + (data if data is not None else A.tobytes() + B.tobytes())


def _build(d: Path, split: bool) -> Path:
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc is not installed")
    (d / "program.c").write_text(PROGRAM)
    (d / "driver.c").write_text(DRIVER)
    exe = d / "load"
    srcs = [d / "program.c", d / "driver.c", RUNTIME_DIR / "ggc_model.c", RUNTIME_DIR / "ggc_gguf.c",
            KERNEL_DIR / "ggc_core.c", KERNEL_DIR / "ggc_comm.c"]
    flags = ["-std=c11", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror"] + (["-DSPLIT"] if split else [])
    r = subprocess.run([cc, *flags, "-I", str(RUNTIME_DIR), "-I", str(KERNEL_DIR), *map(str, srcs), "-o", str(exe),
                        "-lm"], capture_output=True, text=True)
    if r.returncode != 0 and "sanitize" in r.stderr:
        pytest.skip(f"this gcc cannot build with sanitizers: {r.stderr[:200]}")
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("loader"), split=False)


@pytest.fixture(scope="module")
def split_loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("split_loader"), split=True)


def run(loader: Path, tmp_path: Path, blob: bytes) -> subprocess.CompletedProcess:
    f = tmp_path / "m.gguf"
    f.write_bytes(blob)
    return subprocess.run([str(loader), str(f)], capture_output=True, text=True, timeout=60)


def test_a_good_file_loads(loader: Path, tmp_path: Path) -> None:
    r = run(loader, tmp_path, gguf())
    assert r.returncode == 0 and r.stdout.split() == ["ok", "0", "31"], r.stdout + r.stderr


U64 = (1 << 64) - 1
HOSTILE = {
    "empty file": (b"", "truncated"),
    "bad magic": (gguf(magic=b"GGUX"), "bad magic"),
    "unsupported version": (gguf(version=9), "unsupported GGUF version 9"),
    "truncated header": (gguf()[:14], "truncated"),
    "huge tensor count": (gguf(n_tensors=1 << 60), "implausible counts"),
    "huge key count": (gguf(kv=b"", n_kv=1 << 61), "implausible counts"),
    "huge key length": (gguf(kv=struct.pack("<Q", U64) + b"x" * 8, n_kv=1), "too long"),
    "unknown value type": (gguf(kv=_str(b"k") + struct.pack("<II", 99, 0), n_kv=1), "unknown metadata value type"),
    "huge scalar array": (gguf(kv=_str(b"k") + struct.pack("<IIQ", 9, 4, 1 << 62), n_kv=1), "runs past the end"),
    "huge string array": (gguf(kv=_str(b"k") + struct.pack("<IIQ", 9, 8, 1 << 62), n_kv=1), "runs past the end"),
    "string past the end": (gguf(kv=_str(b"k") + struct.pack("<IQ", 8, 1 << 40), n_kv=1), "truncated"),
    "alignment not a power of two": (gguf(align=48), "not a power of two"),
    "zero dimensions": (gguf(tensors=[(b"a", 0, (), 0, 0), (b"b", 1, (32,), 1, 128)]), "0 dimensions"),
    "too many dimensions": (gguf(tensors=[(b"a", 7, (8, 4, 1, 1, 1, 1, 1), 0, 0), (b"b", 1, (32,), 1, 128)]),
                            "7 dimensions"),
    "tensor name too long": (gguf(tensors=[(b"a" * 1000, 2, (8, 4), 0, 0)]), "too long"),
    "offset past the end": (gguf(tensors=[(b"a", 2, (8, 4), 0, 1 << 40), (b"b", 1, (32,), 1, 128)]),
                            "runs past the end"),
    "offset overflows": (gguf(tensors=[(b"a", 2, (8, 4), 0, U64 - 31), (b"b", 1, (32,), 1, 128)]),
                         "runs past the end"),
    "misaligned offset": (gguf(tensors=[(b"a", 2, (8, 4), 0, 4), (b"b", 1, (32,), 1, 128)]), "not aligned"),
    "wrong type": (gguf(tensors=[(b"a", 2, (8, 4), 1, 0), (b"b", 1, (32,), 1, 128)]), "the program expects f32"),
    "unknown type number": (gguf(tensors=[(b"a", 2, (8, 4), 99, 0), (b"b", 1, (32,), 1, 128)]), "unsupported"),
    "wrong shape": (gguf(tensors=[(b"a", 2, (4, 8), 0, 0), (b"b", 1, (32,), 1, 128)]), "has shape [4, 8, 1, 1]"),
    "negative size": (gguf(tensors=[(b"a", 2, (-8, -4), 0, 0), (b"b", 1, (32,), 1, 128)]), "has shape"),
    "missing tensor": (gguf(tensors=[(b"a", 2, (8, 4), 0, 0)]), "'b' is missing"),
    "duplicate tensor": (gguf(tensors=[(b"a", 2, (8, 4), 0, 0), (b"a", 2, (8, 4), 0, 0)]), "appears twice"),
    "truncated data": (gguf()[:-40], "runs past the end"),
    "truncated tensor table": (gguf()[:70], "truncated"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_an_error_not_a_crash(loader: Path, tmp_path: Path, case: str) -> None:
    blob, fragment = HOSTILE[case]
    r = run(loader, tmp_path, blob)
    assert r.returncode == 1, f"{case}: rc={r.returncode}\n{r.stdout}{r.stderr}"
    assert r.stdout.startswith("error: ") and fragment in r.stdout, f"{case}: {r.stdout}"
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr


def test_missing_file(loader: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(loader), str(tmp_path / "nope.gguf")], capture_output=True, text=True)
    assert r.returncode == 1 and "cannot open" in r.stdout


def run_rank(loader: Path, tmp_path: Path, blob: bytes, rank: int) -> subprocess.CompletedProcess:
    f = tmp_path / "m.gguf"
    f.write_bytes(blob)
    return subprocess.run([str(loader), str(f), str(rank)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_split_weight_loads_this_ranks_share(split_loader: Path, tmp_path: Path, rank: int) -> None:
    r = run_rank(split_loader, tmp_path, gguf(), rank)
    assert r.returncode == 0, r.stdout + r.stderr
    a = A.reshape(4, 8)[2 * rank : 2 * rank + 2]  # split along dimension 1: rows
    b = B[16 * rank : 16 * rank + 16]  # along dimension 0: within each row
    assert bytes.fromhex(r.stdout) == a.tobytes() + b.tobytes()


SPLIT_HOSTILE = {
    "unsplit shape": (gguf(tensors=[(b"a", 2, (8, 2), 0, 0), (b"b", 1, (32,), 1, 128)]),
                      "'a' has shape [8, 2, 1, 1], the program expects [8, 4, 1, 1] (this rank's [2] along "
                      "dimension 1, times 2 ranks)"),
    "split of the wrong dimension": (gguf(tensors=[(b"a", 2, (16, 2), 0, 0), (b"b", 1, (32,), 1, 128)]),
                                     "the program expects [8, 4, 1, 1]"),
    # rank 0's share is in the file, rank 1's is not: both ranks refuse it
    "the last share truncated": (gguf()[:-20], "'b': data [128, +64) runs past the end"),
    "offset past the end": (gguf(tensors=[(b"a", 2, (8, 4), 0, 1 << 40), (b"b", 1, (32,), 1, 128)]),
                            "runs past the end"),
    "offset overflows": (gguf(tensors=[(b"a", 2, (8, 4), 0, U64 - 31), (b"b", 1, (32,), 1, 128)]),
                         "runs past the end"),
}


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("case", list(SPLIT_HOSTILE))
def test_split_hostile_file_is_an_error(split_loader: Path, tmp_path: Path, case: str, rank: int) -> None:
    blob, fragment = SPLIT_HOSTILE[case]
    r = run_rank(split_loader, tmp_path, blob, rank)
    assert r.returncode == 1 and r.stdout.startswith("error: ") and fragment in r.stdout, f"{case}: {r.stdout}"
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr


def test_split_rank_out_of_range(split_loader: Path, tmp_path: Path) -> None:
    r = run_rank(split_loader, tmp_path, gguf(), 2)
    assert r.returncode == 1 and "rank 2 of a program of 2 ranks" in r.stdout, r.stdout
