"""Data-parallel training on torch.distributed (DDP): one process per device, each its own shard.

The processes come from an existing launcher, never from mtl's own: `torchrun`, `accelerate
launch`, a SLURM/submitit job, or `trainer.devices=N`, which hands the command to torch's elastic
launcher (torchrun's engine, see `launch`). Inside a training run, `WORLD` says which process
this is. What each rank does:

- rank 0 decides the run directory and broadcasts it; only rank 0 writes files
  (mtl_cli/writers.py and the checkpoint writer ask `writes()`);
- every rank plans the same global batch (batch_size x accumulation x world size, the same
  mixing schedule: all ranks train the same task at a step) and takes its own slice of it;
- a step's losses and the stop flag are all-reduced, so every rank takes the same decisions;
- evaluation is sharded by batch and gathered, so every rank sees a 1-process evaluation's metrics.

gloo on CPUs, nccl on CUDA devices. A collective waits at most `trainer.distributed_timeout`
seconds for the others; a rank that died closes its sockets and the others fail at once.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from mtl_cli.errors import MtlError, first_line

T = TypeVar("T")

# The variables every launcher (torchrun, accelerate, torch's elastic agent) sets for a worker.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankZeroError(MtlError):
    """Rank 0's error, received by another rank: rank 0 tells the user."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        return self.rank == 0


WORLD = World()  # this process's place; set by `start` for the length of a training run


def writes() -> bool:
    """Whether this process writes files: rank 0, or a process that is not part of a distributed run."""
    return WORLD.writes


def launched_world() -> World:
    """The world a launcher started this process in (World() without one)."""
    try:
        size = int(os.environ.get("WORLD_SIZE") or 1)
        if size <= 1:
            return World()
        missing = [k for k in LAUNCHER_ENV if not os.environ.get(k)]
        if missing:
            raise MtlError(
                f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: start the processes with "
                "torchrun (or accelerate launch, or trainer.devices=N), which sets them all"
            )
        env = os.environ
        return World(int(env["RANK"]), size, int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", size)))
    except ValueError:
        shown = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        raise MtlError(
            f"the launcher's variables are not whole numbers ({shown}); unset them, or start with torchrun"
        ) from None


def check_devices(devices: int | None, world: World) -> None:
    if devices is not None and world.distributed and devices != world.size:
        raise MtlError(
            f"trainer.devices={devices}, but the launcher started {world.size} processes; drop trainer.devices "
            f"(the launcher decides), or set it to {world.size}"
        )


@contextmanager
def session(devices: int | None, device_kind: str, timeout_s: int) -> Iterator[World]:
    """The process group of a training run, when a launcher started this process; WORLD meanwhile."""
    global WORLD
    world = launched_world()
    check_devices(devices, world)
    if not world.distributed:
        yield world
        return
    import torch.distributed as dist

    if device_kind == "cuda":
        import torch

        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except Exception as err:
        raise MtlError(
            f"rank {world.rank}: could not join the other {world.size - 1} process(es) "
            f"({first_line(err)}); start them all with the same torchrun command"
        ) from None
    WORLD = world
    try:
        yield world
    finally:
        WORLD = World()
        try:
            dist.destroy_process_group()
        except Exception:  # the group broke with a failed peer: nothing left to tear down
            pass


def peer_failure(err: BaseException) -> bool:
    """A collective that broke because another rank died, stopped or timed out (gloo, nccl)."""
    text = str(err).lower()
    return WORLD.distributed and (
        "torch.distributed" in type(err).__module__ or "gloo" in text or "nccl" in text or "timed out" in text
    )


def describe_failure(err: BaseException) -> str:
    """A broken collective's message without the backend's source location and advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err)).split(". This is typically")[0]
    return text[:160]


def device_kind(device: str) -> str:
    """'cuda' or 'cpu' for `trainer.device`, as setup_torch will decide it (before it runs)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def share(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0, its value (or its MtlError) on every rank: one decision, one message."""
    if not WORLD.distributed:
        return compute()
    import torch.distributed as dist

    box: list[Any] = [None]
    if WORLD.rank == 0:
        try:
            box[0] = ("ok", compute())
        except MtlError as err:
            box[0] = ("error", str(err), err.exit_code)
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise RankZeroError(box[0][1], box[0][2])
    return box[0][1]


def all_sum(values: list[float], device: Any) -> list[float]:
    """The sum over ranks of each value (one all-reduce)."""
    if not WORLD.distributed or not values:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: int, device: Any) -> int:
    if not WORLD.distributed:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not WORLD.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * WORLD.size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[Any]) -> None:
    """Average the .grad of parameters DDP does not hold (uncertainty weighting's log-variances)."""
    if not WORLD.distributed:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= WORLD.size


def broadcast_weights(model: Any) -> None:
    """Every rank gets rank 0's weights (after rank 0 loaded a checkpoint): no rank reads run files."""
    if not WORLD.distributed:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier() -> None:
    if WORLD.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: Any, device: Any) -> Any:
    """The DDP module the training steps call (the plain model without a process group).

    Each step trains one task, so the other tasks' heads get no gradient: find_unused_parameters
    lets the reducer skip them (all ranks train the same task, so they skip the same ones).
    """
    if not WORLD.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def launch(nproc: int, argv: list[str]) -> tuple[int, int]:
    """Run `python -m mtl_cli <argv>` as `nproc` ranks on this machine through torch's elastic launcher
    (what `torchrun --standalone --nproc_per_node N` does); (exit code, rank) of the first rank that
    failed (a signal as 128 + its number), (0, 0) when all succeeded."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # each rank says why it stopped, in one line
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )  # fmt: skip
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "mtl_cli", *argv)
    except ChildFailedError as err:
        rank, first = err.get_first_failure()
        return (first.exitcode if first.exitcode > 0 else 128 - first.exitcode), rank  # -15: ended by SIGTERM
    except SignalException as err:  # Ctrl-C or SIGTERM to this process: the ranks got it too, and said so
        return 128 + int(err.sigval), -1
    return 0, 0
