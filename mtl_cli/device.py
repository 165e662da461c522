"""Where and how the model computes: the device, torch threads, and bf16 autocast.

Training and `mtl eval` both take their precision from here, so evaluation runs as training did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError


def setup_torch(device: str, threads: int | None) -> Any:
    """Set torch's thread count and return the torch.device for `trainer.device`."""
    import torch

    # One thread per physical core: hyperthread siblings share the matrix units and only add contention.
    torch.set_num_threads(threads or physical_cores())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


def check_device(device: str) -> Any:
    """`trainer.device` as a torch.device, refused in one line unless it names a device this machine has."""
    import torch

    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise MtlError(f"`trainer.device` must be auto, cpu, cuda[:N] or mps; got {device!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise MtlError(f"trainer.device={device}: this machine has no CUDA device; use trainer.device=auto or cpu")
        if dev.index is not None and dev.index >= count:
            raise MtlError(
                f"trainer.device={device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}); "
                "pick one of them or use trainer.device=auto"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MtlError(f"trainer.device={device}: Apple's MPS is not available here; use trainer.device=auto or cpu")
    return dev


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (Linux topology; else every CPU counts)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def use_bf16(precision: str, device: Any) -> bool:
    """Whether forward passes run under bfloat16 autocast (trainer.precision)."""
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def bf16_supported(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: Any, bf16: bool, fp16: bool = False) -> Any:
    """The one autocast context of training and evaluation (float16 only in training, with a scaler)."""
    import torch

    return torch.autocast(device.type, dtype=torch.float16 if fp16 else torch.bfloat16, enabled=bf16 or fp16)


# float16's range is small: its gradients need a scaler, whose inf/NaN checks the loss weightings
# that read the loss values or hold parameters of their own would see scaled.
FP16_WEIGHTINGS = ("equal", "static")


def check_fp16(precision: str, device: Any, weighting: str) -> None:
    """trainer.precision=fp16: CUDA only (a CPU has bf16 for that), with a linear loss weighting."""
    if precision != "fp16":
        return
    if device.type != "cuda":
        raise MtlError(
            f"trainer.precision=fp16 needs a CUDA GPU (float16 with a gradient scaler); on this {device.type} use "
            "trainer.precision=bf16 (or fp32)"
        )
    if weighting not in FP16_WEIGHTINGS:
        raise MtlError(
            f"trainer.precision=fp16 works with loss_weighting={' or '.join(FP16_WEIGHTINGS)}, not {weighting}; "
            "use trainer.precision=bf16 for it"
        )
