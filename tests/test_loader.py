"""The generated programs' GGUF loader against hostile and mismatched files, under ASan and UBSan.

The loader (ggc_gguf.c) and runtime (ggc_model.c) are built with a tiny stand-in program.c that
declares two weights, f32 [8, 4] "a" and f16 [32] "b", and a driver that loads a file and prints
the error. Every bad file must give a clear error and exit 1: no crash, no sanitizer report.
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
static const ggc_tensor_info T0[] = {
    {0, "a", GGC_TYPE_F32, {8, 4, 1, 1}, {4, 32, 128, 128}, 0, 128, GGC_ROLE_WEIGHT},
    {1, "b", GGC_TYPE_F16, {32, 1, 1, 1}, {2, 64, 64, 64}, 128, 64, GGC_ROLE_WEIGHT},
};
static const ggc_tensor_info T1[] = {  /* a second graph sharing "b": loaded once */
    {0, "b", GGC_TYPE_F16, {32, 1, 1, 1}, {2, 64, 64, 64}, 128, 64, GGC_ROLE_WEIGHT},
};
static const ggc_node_desc N0[] = {{0, {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1}, {0}}};
static size_t work_size(const ggc_node *n) { (void)n; return 0; }
static void run_group(int g, ggc_node *n, void *w, char *a) { (void)g; (void)n; (void)w; (void)a; }
const ggc_graph_desc GGC_GRAPHS[] = {{"g0", T0, 2, N0, 0, 0, work_size, run_group},
                                     {"g1", T1, 1, N0, 0, 0, work_size, run_group}};
const int GGC_N_GRAPHS = 2;
const size_t GGC_ARENA_SIZE = 192, GGC_STATE_OFFSET = 192, GGC_STATE_SIZE = 0;
"""

DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "ggc_model.h"
int main(int argc, char **argv) {
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


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("loader")
    (d / "program.c").write_text(PROGRAM)
    (d / "driver.c").write_text(DRIVER)
    exe = d / "load"
    srcs = [d / "program.c", d / "driver.c", RUNTIME_DIR / "ggc_model.c", RUNTIME_DIR / "ggc_gguf.c",
            KERNEL_DIR / "ggc_core.c"]
    flags = ["-std=c11", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror"]
    r = subprocess.run([cc, *flags, "-I", str(RUNTIME_DIR), "-I", str(KERNEL_DIR), *map(str, srcs), "-o", str(exe),
                        "-lm"], capture_output=True, text=True)
    if r.returncode != 0 and "sanitize" in r.stderr:
        pytest.skip(f"this gcc cannot build with sanitizers: {r.stderr[:200]}")
    assert r.returncode == 0, r.stderr
    return exe


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
