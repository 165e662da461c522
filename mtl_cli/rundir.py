"""The run directory: one `RunDir` value names every file a run writes; claiming and reading runs.

    <run>/config.yaml            resolved config (written first; claims the directory)
    <run>/overrides.yaml         the command-line overrides
    <run>/train.log              the log
    <run>/data_check.json        the cheap data check at start-up
    <run>/parameters.json        shared / per-task / trainable parameter counts
    <run>/metrics.jsonl          one record per (eval step, task)
    <run>/train_metrics.jsonl    one record every trainer.log_every steps: losses, lr, gradient norm, throughput
    <run>/tensorboard/           TensorBoard event files (trainer.loggers has tensorboard)
    <run>/affinity.jsonl, .png   task-affinity measurements and their heatmaps
    <run>/metrics.md, .csv       the final per-task table
    <run>/results.json           {task: {metric: value}} on the test split, best checkpoint
    <run>/timing.json            training and evaluation throughput of the process
    <run>/curves.png             validation curves
    <run>/checkpoints/<name>/    see mtl_cli/checkpoints.py for what a checkpoint holds
    <run>/eval/<checkpoint>_<split>.{md,csv,json}   mtl eval, never overwritten
    <run>/debug/step-<n>/        the batch and weights of a non-finite loss

Every file is written whole or not at all through mtl_cli/writers.py, and every file read from
a run directory (which may come from someone else) goes through mtl_cli/readers.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line
from mtl_cli.locks import RunLock, try_lock
from mtl_cli.readers import read_yaml_text
from mtl_cli.writers import WriteError, unique_path, write_fault, writing


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
    train_metrics = property(lambda self: self.path / "train_metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
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
        if self.eval_dir.is_symlink():  # a run directory from someone else: its tables stay inside it
            raise MtlError(f"{self.eval_dir} is a symbolic link; mtl writes evaluations inside the run: remove it")
        return unique_path(self.eval_dir / f"{checkpoint}_{split}.md")

    def is_run(self) -> bool:
        return self.config.is_file()


def new_run_dir(runs_root: str, label: str) -> Path:
    now = datetime.now()
    return Path(runs_root) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{label}"


# What marks a folder as an mtl run (or one of its checkpoints) besides its config.yaml: a plain
# project folder with a config.yaml of its own is not a run.
RUN_MARKS = ("overrides.yaml", "train.log", "checkpoints", "manifest.json", "model.safetensors", "trainer_state.json")


def looks_like_run(folder: Path) -> bool:
    try:
        return (folder / "config.yaml").is_file() and any((folder / name).exists() for name in RUN_MARKS)
    except OSError:  # a name too long, a loop: not a run this could be inside
        return False


def enclosing_run(path: Path) -> Path | None:
    """The existing run (or checkpoint) folder that `path` lies inside, if any (not `path` itself)."""
    for folder in Path(os.path.abspath(path)).parents:
        if looks_like_run(folder):
            return folder
    return None


def check_run_dir_path(path: Path) -> None:
    """A new run's folder: a name the filesystem can hold, and not inside another run."""
    existing = Path(os.path.abspath(path))
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
    for part in Path(os.path.abspath(path)).parts:
        size = len(os.fsencode(part))
        if size > name_max - 4:  # room for the `_2`, `_3`... of runs started in the same second
            raise MtlError(
                f"the run directory name {part[:40]}... is {size} bytes, over this filesystem's limit of {name_max}; "
                "set a shorter hydra.run.dir"
            )
    if len(os.fsencode(os.path.abspath(path))) > path_max - 8:
        raise MtlError(f"the run directory path {str(path)[:60]}... is longer than this filesystem's limit of "
                       f"{path_max} bytes; set a shorter hydra.run.dir or runs_root")  # fmt: skip
    inside = enclosing_run(path)
    if inside is not None:
        raise MtlError(
            f"the run directory {path} would be inside the existing run {inside}; a new run needs a folder of its "
            "own: point hydra.run.dir (or runs_root) outside it"
        )


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


@dataclass
class Claim:
    """A run directory this process claimed (config.yaml written exclusively) and holds the lock on.

    `discard()` removes what this process put there (a failure before the first step), never an
    earlier run's files: only the names that were not in the folder before the claim, then the
    folders the claim created, when empty.
    """

    run: RunDir
    lock: RunLock
    before: frozenset[str]
    created: tuple[Path, ...]  # deepest first

    def release(self) -> None:
        self.lock.release()

    def discard(self) -> None:
        import shutil

        path = self.run.path
        for entry in sorted(set(os.listdir(path)) - self.before) if path.is_dir() else []:
            target = path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another run started beside it) or gone: leave it and its parents


def claim(base: Path, config_yaml: str) -> Claim:
    """Create `config.yaml` exclusively and lock the folder, so two runs never share (or overwrite) a directory.

    Runs started in the same second get `_2`, `_3`, ... appended. Refused before any folder is
    made: a directory inside an existing run, a name longer than the filesystem allows.
    """
    check_run_dir_path(base)
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        missing = [p for p in [candidate, *candidate.parents] if not p.exists()]
        with writing(candidate, what="create the run folder"):
            candidate.mkdir(parents=True, exist_ok=True)
        lock = try_lock(candidate)
        if lock is None:  # another process trains or evaluates in it
            continue
        before = frozenset(os.listdir(candidate))
        try:
            with open(candidate / "config.yaml", "x", encoding="utf-8") as f:
                f.write(config_yaml)
        except FileExistsError:
            lock.release()
            continue
        except BaseException as err:
            Claim(RunDir(candidate), lock, before, tuple(missing)).discard()
            lock.release()
            fault = write_fault(err, candidate / "config.yaml")
            if fault is None:
                raise
            raise WriteError(candidate / "config.yaml", *fault) from None
        return Claim(RunDir(candidate), lock, before, tuple(missing))
    raise MtlError(f"could not find a free run directory next to {base}; clean up {base.parent}")


def claim_run_dir(base: Path, config_yaml: str) -> RunDir:
    """`claim` without keeping the lock: the directory is this caller's by its config.yaml."""
    claimed = claim(base, config_yaml)
    claimed.release()
    return claimed.run


def find_latest_run(runs_root: str) -> RunDir:
    runs = [p.parent for p in Path(runs_root).glob("**/config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        raise MtlError(f"no run with checkpoints under {Path(runs_root).resolve()}; train one first (mtl train)")
    return RunDir(max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime))


# `_target_` names a callable for hydra.utils.instantiate. mtl never instantiates anything from
# a run directory's config; a config naming a target outside mtl_cli and this list is refused.
ALLOWED_TARGETS: frozenset[str] = frozenset()


# The interpolations a config composed by mtl may hold (an unresolved one: mtl writes run configs
# resolved): mtl's data folder and mtl's own environment variables, each with literal arguments.
# Anything else could read any environment variable, or grow exponentially when resolved
# (`b1: ${b0}${b0}`, `b2: ${b1}${b1}`, ...).
SAFE_INTERPOLATION = re.compile(r"\$\{(?:mtl_data:[^${}]*|oc\.env:MTL_[A-Z_]+(?:,[^${}]*)?)\}")


def _interpolation(node: Any, where: str = "") -> tuple[str, str] | None:
    """The first (key, interpolation) that is not SAFE_INTERPOLATION, or None."""
    if isinstance(node, dict):
        items = ((f"{where}{key}.", value) for key, value in node.items())
    elif isinstance(node, list):
        items = ((f"{where}{i}.", value) for i, value in enumerate(node))
    elif isinstance(node, str) and "${" in SAFE_INTERPOLATION.sub("", node):
        rest = SAFE_INTERPOLATION.sub("", node)
        return where[:-1] or "(the document)", rest[rest.index("${") :][:40]
    else:
        return None
    for key, value in items:
        found = _interpolation(value, key)
        if found:
            return found
    return None


def load_run_config(folder: Path, trust_remote_code: bool = False) -> Any:
    """The typed config of a run directory (or of a checkpoint: each holds a copy), checked before
    anything is built from it."""
    from omegaconf import OmegaConf

    from mtl_cli.validation import to_typed

    folder = Path(folder)
    path = folder / "config.yaml"
    if not folder.is_dir():
        raise MtlError(f"run directory not found: {folder}")
    if not os.path.lexists(path):  # anything else there (a FIFO, a folder) is named by the reader
        raise MtlError(f"{folder} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    text = read_yaml_text(path)  # bounded, and refused before OmegaConf would expand an alias bomb
    try:
        raw = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except Exception as err:
        raise MtlError(
            f"{path} is unreadable ({first_line(err)}); the run directory is damaged or half-written"
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise MtlError(f"{path} is empty or not a mapping; the run directory is damaged or half-written")
    found = _interpolation(raw)
    if found is not None:
        raise MtlError(
            f"{path} holds the interpolation `{found[1]}` at {found[0]}; mtl writes run configs resolved. "
            "Refusing: use a run directory written by mtl train"
        )
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


def remove_empty_dirs(path: Path, levels: int) -> None:
    """Nothing of a failed run was written: leave no empty run (and date) folder behind."""
    for folder in [path, *path.parents][: levels + 1]:
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
