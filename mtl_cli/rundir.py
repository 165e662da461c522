"""The run directory: one `RunDir` value names every file a run writes; claiming and reading runs.

    <run>/config.yaml            resolved config (written first; claims the directory)
    <run>/overrides.yaml         the command-line overrides
    <run>/train.log              the log
    <run>/data_check.json        the cheap data check at start-up
    <run>/parameters.json        shared / per-task / trainable parameter counts
    <run>/metrics.jsonl          one record per (eval step, task)
    <run>/affinity.jsonl, .png   task-affinity measurements and their heatmaps
    <run>/metrics.md, .csv       the final per-task table
    <run>/results.json           {task: {metric: value}} on the test split, best checkpoint
    <run>/timing.json            training and evaluation throughput of the process
    <run>/curves.png             validation curves
    <run>/checkpoints/<name>/    see mtl_cli/checkpoints.py for what a checkpoint holds
    <run>/eval/<checkpoint>_<split>.{md,csv,json}   mtl eval, never overwritten
    <run>/debug/step-<n>/        the batch and weights of a non-finite loss

Every file is written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml")
    overrides = property(lambda self: self.path / "overrides.yaml")
    log = property(lambda self: self.path / "train.log")
    data_check = property(lambda self: self.path / "data_check.json")
    parameters = property(lambda self: self.path / "parameters.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    affinity = property(lambda self: self.path / "affinity.jsonl")
    affinity_plot = property(lambda self: self.path / "affinity.png")
    table = property(lambda self: self.path / "metrics.md")  # and metrics.csv beside it
    results = property(lambda self: self.path / "results.json")
    timing = property(lambda self: self.path / "timing.json")
    curves = property(lambda self: self.path / "curves.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    eval_dir = property(lambda self: self.path / "eval")

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def debug(self, step: int) -> Path:
        return self.path / "debug" / f"step-{step:06d}"

    def eval_table(self, checkpoint: str, split: str) -> Path:
        """`eval/<checkpoint>_<split>.md`, or `_2`, `_3`... so an earlier evaluation stays."""
        return unique_path(self.eval_dir / f"{checkpoint}_{split}.md")

    def is_run(self) -> bool:
        return self.config.is_file()


def new_run_dir(runs_root: str, label: str) -> Path:
    now = datetime.now()
    return Path(runs_root) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{label}"


def claim_run_dir(base: Path, config_yaml: str) -> RunDir:
    """Create `config.yaml` exclusively, so two runs never share (or overwrite) a directory.

    Runs started in the same second get `_2`, `_3`, ... appended.
    """
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            with open(candidate / "config.yaml", "x", encoding="utf-8") as f:
                f.write(config_yaml)
            return RunDir(candidate)
        except FileExistsError:
            continue
    raise MtlError(f"could not find a free run directory next to {base}; clean up {base.parent}")


def find_latest_run(runs_root: str) -> RunDir:
    runs = [p.parent for p in Path(runs_root).glob("**/config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        raise MtlError(f"no run with checkpoints under {Path(runs_root).resolve()}; train one first (mtl train)")
    return RunDir(max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime))


# `_target_` names a callable for hydra.utils.instantiate. mtl never instantiates anything from
# a run directory's config; a config naming a target outside mtl_cli and this list is refused.
ALLOWED_TARGETS: frozenset[str] = frozenset()


def load_run_config(folder: Path, trust_remote_code: bool = False) -> Any:
    """The typed config of a run directory (or of a checkpoint: each holds a copy), checked before
    anything is built from it."""
    from omegaconf import OmegaConf

    from mtl_cli.validation import to_typed

    folder = Path(folder)
    path = folder / "config.yaml"
    if not folder.is_dir():
        raise MtlError(f"run directory not found: {folder}")
    if not path.is_file():
        raise MtlError(f"{folder} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:
        raise MtlError(
            f"{path} is unreadable ({first_line(err)}); the run directory is damaged or half-written"
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise MtlError(f"{path} is empty or not a mapping; the run directory is damaged or half-written")
    target = next(_targets(raw), None)
    if target is not None and not (target.startswith("mtl_cli.") or target in ALLOWED_TARGETS):
        raise MtlError(
            f"{path} asks to instantiate `_target_: {target}`; mtl runs no code named by a run directory. "
            "Refusing: use a run directory written by mtl train"
        )
    try:
        cfg = to_typed(OmegaConf.create(raw))
    except MtlError as err:
        raise MtlError(f"{path} is not a valid mtl config: {err}") from None
    if cfg.encoder.trust_remote_code and not trust_remote_code:
        raise MtlError(
            f"{path} sets encoder.trust_remote_code=true, which runs code from the model's repository; "
            "if you trust it, pass trust_remote_code=true on this command line"
        )
    cfg.encoder.trust_remote_code = trust_remote_code  # only ever on by this command line's choice
    return cfg


def _targets(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


# --- writing files whole --------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    """Write to a temporary file, then rename it into place: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSONL file (a line cut short by a kill is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the records of steps after `last_step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    write_text(path, "".join(keep))


def unique_path(path: Path) -> Path:
    """`path`, or `path` with `_2`, `_3`... before the suffix if it exists: earlier files stay."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate
