"""`mtl report FOLDER`: one table (and plot) comparing the finished runs of a sweep.

Every directory under FOLDER (any depth) holding a `config.yaml` is a run; runs without
`results.json` did not finish and are skipped with a note. The swept keys are the config keys
(dotted, from each run's resolved `config.yaml`) whose values differ across the finished runs,
leaving out paths and settings that do not change results (`NOISE`). One row per run: its swept
values, each task's main metric, the average main metric and the run's folder, sorted by the
swept values. Written into FOLDER, never over an earlier report (`report_2.*`, ...):

    report.md    the table; `*` marks the best run per task and for the average
    report.csv   the same rows, full precision, plus a `best` column naming what each run is best at
    report.json  {"folder", "split", "swept": {key: [values]}, "metrics": {task: metric},
                  "overrides": {key: value} common to all runs, "rows": [...],
                  "best": {task|"average": {"metric", "value", "runs"}},
                  "runs": [{"run", "path", "overrides"}], "skipped": [{"run", "reason"}],
                  "study" (an Optuna sweep only): {"file", "best_value", "best_params", "runs"}}
    report.png   one panel per task (and the average): the metric against the first swept key,
                 one line per combination of the other swept keys

An Optuna sweep (hydra/sweeper=optuna) is read like any other: its trials are the job folders; the
study's best trial (`optimization_results.yaml` in FOLDER, chosen on the validation objective) is
named in the report, with the runs that trained it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from mtl_cli import task_types
from mtl_cli.errors import MtlError
from mtl_cli.readers import MAX_JSON_BYTES, read_json, read_text, read_yaml
from mtl_cli.rundir import RunDir
from mtl_cli.tables import rows_to_markdown
from mtl_cli.writers import json_text, write_texts, write_with, writing

SPLITS = ("test", "validation")
REPORT_EXTS = (".md", ".csv", ".json", ".png")
# Keys that differ between runs without changing what is trained: paths and output settings.
NOISE = (
    "runs_root",
    "data_root",
    "task.*.data_dir",
    "task.*.files.*",
    "trainer.progress",
    "trainer.log_every",
    "trainer.threads",
    "trainer.device",
)


# --- reading runs --------------------------------------------------------------------------


def find_runs(folder: Path) -> list[Path]:
    """Every directory under `folder` (itself included) with a config.yaml; hidden folders and
    the inside of a run (checkpoints, eval) are not searched."""
    found = []
    for root, dirs, files in os.walk(folder):
        if "config.yaml" in files:
            found.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values, empty dicts give no key."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def parse_overrides(overrides: list) -> dict[str, Any]:
    """["mixing=weights", "++mixing.weights.yelp=0.1", "~seed"] -> {"mixing": "weights", "mixing.weights.yelp": "0.1", "seed": None}."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, value = str(item).partition("=")
        out[key.lstrip("+~")] = value if sep else None
    return out


def _load_yaml(path: Path) -> Any:
    try:  # the checked reader: bounded, and an alias bomb refused before it is expanded
        return read_yaml(path)
    except MtlError as err:
        return err


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except MtlError as err:
        return err


def _results_shape(results: Any) -> bool:
    """{task: {metric: number or null}} with an "average": what mtl writes to results.json."""
    return (
        isinstance(results, dict)
        and isinstance(results.get("average"), dict)
        and all(
            isinstance(metrics, dict) and all(v is None or type(v) in (int, float) for v in metrics.values())
            for metrics in results.values()
        )
    )


def _validation_results(run: Path) -> dict | str:
    """{task: {metric: value}, "average": {...}} from metrics.csv's `validation_<metric>` columns."""
    try:  # the checked reader: a plain file, bounded in size
        rows = list(csv.DictReader(io.StringIO(read_text(RunDir(run).table.with_suffix(".csv"), MAX_JSON_BYTES))))
    except (MtlError, csv.Error):
        return "no metrics.csv"
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        metrics = {}
        for col, value in row.items():
            if col and col.startswith("validation_") and value not in (None, ""):
                try:
                    metrics[col[len("validation_") :]] = float(value)
                except ValueError:
                    continue
        out[row.get("task", "")] = metrics
    return out if out else "empty metrics.csv"


def main_metric(task_cfg: Any, metrics: dict) -> str | None:
    """The task type's MAIN_METRIC when the results have it, else the first metric listed."""
    try:
        name = task_types.get(task_cfg.get("type", "classification")).MAIN_METRIC
    except (MtlError, AttributeError):
        name = None
    if name in metrics:
        return name
    return next(iter(metrics), None)


def _display(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    if value is None:
        return (2, "")
    return (1, _display(value))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- the report ----------------------------------------------------------------------------


def build_report(folder: Path, split: str = "test") -> dict:
    """Read the runs under `folder`; the report as a JSON-able dict (see the module docstring)."""
    folder = Path(folder)
    if split not in SPLITS:
        raise MtlError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if not folder.is_dir():
        raise MtlError(f"no folder {folder}; pass a sweep folder such as runs/multirun/<date>/<time>")
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path in find_runs(folder):
        name = path.relative_to(folder).as_posix() if path != folder else folder.name
        run_dir = RunDir(path)
        config = _load_yaml(run_dir.config)
        if not isinstance(config, dict) or not isinstance(config.get("task"), dict):
            skipped.append({"run": name, "reason": "config.yaml is not an mtl run config"})
            continue
        if not run_dir.results.is_file():
            skipped.append({"run": name, "reason": "no results.json (unfinished)"})
            continue
        results = _read_json(run_dir.results) if split == "test" else _validation_results(path)
        if not _results_shape(results):  # a run directory may be anyone's: {task: {metric: number}}
            reason = results if isinstance(results, str) else "unreadable results.json"
            skipped.append({"run": name, "reason": f"{reason} ({split} split)"})
            continue
        overrides = _load_yaml(run_dir.overrides) if run_dir.overrides.is_file() else []
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        runs.append({"run": name, "path": str(path.resolve()), "config": config, "results": results,
                     "overrides": overrides})  # fmt: skip
    if not runs:
        unfinished = sum(s["reason"].startswith("no results.json") for s in skipped)
        if not skipped:
            detail = "it holds no run directory (a folder with config.yaml)"
        else:
            detail = f"runs without results.json are skipped ({unfinished} of the {len(skipped)} run directories found"
            others = len(skipped) - unfinished
            detail += f"; {others} more unreadable)" if others else ")"
        raise MtlError(
            f"no finished runs under {folder}: {detail}; pass a finished sweep such as runs/multirun/<date>/<time>"
        )

    task_sets: dict[tuple, list[str]] = {}
    for run in runs:
        task_sets.setdefault(tuple(sorted(run["config"]["task"])), []).append(run["run"])
    if len(task_sets) > 1:
        described = "; ".join(f"{'+'.join(ts)} in {', '.join(names)}" for ts, names in task_sets.items())
        raise MtlError(f"runs under {folder} train different task sets ({described}); report one sweep at a time")
    tasks = list(runs[0]["config"]["task"])
    metrics = {t: main_metric(runs[0]["config"]["task"][t], runs[0]["results"].get(t, {})) for t in tasks}

    swept = swept_keys(runs)
    rows = []
    for run in runs:
        flat = flatten(run["config"])
        row: dict[str, Any] = {key: flat.get(key) for key in swept}
        for task in tasks:
            row[f"{task}_{metrics[task]}"] = run["results"].get(task, {}).get(metrics[task])
        row["average_main"] = run["results"]["average"].get("main")
        row["run"] = run["run"]
        rows.append(row)
    rows.sort(key=lambda r: (*(_sort_key(r[k]) for k in swept), r["run"]))

    columns = {task: f"{task}_{metrics[task]}" for task in tasks} | {"average": "average_main"}
    metrics["average"] = "main"
    best = {}
    for task, col in columns.items():
        values = [r[col] for r in rows if isinstance(r[col], (int, float)) and not math.isnan(r[col])]
        if values:
            top = max(values)
            best[task] = {"metric": metrics[task], "value": top,
                          "runs": [r["run"] for r in rows if r[col] == top]}  # fmt: skip

    parsed = [parse_overrides(run["overrides"]) for run in runs]
    common = {k: v for k, v in parsed[0].items() if all(k in p and p[k] == v for p in parsed[1:])}
    order = {run["run"]: i for i, run in enumerate(runs)}
    swept_values = {k: sorted({json.dumps(r[k]): r[k] for r in rows}.values(), key=_sort_key) for k in swept}
    study = optuna_study(folder, runs)
    return {
        "folder": str(folder.resolve()),
        "split": split,
        "tasks": tasks,
        "swept": swept_values,
        "metrics": metrics,
        "overrides": common,
        "rows": rows,
        "best": best,
        "runs": [
            {"run": r["run"], "path": runs[order[r["run"]]]["path"], "overrides": parsed[order[r["run"]]]} for r in rows
        ],
        "skipped": skipped,
    } | ({"study": study} if study else {})


def optuna_study(folder: Path, runs: list[dict]) -> dict | None:
    """The best trial an Optuna sweeper wrote to FOLDER/optimization_results.yaml, and the runs whose
    config has its parameters; None without that file (or for a multi-objective study's front)."""
    path = folder / "optimization_results.yaml"
    data = _load_yaml(path) if path.is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("best_params"), dict):
        return None
    params = {str(k).lstrip("+~"): v for k, v in data["best_params"].items()}
    value = data.get("best_value")
    matched = [
        run["run"]
        for run in runs
        if all(_same_value(flatten(run["config"]).get(key, _MISSING), want) for key, want in params.items())
    ]
    return {"file": str(path.resolve()), "best_value": value if isinstance(value, (int, float)) else None,
            "best_params": params, "runs": matched}  # fmt: skip


_MISSING = object()


def _same_value(have: Any, want: Any) -> bool:
    if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(have, bool):
        return math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)
    return have is not _MISSING and (_same(have, want) or _display(have) == _display(want))


def study_line(report: dict) -> str | None:
    study = report.get("study")
    if not study:
        return None
    params = " ".join(f"{k}={_short(v)}" for k, v in study["best_params"].items())
    value = "?" if study["best_value"] is None else f"{study['best_value']:.4f}"
    where = ", ".join(study["runs"]) or "no run here"
    return f"Optuna's best trial (validation objective {value}): {params}: {where} ({study['file']})"


def swept_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values differ across runs, minus NOISE; the keys named on the command
    line first (in the order given), then the others in config order."""
    flats = [flatten(run["config"]) for run in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    swept = [
        k
        for k in keys
        if not any(fnmatchcase(k, pattern) for pattern in NOISE)
        and any(not _same(flat.get(k), flats[0].get(k)) for flat in flats[1:])
    ]
    named = list(dict.fromkeys(k for run in runs for k in parse_overrides(run["overrides"])))

    def rank(key: str) -> int:
        return next((i for i, o in enumerate(named) if key == o or key.startswith(o + ".")), len(named))

    return sorted(swept, key=lambda k: (rank(k), swept.index(k)))


def _is_best(report: dict, row: dict, task: str) -> bool:
    b = report["best"].get(task)
    return b is not None and row["run"] in b["runs"]


def _columns(report: dict) -> list[tuple[str, str | None]]:
    """(row key, task it belongs to or None)."""
    cols: list[tuple[str, str | None]] = [(k, None) for k in report["swept"]]
    cols += [(f"{t}_{report['metrics'][t]}", t) for t in report["tasks"]]
    return [*cols, ("average_main", "average"), ("run", None)]


def _short(value: Any) -> str:
    """A float a sweeper drew (2.368863950364078) to 4 significant digits; anything else as _display."""
    if isinstance(value, float) and len(repr(value)) > 8:
        return f"{value:.4g}"
    return _display(value)


def _cell(value: Any, is_metric: bool) -> str:
    if is_metric:
        return "" if value is None else f"{value:.4f}"
    return value if isinstance(value, str) else _short(value)


def to_markdown(report: dict) -> str:
    cols = _columns(report)
    marked = []
    for row in report["rows"]:
        cells = {}
        for key, task in cols:
            text = _cell(row[key], task is not None)
            cells[key] = text + ("*" if task is not None and _is_best(report, row, task) else "")
        marked.append(cells)
    n = len(report["rows"])
    lines = [f"# Sweep report: {report['folder']}", ""]
    lines.append(
        f"{n} finished run{'s' if n != 1 else ''}, {report['split']} split, each task's main metric "
        "(`*`: best run for that column)."
    )
    if report["swept"]:
        lines.append(
            "Swept: " + "; ".join(f"`{k}` = {', '.join(map(_short, v))}" for k, v in report["swept"].items()) + "."
        )
    else:
        lines.append("Swept: nothing (the runs' configs are the same).")
    if report["overrides"]:
        lines.append(
            "Common overrides: " + " ".join(f"`{k}={_display(v)}`" for k, v in report["overrides"].items()) + "."
        )
    study = study_line(report)
    if study:
        lines.append(study + ".")
    if report["skipped"]:
        lines.append(
            f"Skipped {len(report['skipped'])}: "
            + "; ".join(f"{s['run']} ({s['reason']})" for s in report["skipped"])
            + "."
        )
    return "\n".join(lines) + "\n\n" + rows_to_markdown(marked)


def to_csv(report: dict) -> str:
    rows = []
    for row in report["rows"]:
        best = [t for t in [*report["tasks"], "average"] if _is_best(report, row, t)]
        rows.append(
            {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
            | {"best": " ".join(best)}
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(report: dict, path: Path) -> None:
    """One panel per task and the average: the metric against the first swept key (numeric: lines
    and markers, log scale when the values span 100x; otherwise categorical), one line per
    combination of the other swept keys. Object-oriented Agg: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    swept = list(report["swept"])
    rows = report["rows"]
    x_key = swept[0] if swept else "run"
    xs = [r[x_key] for r in rows]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if numeric:
        positions = {json.dumps(x): x for x in xs}
    else:
        order = sorted({json.dumps(x): x for x in xs}.values(), key=_sort_key)
        positions = {json.dumps(x): i for i, x in enumerate(order)}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = ", ".join(f"{k}={_display(r[k])}" for k in swept[1:])
        groups.setdefault(label, []).append(r)

    panels = [(t, f"{t}_{report['metrics'][t]}", report["metrics"][t]) for t in [*report["tasks"], "average"]]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
    FigureCanvasAgg(fig)
    for i, (task, col, metric) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for label, members in groups.items():
            pts = sorted(
                ((positions[json.dumps(r[x_key])], r[col]) for r in members if r[col] is not None),
                key=lambda p: p[0],
            )
            if pts:
                xs_, ys_ = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs_, ys_, marker="o", linestyle="-" if numeric else ":", label=label or None)
        if numeric:
            finite = [x for x in xs if x > 0]
            if len(finite) == len(xs) and max(finite) >= 100 * min(finite):
                ax.set_xscale("log")
        else:
            ax.set_xticks(list(range(len(order))))
            ax.set_xticklabels(
                [_display(x) for x in order],
                rotation=30 if len(order) > 4 else 0,
                ha="right" if len(order) > 4 else "center",
            )
        ax.set_title(f"{task} ({metric})")
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{report['split']} {metric}")
        ax.grid(True, alpha=0.3)
        if i == 0 and len(groups) > 1:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def write_report(folder: Path, report: dict) -> list[Path]:
    """report.{md,csv,json,png} in `folder`; when any of them exists, report_2.*, report_3.* ..."""
    folder = Path(folder)
    n = 1
    while True:
        stem = "report" if n == 1 else f"report_{n}"
        if not any((folder / f"{stem}{ext}").exists() for ext in REPORT_EXTS):
            break
        n += 1
    md, csv_path, js, png = (folder / f"{stem}{ext}" for ext in REPORT_EXTS)
    # All or nothing: a full disk or a read-only folder is one line and leaves no report half written.
    with writing(md, md, csv_path, js, png):
        write_texts({md: to_markdown(report), csv_path: to_csv(report), js: json_text(report)})
        write_with(png, lambda tmp: plot(report, tmp))
    return [md, csv_path, js, png]


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['folder']} ({report['split']} split; * best)")
    cols = _columns(report)
    for key, _task in cols:
        table.add_column(key, justify="left" if key == "run" else "right")
    for row in report["rows"]:
        cells = []
        for key, task in cols:
            text = _cell(row[key], task is not None)
            if task is not None and _is_best(report, row, task):
                text = f"[bold green]{text}*[/]"
            cells.append(text)
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)
    study = study_line(report)
    if study:
        console.print(study, markup=False, highlight=False)
    for s in report["skipped"]:
        console.print(f"skipped {s['run']}: {s['reason']}", markup=False, highlight=False)


def report_command(folder: str, split: str = "test") -> None:
    """`mtl report FOLDER [split=test|validation]`: build, print and write the sweep report."""
    path = Path(folder).expanduser()
    report = build_report(path, split)
    print_report(report)
    for written in write_report(path, report):
        print(f"wrote {written}")
