"""`mtl report` of a `mtl transfer` folder: its transfer.json read back, checked, as a table.

transfer.json is written by mtl_cli/transfer.py, but a folder may come from anyone: every field is
checked, a bad row is left out, and a file that cannot be used is a reason, never an exception.
What the report keeps (report.json's "transfer"):

    {"file", "test", "seeds": [...],
     "rows": [{"task", "metric", "seeds", "single_mean", "single_std", "multi_mean", "multi_std",
               "difference", "p_value", "significant"}],
     "per_seed": {task: {"single": [value per seed], "multi": [...]}}}   (None where a seed lacks it)

Not imported from mtl_cli.transfer: that module trains, and importing it would load torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError
from mtl_cli.readers import read_json
from mtl_cli.tables import rows_to_markdown

TRANSFER_FILE = "transfer.json"
_NUMBERS = ("single_mean", "multi_mean", "difference")
_OPTIONAL_NUMBERS = ("single_std", "multi_std", "p_value")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _row(raw: Any) -> dict | None:
    """A transfer.json row with the types mtl writes, or None."""
    if not isinstance(raw, dict) or not isinstance(raw.get("task"), str) or not isinstance(raw.get("metric"), str):
        return None
    row: dict[str, Any] = {"task": raw["task"], "metric": raw["metric"]}
    for key in _NUMBERS:
        row[key] = _number(raw.get(key))
        if row[key] is None:
            return None
    for key in _OPTIONAL_NUMBERS:
        row[key] = _number(raw.get(key))
    row["seeds"] = raw["seeds"] if type(raw.get("seeds")) is int else None
    row["significant"] = raw["significant"] if isinstance(raw.get("significant"), bool) else None
    return row


def read_transfer(folder: Path) -> tuple[dict | None, str | None]:
    """(the transfer study in `folder`, None) or (None, why its transfer.json was not used); (None, None)
    when there is none."""
    path = Path(folder) / TRANSFER_FILE
    if not path.exists() and not path.is_symlink():
        return None, None
    try:  # the checked reader: a plain file, bounded, valid JSON
        data = read_json(path)
    except MtlError as err:
        return None, getattr(err, "reason", "cannot be read")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return None, "has no rows (not written by mtl transfer)"
    rows = [row for row in map(_row, data["rows"]) if row is not None]
    if not rows:
        return None, "has no readable rows"
    seeds = [s for s in data.get("seeds", []) if type(s) in (int, str)] if isinstance(data.get("seeds"), list) else []
    per_seed = {}
    for row in rows:
        task, metric = row["task"], row["metric"]
        # JSON keys are strings: the seeds 1, 2 of the list are "1", "2" in "multi" and "single".
        per_seed[task] = {
            "multi": [_number(_dig(data.get("multi"), str(s), "results", task, metric)) for s in seeds],
            "single": [_number(_dig(data.get("single"), task, str(s), "results", task, metric)) for s in seeds],
        }
    test = data["test"] if isinstance(data.get("test"), str) else "Welch's t-test over seeds"
    return {"file": str(path.resolve()), "test": test, "seeds": seeds, "rows": rows, "per_seed": per_seed}, None


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def verdict(row: dict) -> str:
    sign = "positive" if row["difference"] > 0 else "negative" if row["difference"] < 0 else "none"
    if row["p_value"] is None:
        return f"{sign} (one seed: no significance test)"
    noise = "significant" if row["significant"] else "within seed noise"
    return f"{sign}, {noise} (p={row['p_value']:.3f})"


def transfer_rows(transfer: dict) -> list[dict[str, str]]:
    """The table as people read it (strings), one row per task."""
    return [
        {"task": r["task"], "metric": r["metric"], "single-task": _cell(r["single_mean"], r["single_std"]),
         "multi-task": _cell(r["multi_mean"], r["multi_std"]), "difference": f"{r['difference']:+.4f}",
         "transfer": verdict(r)}
        for r in transfer["rows"]
    ]  # fmt: skip


def transfer_markdown(transfer: dict) -> str:
    seeds = ", ".join(map(str, transfer["seeds"])) or "?"
    rows = [{k: v.replace("|", "\\|") for k, v in row.items()} for row in transfer_rows(transfer)]
    return (
        f"## Transfer ({transfer['file']})\n\n"
        f"Each task's main test metric trained alone vs together (seeds {seeds}); significance: "
        f"{transfer['test']}.\n\n" + rows_to_markdown(rows)
    )


def transfer_table(transfer: dict) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"transfer: single- vs multi-task ({transfer['test']})")
    rows = transfer_rows(transfer)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("task", "metric", "transfer") else "right", overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row.values()))  # Text: a task name from the file is not rich markup
    return table
