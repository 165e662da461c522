"""The run directory: claiming it, checkpoints, metrics files and tables.

<run>/config.yaml            resolved config (written first; claims the directory)
<run>/overrides.yaml         the command-line overrides
<run>/train.log              the log
<run>/metrics.jsonl          one record per (eval step, task)
<run>/metrics.md, .csv       the final per-task table
<run>/results.json           {task: {metric: value}} on the test split, best checkpoint
<run>/checkpoints/{last,best}/
    model.safetensors  encoder/  tokenizer/  labels.json  trainer_state.json  [optimizer.pt: last only]
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
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
    ckpt: Path, model: Any, tokenizer: Any, labels: dict, state: dict, optimizer_state: Any, base: dict | None = None
) -> None:
    """Write to a temporary folder, then swap it in: a crash never leaves a half-written checkpoint.

    `base` (written as base_encoder.json) describes the frozen encoder the weights sit on, when
    the checkpoint leaves it out.
    """
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
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
    old = ckpt.with_name(f".{ckpt.name}.old")
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path, which: str) -> Path:
    if not (run_dir / "config.yaml").is_file():
        raise MtlError(f"{run_dir} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    ckpt = run_dir / "checkpoints" / which
    missing = [f for f in CHECKPOINT_FILES if not (ckpt / f).is_file()]
    if missing:
        raise MtlError(
            f"{run_dir} has no complete '{which}' checkpoint (missing {', '.join(missing)}); "
            "the run may have stopped before its first evaluation: train again, or pass checkpoint=last"
        )
    return ckpt


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
