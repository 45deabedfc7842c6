"""Tensor-parallel programs run as one process a rank.

    launch_ranks(2, [sys.executable, "worker.py"], target="c")

The C target's ranks run under OpenMPI's mpirun and talk through MPI. The CUDA target's ranks, one a
GPU of this host, are started here: each gets GGC_RANK, GGC_RANKS, GGC_LOCAL_RANK (its GPU) and
GGC_NCCL_ID (a new file through which rank 0 hands the others the NCCL communicator's id), and they
talk through NCCL. Every rank runs the same program (and the same Python) on its share of the split
weights; CProgram.rank tells them apart once the program is created, rank_env() before that.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import GgcError

INSTALL_HINT = "install OpenMPI (Debian: openmpi-bin libopenmpi-dev)"


def mpicc() -> str:
    """The MPI compiler wrapper a multi-rank program builds with ($MPICC, else mpicc)."""
    cc = os.environ.get("MPICC", "mpicc")
    if shutil.which(cc) is None:
        raise GgcError(f"{cc} not found: {INSTALL_HINT}")
    return cc


@functools.cache
def _is_open_mpi(mpirun: str) -> bool:
    r = subprocess.run([mpirun, "--version"], capture_output=True, text=True)
    return "Open MPI" in r.stdout + r.stderr


def mpirun_command(n: int) -> list[str]:
    """The command line prefix that runs n ranks on this machine: more ranks than cores are allowed
    (--oversubscribe), and so is root, as in containers (Open MPI refuses both by default)."""
    if n < 1:
        raise GgcError(f"{n} ranks: a program runs on 1 or more")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise GgcError(f"mpirun not found: {INSTALL_HINT}")
    cmd = [mpirun]
    if _is_open_mpi(mpirun):
        cmd.append("--oversubscribe")
        if hasattr(os, "getuid") and os.getuid() == 0:
            cmd.append("--allow-run-as-root")
    return [*cmd, "-n", str(n)]


def rank_env() -> tuple[int, int] | None:
    """(rank, ranks) of this process as its launcher (launch_ranks, or mpirun) set them in its
    environment, None outside one: for the work before a program is created (CProgram.rank is the
    program's own answer)."""
    for rank, size in (("GGC_RANK", "GGC_RANKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                       ("PMI_RANK", "PMI_SIZE")):
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return None


def launch_ranks(n: int, cmd: list[str], target: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run cmd as n ranks of a program for target ("c": under mpirun; "cuda": n processes, one a GPU)
    and wait for all. capture: collect their output (each rank's in turn) instead of passing it through."""
    if target != "cuda":
        return subprocess.run(mpirun_command(n) + cmd, capture_output=capture, text=True)
    require_gpus(n)
    with tempfile.TemporaryDirectory(prefix="ggc-ranks-") as tmp:
        env = dict(os.environ, GGC_RANKS=str(n), GGC_NCCL_ID=str(Path(tmp) / "nccl-id"), NCCL_NVLS_ENABLE="0")
        outs = [open(Path(tmp) / f"out{r}", "w+") if capture else None for r in range(n)]  # noqa: SIM115
        procs = [subprocess.Popen(cmd, env=dict(env, GGC_RANK=str(r), GGC_LOCAL_RANK=str(r)), text=True,
                                  stdout=outs[r], stderr=subprocess.STDOUT if capture else None)
                 for r in range(n)]
        rc = _wait_all(procs)
        text = ""
        for r, f in enumerate(outs):
            if f is not None:
                f.seek(0)
                text += (f"--- rank {r}\n" if n > 1 else "") + f.read()
                f.close()
    return subprocess.CompletedProcess(cmd, rc, stdout=text if capture else None, stderr="" if capture else None)


def require_gpus(n: int) -> None:
    """A GgcError unless this machine has a GPU for each of n CUDA ranks."""
    from ..backends.cuda.abi import driver_devices

    gpus = len(driver_devices())
    if gpus < n:
        raise GgcError(f"{n} ranks on the CUDA target need {n} GPUs, one a rank; this machine has {gpus}")


def _wait_all(procs: list[subprocess.Popen], grace_s: float = 10.0) -> int:
    """Wait for every rank; once one fails, the others (which would wait for it in a collective
    forever) get grace_s to finish and are then stopped. The first failure's exit status, else 0."""
    failed_at: float | None = None
    rc = 0
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.returncode not in (None, 0) and failed_at is None:
                failed_at, rc = time.monotonic(), p.returncode
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    return rc or next((p.returncode for p in procs if p.returncode), 0)
