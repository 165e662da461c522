"""A trained run, located and rebuilt for use: what `mtl eval`, `mtl predict` and `mtl export` share.

    locate(path, checkpoint)  -> Located: the run's config, the checkpoint folder, its labels and state
    load_trained(run, ...)    -> Trained: the same plus the rebuilt model (eval mode) and tokenizer

RUN may be a run directory, `latest`, or a checkpoint folder copied out of its run (each holds the
run's config.yaml). Nothing here writes to the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_cli.checkpoints import (
    check_checkpoint_origin,
    checkpoint_name,
    checkpoint_problem,
    find_checkpoint,
    is_checkpoint,
    rebuild_model,
)
from mtl_cli.errors import MtlError
from mtl_cli.readers import UnusableFile, read_json
from mtl_cli.rundir import RunDir, find_latest_run, load_run_config


@dataclass
class Located:
    run: RunDir  # the run directory, or the checkpoint folder when it stands alone
    out: RunDir  # where an evaluation's tables go: the run, or the standalone checkpoint
    ckpt: Path
    name: str  # the checkpoint's name (best, step-000020, ...; the folder's name when standalone)
    cfg: Any  # the run's MtlConfig
    labels: dict[str, list[str] | None]
    state: dict  # the checkpoint's trainer_state.json


@dataclass
class Trained(Located):
    model: Any  # MultiTaskModel, in eval mode, on `device`
    tokenizer: Any
    device: Any
    bf16: bool  # the run trained under bf16 autocast (and this device has it)


def run_path(run: str, runs_root: str = "runs") -> Path:
    """`latest` -> the newest run under runs_root; anything else as given."""
    return find_latest_run(runs_root).path if run == "latest" else Path(run)


def locate(path: Path, checkpoint: str = "best", trust_remote_code: bool = False) -> Located:
    """The run's config and checkpoint, checked (manifest, origin, labels); no model is built yet."""
    checkpoint = checkpoint_name(checkpoint)
    run_dir = RunDir(path)
    if is_checkpoint(path) and run_dir.is_run():  # a checkpoint on its own, with its config.yaml
        problem = checkpoint_problem(path)
        if problem is not None:
            raise MtlError(f"{path} is damaged: {problem}")
        ckpt, out, name = path, RunDir(path), path.name
    else:
        ckpt, out, name = None, run_dir, checkpoint
    cfg = load_run_config(path, trust_remote_code)
    ckpt = ckpt or find_checkpoint(run_dir, checkpoint)
    labels, state = check_checkpoint_origin(run_dir.config, ckpt, cfg)
    return Located(run_dir, out, ckpt, name, cfg, labels, state)


def check_tasks(cfg: Any, tasks: list[str] | None, key: str = "tasks") -> None:
    unknown = [t for t in tasks or [] if t not in cfg.task]
    if unknown:
        raise MtlError(f"this run never trained task(s) {unknown}; its tasks are {list(cfg.task)} ({key}=...)")


def load_trained(
    run: str,
    checkpoint: str = "best",
    runs_root: str = "runs",
    trust_remote_code: bool = False,
    device: str | None = None,
) -> Trained:
    """Locate a run's checkpoint and rebuild its model for inference (eval mode, no gradients)."""
    from mtl_cli.device import setup_torch, use_bf16

    found = locate(run_path(run, runs_root), checkpoint, trust_remote_code)
    torch_device = setup_torch(device or found.cfg.trainer.device, found.cfg.trainer.threads)
    model, tokenizer = rebuild_model(found.ckpt, found.cfg, found.labels)
    model.to(torch_device).eval()
    bf16 = use_bf16(found.cfg.trainer.precision, torch_device)
    return Trained(**vars(found), model=model, tokenizer=tokenizer, device=torch_device, bf16=bf16)


def test_results(located: Located) -> dict | None:
    """The run's results.json (test metrics of checkpoints/best), or None when the run has none (unfinished,
    a standalone checkpoint) or it is not a JSON object."""
    path = located.run.results
    if not path.is_file():
        return None
    try:
        results = read_json(path)
    except UnusableFile:
        return None
    return results if isinstance(results, dict) else None
