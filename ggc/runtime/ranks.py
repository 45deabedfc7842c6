"""Tensor-parallel programs run as one process a rank under OpenMPI's mpirun.

    subprocess.run([*mpirun_command(2), sys.executable, "worker.py"])

Every rank runs the same program (and the same Python) on its share of the split weights;
CProgram.rank tells them apart once the program is created, rank_env() before that.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

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
    """(rank, ranks) of this process as mpirun set them in its environment, None outside mpirun:
    for the work before a program is created (CProgram.rank is the program's own answer)."""
    for rank, size in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return None
