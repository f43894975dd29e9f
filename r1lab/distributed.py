"""Data parallelism under ``torchrun``: which process this is, and the few collectives training needs.

``r1lab zero --nproc N`` (or ``torchrun --nproc_per_node N -m r1lab zero ...``) starts N processes. Each holds a
whole copy of the policy (replication: the small-model default; ``--parallel fsdp`` shards it instead, see
:mod:`r1lab.sharding`), samples its share of a step's prompts, and
computes its part of the loss with weights normalised over the *global* batch, so that the sum of the ranks'
gradients is the gradient a single process would compute on the whole batch. One all-reduce (a sum) makes every
rank's gradient that global one; every rank then takes the same optimizer step, so the copies stay equal without
ever being broadcast. Rank 0 alone writes files (metrics, samples, checkpoints, reports).

In a single process (no ``WORLD_SIZE`` in the environment) :func:`world` is ``World(0, 1)`` and every collective
here returns its input: the training loop reads the same either way.

Backends: gloo on CPU, NCCL on CUDA (each process on ``cuda:LOCAL_RANK``); ``R1LAB_DIST_BACKEND=gloo`` forces gloo,
for a ``--device cpu`` run on a machine that has GPUs. Multi-node is ``torchrun``'s own flags
(``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``); nothing here depends on the node count.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def share(self, items: list) -> list[tuple[int, object]]:
        """This rank's items as ``(global index, item)``: every ``size``-th from ``rank`` (never split further)."""
        return [(i, item) for i, item in enumerate(items) if i % self.size == self.rank]

    def gather(self, value) -> list:
        """``value`` from every rank, in rank order (any picklable object)."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def gather_shares(self, mine: list) -> tuple[list, list[int]]:
        """Every rank's :meth:`share` gathered back in the order of the whole list (the ``i``-th item ``i``-th),
        and the rank that held each."""
        if self.size == 1:
            return mine, [0] * len(mine)
        parts = self.gather(mine)
        order = [(rank, j) for j in range(max(map(len, parts))) for rank in range(self.size) if j < len(parts[rank])]
        return [parts[rank][j] for rank, j in order], [rank for rank, _ in order]

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        return sum(self.gather(float(value)))

    def max(self, value):
        return value if self.size == 1 else max(self.gather(value))

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_gradients(self, parameters) -> None:
        """Every rank's gradient becomes the sum over ranks (missing gradients count as zeros), flattened into one
        all-reduce per dtype and device."""
        if self.size == 1:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        buckets: dict[tuple, list] = {}
        for p in params:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def threads(self, threads: int) -> int:
        """CPU threads for this process: ``threads``, or with 0 (all cores) this machine's cores shared out among
        the processes on it."""
        if threads or self.size == 1:
            return threads
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.size))
        return max(1, (os.cpu_count() or 1) // local)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


SINGLE = World()  #: one process
_WORLD: World | None = None


def world() -> World:
    """This process's place, joining the process group the first time under ``torchrun`` (``WORLD_SIZE`` > 1)."""
    global _WORLD
    if _WORLD is None:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1 and not dist.is_initialized():
            die_with_parent()  # torchrun starts each rank in a session of its own: a job killed stops them too
            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = torch.cuda.is_available() and os.environ.get("R1LAB_DIST_BACKEND", "") != "gloo"
            if cuda:
                torch.cuda.set_device(local)
            # rank 0 alone evaluates and saves while the others wait: allow that far longer than the 10-30 min default
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
            if dist.get_rank() != 0:  # one copy of the run's own lines (rank 0's); warnings and errors still show
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        _WORLD = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))) \
            if size > 1 else World()
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the process that started it ends (Linux; elsewhere nothing): a
    launcher killed with ``kill -9`` then takes its training processes with it, instead of leaving them to write
    the run folder beside the run that resumes it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent was already gone
        os.kill(os.getpid(), signal.SIGKILL)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``r1lab`` with ``argv`` in ``nproc`` processes through torchrun (one machine); returns its exit code.
    SIGTERM and SIGINT are passed on to torchrun (which stops its processes); killed outright, this process takes
    torchrun, and so the training processes, with it."""
    import signal
    import subprocess

    rest, skip = [], False  # torchrun would read --nproc as its own (ambiguous) option; each process knows its world
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        if not skip:
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "r1lab.cli", *rest]
    child = subprocess.Popen(command, preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads here yet)
    passed_on = {sig: signal.signal(sig, lambda signum, _: child.send_signal(signum))
                 for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in passed_on.items():
            signal.signal(sig, handler)
