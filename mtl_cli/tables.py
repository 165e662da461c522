"""Per-task tables for people and machines: one row per task, written as Markdown and CSV, printed with rich.

Every table of a run (the final metrics, an interrupted run's last validation, `mtl eval`) is
written by `write_table`, so they all look alike.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from mtl_cli.config import is_extra_test
from mtl_cli.writers import write_texts

SPLIT_NAMES = ("validation", "test")


def write_table(
    md_path: Path, rows: list[dict], header: str = "", also: dict[Path, str] | None = None, note: str = ""
) -> None:
    """`md_path` (the header, the table in Markdown, then the note) and the same rows as CSV beside it,
    with the files `also` names, all or nothing (a full disk leaves none of them half written)."""
    md = {
        md_path: header + rows_to_markdown(_for_people(rows)) + (f"\n{note}" if note else ""),
        md_path.with_suffix(".csv"): rows_to_csv(rows),
    }
    write_texts({**md, **(also or {})})


def table_rows(
    results: dict[str, dict[str, dict[str, float]]],
    extra: dict[str, dict[str, Any]],
    mains: dict[str, str] | None = None,
) -> list[dict]:
    """One row per task (then `average`): `<split>_<metric>` for every metric any task has, plus extras.

    Tasks of different types have different metrics; a cell a task has no value for stays empty.
    `mains`: task -> its main metric, for the tasks the average is over (evaluate.main_metrics).
    With it a task's `<split>_main` cell holds its own main metric, and the average row leaves
    empty the metrics that not all of those tasks have: a mean over some of them would read as one
    over all (`average_note` names what was left out).
    """
    first = next(iter(results.values()))
    tasks = [t for t in first if t != "average"] + ["average"]
    rows: list[dict[str, Any]] = [{"task": task, **extra.get(task, {})} for task in tasks]
    for split, per_task in results.items():
        # An extra test split (test_<name>) holds some tasks only: its average would not be comparable.
        extra_split = is_extra_test(split)
        shown = {t: r for t, r in per_task.items() if not (extra_split and t == "average")}
        # `main` is the average row's (the mean of each task's main metric, what picks checkpoints/best);
        # a task's own `main` is its main metric, when `mains` names it.
        metrics = list(dict.fromkeys(m for r in shown.values() for m in r if m != "loss"))
        partial = set(partial_metrics(per_task, mains)) if mains is not None else set()
        for row in rows:
            task = row["task"]
            scored: dict[str, float | None] = dict(shown.get(task, {}))
            if task != "average" and mains is not None and task in mains and "main" in metrics:
                scored["main"] = scored.get(mains[task])
            for metric in metrics:
                row[f"{split}_{metric}"] = None if task == "average" and metric in partial else scored.get(metric)
    return rows


def partial_metrics(per_task: dict[str, dict[str, float]], mains: dict[str, str] | None) -> list[str]:
    """The metrics of one split that some, not all, of the averaged tasks (`mains`) have."""
    averaged = [r for t, r in per_task.items() if t != "average" and (mains is None or t in mains)]
    names = dict.fromkeys(m for r in averaged for m in r if m not in ("loss", "main"))
    return [m for m in names if not all(m in r for r in averaged)]


def average_note(results: dict[str, dict[str, dict[str, float]]], mains: dict[str, str]) -> str:
    """What the average row of `table_rows(results, ..., mains)` is a mean of, when it is not plain."""
    per_task = next(iter(results.values()))
    tasks = [t for t in per_task if t != "average"]
    notes = []
    if len(set(mains.values())) > 1:  # accuracy with Pearson: a mean of unlike numbers, fine to rank runs by
        notes.append("average main = mean of " + ", ".join(f"{t} {m}" for t, m in mains.items()))
    left_out = [t for t in tasks if t not in mains]
    if left_out:
        notes.append(f"{', '.join(left_out)} (auxiliary) not in the average")
    partial = partial_metrics(per_task, mains)
    if partial:
        having = {m: [t for t in mains if m in per_task.get(t, {})] for m in partial}
        shown = ", ".join(f"{m} ({', '.join(ts)} only)" for m, ts in having.items())
        notes.append(f"the average row leaves out the metrics not every task has: {shown}")
    return "".join(f"- {n}.\n" for n in notes)


def add_forgetting(rows: list[dict], forgetting: dict[str, dict[str, Any]]) -> None:
    """The forgetting monitor's figures per task (callbacks.forgetting.summary) as columns of `rows`:
    the largest fall below the task's best during training, the step of that best, the episodes."""
    for row in rows:
        found = forgetting.get(row["task"], {})
        row["forgetting_drop"] = found.get("drop")
        row["forgetting_peak_step"] = found.get("peak_step")
        row["forgetting_episodes"] = found.get("episodes")


def forgetting_note(threshold: float) -> str:
    return (
        "- forgetting: the largest fall of a task's validation score (its main metric, or trainer.best_metric) "
        "below its best so far while training went on, the step of that best, and the episodes in which it "
        f"fell more than trainer.forgetting_threshold={threshold:g} below it (each warned in train.log, "
        "`forgetting: true` in metrics.jsonl); empty: none. The other figures are those of the best checkpoint.\n"
    )


def _for_people(rows: list[dict]) -> list[dict]:
    """The Markdown's rows: the forgetting columns as one cell, `0.0812 (1 episode, best at step 40)`;
    the CSV keeps the numbers."""
    if not rows or "forgetting_episodes" not in rows[0]:
        return rows
    out = []
    for row in rows:
        row = dict(row)
        drop, peak, episodes = (row.pop(f"forgetting_{k}") for k in ("drop", "peak_step", "episodes"))
        row["forgetting"] = (
            f"{drop:.4f} ({episodes} episode{'s' if episodes > 1 else ''}, best at step {peak})" if episodes else None
        )
        out.append(row)
    return out


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


def print_table(rows: list[dict], title: str, splits: list[str] | None = None) -> None:
    """Rich table: one row per task when tasks share a few metrics, else one row per (task, metric).
    `splits`: the split prefixes of the metric columns (by default validation and test)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    rows = _for_people(rows)
    cols = list(rows[0])
    # Longest first: test_flores_chrf is split test_flores, not test with a metric flores_chrf.
    prefixes = sorted(splits or SPLIT_NAMES, key=len, reverse=True)
    found = {c: next((p for p in prefixes if c.startswith(p + "_")), None) for c in cols}
    split_of = {c: p for c, p in found.items() if p is not None}  # metric column -> its split
    splits = [p for p in (splits or SPLIT_NAMES) if p in split_of.values()]
    metric_cols = [c for c in cols if c in split_of]
    if len([c for c in metric_cols if not c.endswith("_main")]) <= 6:
        cols = [c for c in cols if not c.endswith("_main")]  # equals accuracy when all tasks classify
        for col in cols:  # fold, never cut: a narrow terminal wraps a task name instead of ending it in "…"
            table.add_column(_short(col), justify="left" if col == "task" else "right", overflow="fold")
        for row in rows:
            table.add_row(*[_fmt(row.get(c)) for c in cols], style="bold" if row["task"] == "average" else None)
    else:  # mixed task types: a long table stays readable where a wide one would not
        info = [c for c in cols if c not in metric_cols]
        metrics = list(dict.fromkeys(c[len(split_of[c]) + 1 :] for c in metric_cols))
        for col in [*info, "metric", *splits]:
            table.add_column(_short(col), justify="left" if col in ("task", "metric") else "right", overflow="fold")
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
