"""Multi-process training with torchrun (DDP): process group, samplers, reductions, rank-0 writes.

``torchrun --nproc_per_node N run.py ...`` starts N copies of ``run.py``; each reads RANK,
WORLD_SIZE and LOCAL_RANK from its environment (torchvision's references do the same). Without
those variables (or with WORLD_SIZE=1) every function here is a no-op and training is the plain
single-process loop.

How the pieces fit:
- ``init_distributed`` joins the process group: NCCL when training on CUDA (one GPU per process,
  ``cuda:LOCAL_RANK``), gloo on the CPU.
- ``dataset.batch_size`` is per process: the global batch is N x batch_size.
- Training loaders get a ``DistributedSampler`` (shuffle + drop the tail, so every rank runs the
  same number of batches; ``set_epoch`` each epoch) or, around a custom sampler such as the
  class-balanced one, a ``DistributedSamplerWrapper``. Evaluation loaders get a ``ShardSampler``
  (every sample exactly once over all ranks, no padding) and the confusion matrix is summed.
- The class-distribution statistics are summed across ranks (``all_reduce_sum``, passed to the
  trainer as ``reduce``), so every rank computes the same LD.
- Only rank 0 writes: Hydra's ``.hydra/`` and log, checkpoints, metrics.csv, summary.json, the W&B
  run. ``hydra_argv_for_rank`` keeps the other ranks' Hydra from writing files; the composition
  root makes them use rank 0's output dir.

Torch is imported lazily so that ``run.py --help`` stays fast.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1


def env_world(environ: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment (RANK, LOCAL_RANK, WORLD_SIZE)."""
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(env.get("RANK", "0"))
    return World(rank=rank, local_rank=int(env.get("LOCAL_RANK", str(rank))), size=size)


def current_world() -> World:
    """The initialised process group's world; rank 0 of 1 when there is none."""
    from adadf.data.samplers import process_group

    rank, size = process_group()
    return World(rank=rank, local_rank=env_world().local_rank, size=size) if size > 1 else World()


# --------------------------------------------------------------------------------------------
# Before Hydra: keep non-zero ranks from writing files
# --------------------------------------------------------------------------------------------
def hydra_argv_for_rank(argv: Sequence[str], environ: dict[str, str] | None = None) -> list[str]:
    """Command-line overrides for this rank's Hydra.

    Every torchrun worker runs Hydra; ranks other than 0 get ``hydra.output_subdir=null`` (no
    ``.hydra/``) and a console-only, warnings-only log (no ``run.log``), so rank 0 alone writes the
    run dir. Rank 0 and single-process runs are unchanged.
    """
    argv = list(argv)
    world = env_world(environ)
    if not world.enabled:
        return argv
    if any(a in ("-m", "--multirun") or a.startswith("--multirun") for a in argv[1:]):
        raise SystemExit("-m/--multirun cannot be combined with torchrun: launch one torchrun per job")
    if world.rank == 0:
        return argv
    extra = ["hydra.output_subdir=null"]
    if not any(a.startswith(("hydra/job_logging=", "~hydra/job_logging")) for a in argv[1:]):
        extra += ["hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING"]
    return argv + extra


# --------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------
def init_distributed(device: "torch.device") -> tuple[World, "torch.device"]:
    """Join torchrun's process group (if any); returns the world and this rank's device.

    On CUDA each process takes ``cuda:LOCAL_RANK`` and the NCCL backend; on the CPU, gloo.
    """
    import torch
    import torch.distributed as dist

    world = env_world()
    if not world.enabled:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
        atexit.register(shutdown)
        log.info("rank %d/%d joined the %s process group on %s", world.rank, world.size, backend, device)
    return world, device


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def remove_empty_dir(path: "os.PathLike[str] | str", keep: "os.PathLike[str] | str") -> None:
    """Remove ``path`` if it is an empty directory other than ``keep`` (a non-zero rank's own
    Hydra output dir, created a second later than rank 0's, holds nothing)."""
    path = os.path.abspath(path)
    if path != os.path.abspath(keep) and os.path.isdir(path) and not os.listdir(path):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def barrier() -> None:
    import torch.distributed as dist

    if current_world().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. building a dataset cache), then the others (reading it)."""
    world = current_world()
    if world.enabled and not world.is_main:
        barrier()
    try:
        yield
    finally:
        if world.enabled and world.is_main:
            barrier()


def all_reduce_sum(tensor: "torch.Tensor") -> "torch.Tensor":
    """The element-wise sum of ``tensor`` over all ranks (a new tensor; identity in one process).

    This is the ``reduce`` the trainer and ``AdaDFMethod.update_distributions`` take.
    """
    import torch.distributed as dist

    if not current_world().enabled:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    import torch.distributed as dist

    if not current_world().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: "nn.Module", src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers before each training forward, but each rank's last training batch then
    updates its own copy; call this after the epoch so evaluation and the class-distribution pass
    use the same model everywhere (the one rank 0 checkpoints).
    """
    import torch.distributed as dist

    if not current_world().enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def check_same_across_ranks(tensor: "torch.Tensor", what: str) -> None:
    """Raise if ``tensor`` differs between ranks (a guard for state that must stay in sync)."""
    import torch
    import torch.distributed as dist

    if not current_world().enabled:
        return
    reference = tensor.detach().clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor([0.0 if torch.equal(reference, tensor) else 1.0], device=tensor.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item() > 0:
        raise RuntimeError(f"{what} differs between ranks: the statistics were not reduced")


def wrap_model(model: "nn.Module", device: "torch.device") -> "nn.Module":
    """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged.

    DDP broadcasts rank 0's parameters and buffers here, so every rank starts identical.
    """
    if not current_world().enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_ddp(model: "nn.Module") -> "nn.Module":
    """The module inside DDP (no hooks, no collectives: for no-grad passes of unequal length)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def unwrap(model: "nn.Module") -> "nn.Module":
    """The plain model inside DDP and ``torch.compile``: the one whose state dict checkpoints hold."""
    inner = unwrap_ddp(model)
    return getattr(inner, "_orig_mod", inner)


class AgreedStopFlag:
    """A ``StopFlag`` that all ranks agree on: if any rank got a signal, every rank stops at the
    same batch (a rank that stopped alone would leave the others waiting in a collective).

    Each check is one all-reduce of a single int over a gloo group (CPU only: no GPU sync).
    """

    def __init__(self, flag: Any) -> None:
        import torch.distributed as dist

        self.flag = flag
        self._group = dist.new_group(backend="gloo")

    @property
    def signame(self) -> str | None:
        return self.flag.signame

    def check(self) -> None:
        import torch
        import torch.distributed as dist

        from adadf.engine.interrupt import StopRequested

        stop = torch.tensor([0 if self.flag.signame is None else 1])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX, group=self._group)
        if stop.item():
            raise StopRequested(self.flag.signame or "SIGTERM")

