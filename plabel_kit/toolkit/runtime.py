"""Runtime helpers: where to compute (device, cores, a process pool), which torchrun rank this
process is, a barrier between ranks, and log lines on stderr that ``--quiet`` silences.

No torch at import: the functions that need it import it when called."""
from __future__ import annotations

import os
import sys

from ..progress import quiet


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on torchrun's rank 0 and outside torchrun: the process that writes shared files."""
    return shard()[0] == 0


def local_rank() -> int:
    """This process's index among the ranks on this machine (torchrun's LOCAL_RANK; 0 outside)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    """Wait for every rank (a no-op outside torchrun or before the process group exists; never
    imports torch itself, so a torch-free stage stays torch-free)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def pick_device(name: str = "auto"):
    """``torch.device`` for ``name``: ``auto`` = this rank's GPU (cuda:LOCAL_RANK) when CUDA is
    available, else the CPU; anything else as ``torch.device(name)`` ("cpu", "cuda:1")."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    return torch.device(name)


def available_cores() -> int:
    """Cores this process may use, shared among torchrun's ranks on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def process_pool(workers: int, initializer=None, initargs: tuple = ()):
    """A ``ProcessPoolExecutor`` of ``workers`` processes, forked where the platform can, each
    starting with ``initializer(*initargs)`` when given (e.g. :func:`exit_with_parent`).

    fork: spawn and forkserver re-run the caller's script in every worker unless it is
    guarded by ``if __name__ == "__main__"``; forked workers suit numpy / pydensecrf work
    (not CUDA). The caller shuts it down (or uses it in a ``with`` block)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)


def exit_with_parent(parent: int) -> None:
    """Process-pool initializer: a daemon thread ends the worker once ``parent`` (a pid) is
    gone. A SIGKILLed parent would otherwise leave its forked workers waiting for work
    forever (the pipe they read stays open in their siblings, so they never see its end)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def log(message: str) -> None:
    """A progress line on stderr, unless ``--quiet`` / PLABEL_QUIET=1."""
    if not quiet():
        import click

        click.echo(message, err=True)
