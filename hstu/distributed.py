"""Data-parallel runs under ``torchrun``: the rank context, its process group, and the few collectives training
and evaluation need.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address); a process started
without them (a plain ``hstu train``) gets the single-process context, for which every collective is the
identity and nothing is initialised. The process group has a timeout (``HSTU_DIST_TIMEOUT`` seconds, default
600) so that a rank that dies or stalls makes the others raise ``RankLost`` instead of waiting for ever.
"""

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

TIMEOUT_ENV = "HSTU_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class RankLost(RuntimeError):
    """A collective failed or timed out: another rank died, stalled or lost its connection."""


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV} must be > 0 seconds, got {text!r}")
    return value


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine. ``owns_group``:
    this context initialised the process group (and so tears it down)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints and logs and draws progress bars."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (the first ``n % world`` ranks get one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def _guard(self, what: str, op):
        if not self.active:
            return None
        try:
            return op()
        except RuntimeError as err:
            if not is_comm_error(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RankLost(lost_message(self, what, first)) from None

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place; the identity in a single process)."""
        self._guard("summing across ranks", lambda: dist.all_reduce(values, op=dist.ReduceOp.SUM))
        return values

    def barrier(self, what: str = "waiting for the other ranks") -> None:
        self._guard(what, dist.barrier)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


COMM_MARKERS = ("gloo", "nccl", "c10d", "timed out", "connection", "broken pipe")


def is_comm_error(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective: a ``DistError``, or a RuntimeError of the gloo / NCCL transport
    (gloo's send timeouts reach DDP's own collectives as plain RuntimeErrors)."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in COMM_MARKERS)


def lost_message(ctx: "Context", what: str, cause: str) -> str:
    return (f"rank {ctx.rank} of {ctx.world}: lost the other ranks while {what} ({cause[:300]}): a rank died, "
            f"stalled or was cut off; the process group waits at most {timeout_seconds():g} s (${TIMEOUT_ENV})")


def from_env() -> Context:
    """The context torchrun's environment describes, without starting anything (single process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return Context()
    return Context(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device):
    """``(context, device)``: the environment's context with its process group up (NCCL for a CUDA device,
    gloo otherwise) and this rank's device (``rank_device``).

    A group already initialised (by the caller) is used as it is and left to the caller to destroy.
    """
    if dist.is_initialized():
        ctx = Context(rank=dist.get_rank(), world=dist.get_world_size(),
                      local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        return ctx, rank_device(device, ctx)
    ctx = from_env()
    if not ctx.active:
        return ctx, device
    device = rank_device(device, ctx)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world,
                            timeout=datetime.timedelta(seconds=timeout_seconds()),
                            **({"device_id": device} if device.type == "cuda" else {}))
    ctx.owns_group = True
    return ctx, device


def rank_device(device: torch.device, ctx: Context) -> torch.device:
    """Under torchrun each rank trains on its own GPU: ``cuda`` (any index) becomes ``cuda:LOCAL_RANK``."""
    if ctx.active and device.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
        return dev
    return device


def shard_rows(ctx: Context, batch_users: int) -> np.ndarray:
    """``[2 * b]`` rows of this rank's segments among a global training batch's ``2 * batch_users`` segments
    (retrieval segments of all users, then their rating segments), for ``b`` users in this rank's shard."""
    part = ctx.shard(batch_users)
    local = np.arange(part.start, part.stop)
    return np.concatenate([local, batch_users + local])
