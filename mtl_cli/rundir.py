"""The run directory: claiming it, checkpoints, metrics files and tables.

<run>/config.yaml            resolved config (written first; claims the directory)
<run>/overrides.yaml         the command-line overrides
<run>/train.log              the log
<run>/metrics.jsonl          one record per (eval step, task)
<run>/metrics.md, .csv       the final per-task table
<run>/results.json           {task: {metric: value}} on the test split, best checkpoint
<run>/timing.json            training and evaluation throughput of the process
<run>/checkpoints/{last,best,best-<task>,step-<n>}/
    model.safetensors  encoder/  tokenizer/  labels.json  trainer_state.json  manifest.json
    [optimizer.pt: last and step-<n>, the full training state a resume needs]
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line

CHECKPOINT_FILES = ("model.safetensors", "labels.json", "trainer_state.json")


def new_run_dir(runs_root: str, label: str) -> Path:
    now = datetime.now()
    return Path(runs_root) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{label}"


def claim_run_dir(base: Path, config_yaml: str) -> Path:
    """Create `config.yaml` exclusively, so two runs never share (or overwrite) a directory.

    Runs started in the same second get `_2`, `_3`, ... appended.
    """
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            with open(candidate / "config.yaml", "x", encoding="utf-8") as f:
                f.write(config_yaml)
            return candidate
        except FileExistsError:
            continue
    raise MtlError(f"could not find a free run directory next to {base}; clean up {base.parent}")


# `_target_` names a callable for hydra.utils.instantiate. mtl never instantiates anything from
# a run directory's config; a config naming a target outside mtl_cli and this list is refused.
ALLOWED_TARGETS: frozenset[str] = frozenset()


def load_run_config(run_dir: Path, trust_remote_code: bool = False) -> Any:
    """The typed config a run directory was trained with, checked before anything is built from it."""
    from omegaconf import OmegaConf

    from mtl_cli.config import to_typed

    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise MtlError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise MtlError(f"{run_dir} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
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


def config_digest(run_dir: Path) -> str:
    """Identifies the run a checkpoint was written by (its config.yaml, written once when the run starts)."""
    return hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()[:16]


def read_checkpoint_state(ckpt: Path) -> tuple[dict, dict]:
    """(labels.json, trainer_state.json) of a checkpoint."""
    try:
        labels = json.loads((ckpt / "labels.json").read_text(encoding="utf-8"))
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MtlError(f"{ckpt} is damaged: {first_line(err)}") from None
    return labels, state


def check_checkpoint_origin(run_dir: Path, ckpt: Path, cfg: Any) -> tuple[dict, dict]:
    """A checkpoint copied in from another run (other tasks, another encoder, another config) is refused.

    Returns (labels, trainer state).
    """
    from dataclasses import asdict

    labels, state = read_checkpoint_state(ckpt)
    where = f"{ckpt} comes from another run"
    fix = "use the checkpoints of this run, or evaluate the run it came from"
    if set(labels) != set(cfg.task):
        raise MtlError(f"{where}: it holds tasks {sorted(labels)}, this run trains {sorted(cfg.task)}; {fix}")
    encoder = {k: v for k, v in asdict(cfg.encoder).items() if k != "trust_remote_code"}  # a permission, not a model
    theirs = state.get("encoder", encoder)
    key = next((k for k in encoder if theirs.get(k) != encoder[k]), None)
    if key is not None:
        raise MtlError(f"{where}: its encoder has {key}={theirs.get(key)!r}, this run's has {encoder[key]!r}; {fix}")
    if state.get("config_sha256", config_digest(run_dir)) != config_digest(run_dir):
        raise MtlError(f"{where}: it was written under a different config.yaml; {fix}")
    return labels, state


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the records of steps after `last_step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def checkpoint_state(model: Any) -> dict:
    """What a checkpoint holds: every tensor of the model except frozen parameters (a frozen
    adapter base is reloaded from its reference, not copied into every checkpoint), each tied
    tensor once (an MLM decoder tied to the input embeddings)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name in frozen or (tensor.numel() and tensor.data_ptr() in seen):
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous()
    return out


def save_checkpoint(
    ckpt: Path,
    model: Any,
    tokenizer: Any,
    labels: dict,
    state: dict,
    optimizer_state: Any,
    base: dict | None = None,
    keep: int = 1,
) -> None:
    """Write to a temporary folder (every file fsynced, a manifest of sizes and SHA-256 last), then
    rename it into place: a kill or a full disk never leaves `ckpt` half-written.

    `keep` > 1 keeps the previous versions as `step-<n>` beside it (the newest `keep - 1`).
    `base` (written as base_encoder.json) describes the frozen encoder the weights sit on, when
    the checkpoint leaves it out.
    """
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(checkpoint_state(model), str(tmp / "model.safetensors"))
        if base is not None:
            write_json(tmp / "base_encoder.json", base)
        model.encoder.config.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "trainer_state.json", state)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        write_manifest(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MtlError(
            f"could not save checkpoint {ckpt} ({first_line(err)}); the previous checkpoint is intact: "
            f"free disk space, then continue with: mtl train resume={ckpt.parent.parent}"
        ) from None
    if ckpt.exists():
        previous = checkpoint_step(ckpt) if keep > 1 else None
        old = ckpt.with_name(f"step-{previous:06d}" if previous is not None else f".{ckpt.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    _fsync_dir(ckpt.parent)
    shutil.rmtree(ckpt.with_name(f".{ckpt.name}.old"), ignore_errors=True)
    if keep > 1:
        for stale in step_checkpoints(ckpt.parent)[: -(keep - 1)]:
            shutil.rmtree(stale, ignore_errors=True)


MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Fsync every file, then record its size and SHA-256 in manifest.json (written last, fsynced)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    for sub in {folder, *(p for p in folder.rglob("*") if p.is_dir())}:
        _fsync_dir(sub)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be used (missing files, truncated or altered against its manifest), or None."""
    if not ckpt.is_dir():
        return "it does not exist"
    missing = [f for f in CHECKPOINT_FILES if not (ckpt / f).is_file()]
    if missing:
        return f"it is missing {', '.join(missing)}"
    if not (ckpt / MANIFEST).is_file():
        return None  # written before checkpoints had manifests; the files load-check themselves
    try:
        files = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as err:
        return f"its {MANIFEST} is unreadable ({first_line(err)})"
    for name, expected in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} is {size} bytes, its manifest says {expected['bytes']} (truncated or overwritten)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in {MANIFEST} (corrupted or edited)"
    return None


def checkpoint_step(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def step_checkpoints(folder: Path) -> list[Path]:
    """The `step-<n>` checkpoints in `folder`, oldest first."""
    found = [p for p in folder.glob("step-*") if p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def checkpoint_candidates(run_dir: Path, which: str) -> list[Path]:
    """Where `which` may be, newest first: a kill between the two renames of a save leaves the
    previous version as `.<name>.old`; `last` falls back to the older `step-<n>` it keeps."""
    folder = run_dir / "checkpoints"
    if which.startswith("step-"):
        return [folder / which]
    out = [folder / which, folder / f".{which}.old"]
    if which == "last":
        out += step_checkpoints(folder)[::-1]
    return out


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """The newest intact checkpoint called `which` (best, last, best-<task>, step-<n>).

    A damaged one is reported on stderr and passed over for the previous good one when there is one.
    """
    if not (run_dir / "config.yaml").is_file():
        raise MtlError(f"{run_dir} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    first = None
    for ckpt in checkpoint_candidates(run_dir, which):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if first is not None and first[1] != "it does not exist":
                print(f"mtl: warning: checkpoints/{which} is unusable ({first[1]}); using {ckpt.name}", file=sys.stderr)
            return ckpt
        first = first or (ckpt, problem)
    if first[1] == "it does not exist":
        raise MtlError(
            f"{run_dir} has no '{which}' checkpoint; the run may have stopped before its first evaluation: "
            f"continue it with mtl train resume={run_dir}, or train again"
        )
    raise MtlError(f"{first[0]} is damaged: {first[1]}; no earlier intact '{which}' checkpoint to fall back to")


def load_weights(model: Any, ckpt: Path) -> None:
    from safetensors.torch import load_file

    try:
        weights = load_file(str(ckpt / "model.safetensors"))
    except Exception as err:
        raise MtlError(f"cannot read {ckpt / 'model.safetensors'} ({first_line(err)}); it may be truncated") from None
    expected = checkpoint_state(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise MtlError(f"{ckpt} does not match the model its run config builds (e.g. {(missing or unexpected)[0]})")
    bad = next((k for k, v in weights.items() if v.shape != expected[k].shape), None)
    if bad:
        raise MtlError(
            f"{ckpt}: weight {bad} has shape {tuple(weights[bad].shape)}, the model expects {tuple(expected[bad].shape)}"
        )
    model.load_state_dict(weights, strict=False)


# --- tables -------------------------------------------------------------------------------


def table_rows(results: dict[str, dict[str, dict[str, float]]], extra: dict[str, dict[str, Any]]) -> list[dict]:
    """One row per task (then `average`): `<split>_<metric>` for every metric any task has, plus extras.

    Tasks of different types have different metrics; a cell a task has no value for stays empty.
    """
    first = next(iter(results.values()))
    tasks = [t for t in first if t != "average"] + ["average"]
    # `main` (the average of each task's main metric, what picks checkpoints/best) exists on the average row only.
    metrics = list(dict.fromkeys(m for r in first.values() for m in r if m != "loss"))
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task, **extra.get(task, {})}
        for split, per_task in results.items():
            for metric in metrics:
                row[f"{split}_{metric}"] = per_task[task].get(metric)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def rows_to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


_SHORT = {
    "validation": "val",
    "accuracy": "acc",
    "macro_f1": "F1",
    "micro_f1": "microF1",
    "perplexity": "ppl",
    "mlm_loss": "mlm loss",
    "train_examples": "train",
    "examples_seen": "seen",
}


def _short(col: str) -> str:
    return " ".join(
        _SHORT.get(part, part)
        for part in re.split(r"_(?=accuracy|macro_f1|micro_f1|perplexity|mlm_loss)", col, maxsplit=1)
    )


def print_table(rows: list[dict], title: str) -> None:
    """Rich table: one row per task when tasks share a few metrics, else one row per (task, metric)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = list(rows[0])
    splits = list(dict.fromkeys(c.split("_", 1)[0] for c in cols if "_" in c and c.split("_", 1)[0] in SPLIT_NAMES))
    metric_cols = [c for c in cols if c.split("_", 1)[0] in splits]
    if len([c for c in metric_cols if not c.endswith("_main")]) <= 6:
        cols = [c for c in cols if not c.endswith("_main")]  # equals accuracy when all tasks classify
        for col in cols:
            table.add_column(_short(col), justify="left" if col == "task" else "right")
        for row in rows:
            table.add_row(*[_fmt(row.get(c)) for c in cols], style="bold" if row["task"] == "average" else None)
    else:  # mixed task types: a long table stays readable where a wide one would not
        info = [c for c in cols if c not in metric_cols]
        metrics = list(dict.fromkeys(c.split("_", 1)[1] for c in metric_cols))
        for col in [*info, "metric", *splits]:
            table.add_column(_short(col), justify="left" if col in ("task", "metric") else "right")
        for row in rows:
            first = True
            for m in metrics:
                values = [row.get(f"{s}_{m}") for s in splits]
                if all(v is None for v in values):
                    continue
                lead = [_fmt(row.get(c)) if first else "" for c in info]
                table.add_row(*lead, m, *map(_fmt, values), style="bold" if row["task"] == "average" else None)
                first = False
            table.add_section()
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)


SPLIT_NAMES = ("validation", "test")


def unique_path(path: Path) -> Path:
    """`path`, or `path` with `_2`, `_3`... before the suffix if it exists: earlier files stay."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate
