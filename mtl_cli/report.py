"""`mtl report FOLDER`: the finished runs of a sweep, one row per configuration, seeds averaged.

Every directory under FOLDER (any depth) holding a `config.yaml` is a run; a run needs its
`results.json` (test) and its `metrics.csv` (validation, the `validation_<metric>` columns):
runs without them, or whose files are not what mtl writes, are skipped with a reason. The swept
keys are the config keys (dotted, from each run's resolved `config.yaml`) whose values differ
across the runs, leaving out paths and settings that do not change results (`NOISE`). Runs that
differ only in `seed` are one configuration: each task's main metric as mean ± std over its runs
(n), on both splits. The best configuration is the one with the highest validation average main
metric (never chosen on test: test is only reported beside it); every other one carries its
difference to the best on that average and the p-value of Welch's t-test over seeds (`welch_p`;
n=1 on either side: no test). Written into FOLDER, never over an earlier report (`report_2.*`):

    report.md    the configurations on each split, then the transfer table (a transfer folder)
    report.csv   one row per configuration, full precision: <split>_<task>_<metric>_mean/_std, ...
    report.json  {"folder", "split" (the split the console shows first), "tasks",
                  "metrics": {task: metric, "average": "main"}, "swept": {key: [values]} (seed
                  left out), "seeds": [values], "overrides": {key: value} common to all runs,
                  "selection": {"split": "validation", "metric", "test", "alpha"},
                  "rows": [{"config": {key: value}, "label", "n", "seeds", "runs",
                            "validation"|"test": {task|"average": {"mean", "std", "n", "values"}},
                            "difference", "p_value", "significant", "best"}],  (values: per seed)
                  "best": {"split", "metric", "value", "row", "config", "runs"} | null,
                  "runs": [{"run", "path", "overrides", "seed", "row", "validation", "test"}],
                  "skipped": [{"run", "reason"}],
                  "study" (an Optuna sweep only): {"file", "best_value", "best_params", "runs"},
                  "transfer" (a `mtl transfer` folder only): see mtl_cli/report_transfer.py}
    report.png   the metric against each swept key, one panel per task (mtl_cli/report_plots.py)
    report.html  one self-contained page: tables, plots, curves (mtl_cli/report_html.py; written by
                 mtl_cli/report_files.py)

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
import statistics
import warnings
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from mtl_cli import task_types
from mtl_cli.errors import MtlError
from mtl_cli.readers import MAX_JSON_BYTES, read_json, read_text, read_yaml
from mtl_cli.report_transfer import read_transfer, transfer_markdown, transfer_table
from mtl_cli.rundir import RunDir
from mtl_cli.tables import rows_to_markdown

SPLITS = ("validation", "test")  # validation chooses the best configuration; test is reported beside it
REPORT_EXTS = (".md", ".csv", ".json", ".png", ".html")
SEED = "seed"  # the config key whose runs are averaged into one configuration
ALPHA = 0.05  # Welch's t-test level for calling a difference to the best significant, as in mtl transfer
TEST_NAME = "Welch's t-test over seeds (scipy.stats.ttest_ind, equal_var=False)"
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
    except MtlError as err:
        return f"metrics.csv {getattr(err, 'reason', 'cannot be read')}"
    except csv.Error:
        return "metrics.csv is not CSV"
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        metrics = {}
        for col, value in row.items():
            if isinstance(col, str) and col.startswith("validation_") and isinstance(value, str) and value:
                try:
                    metrics[col[len("validation_") :]] = float(value)
                except ValueError:
                    continue
        out[str(row.get("task", ""))] = metrics
    return out if out else "metrics.csv holds no rows"


def main_metric(task_cfg: Any, metrics: dict) -> str | None:
    """The task type's MAIN_METRIC when the results have it, else the first metric listed."""
    try:
        name = task_types.get(task_cfg.get("type", "classification")).MAIN_METRIC
    except (MtlError, AttributeError, TypeError):
        name = None
    if name in metrics:
        return name
    return next(iter(metrics), None)


def _number(value: Any) -> float | None:
    """A finite number, else None: a NaN or an infinity from someone's run is no figure to average."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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


def read_runs(folder: Path) -> tuple[list[dict], list[dict[str, str]]]:
    """The usable runs under `folder` ({"run", "path", "config", "test", "validation", "overrides"})
    and the skipped ones with their reason; a run directory may be anyone's, so nothing here raises."""
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path in find_runs(folder):
        name = path.relative_to(folder).as_posix() if path != folder else folder.name
        run_dir = RunDir(path)
        config = _load_yaml(run_dir.config)
        tasks = config.get("task") if isinstance(config, dict) else None
        if not isinstance(tasks, dict) or not tasks or not all(isinstance(t, str) for t in tasks):
            skipped.append({"run": name, "reason": "config.yaml is not an mtl run config"})
            continue
        try:  # YAML reads `2020-01-01` as a date: no value of a config mtl writes, and no JSON for report.json
            json.dumps(config)
        except (TypeError, ValueError):
            skipped.append({"run": name, "reason": "config.yaml holds values that are not plain data (a date?)"})
            continue
        if not run_dir.results.is_file():
            skipped.append({"run": name, "reason": "no results.json (unfinished)"})
            continue
        test = _read_json(run_dir.results)
        if not _results_shape(test):  # {task: {metric: number}}, or the run is not one mtl wrote
            skipped.append({"run": name, "reason": "unreadable results.json (test split)"})
            continue
        validation = _validation_results(path)
        if not _results_shape(validation):  # the best is chosen on validation: a run without it cannot compete
            reason = validation if isinstance(validation, str) else "metrics.csv has no validation average"
            skipped.append({"run": name, "reason": f"{reason} (validation split)"})
            continue
        overrides = _load_yaml(run_dir.overrides) if run_dir.overrides.is_file() else []
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        runs.append({"run": name, "path": str(path.resolve()), "config": config, "test": test,
                     "validation": validation, "overrides": overrides})  # fmt: skip
    return runs, skipped


def _no_runs(folder: Path, skipped: list[dict[str, str]], transfer_problem: str | None) -> MtlError:
    unfinished = sum(s["reason"].startswith("no results.json") for s in skipped)
    if not skipped:
        detail = "it holds no run directory (a folder with config.yaml)"
    else:
        detail = f"runs without results.json are skipped ({unfinished} of the {len(skipped)} run directories found"
        others = len(skipped) - unfinished
        detail += f"; {others} more unreadable)" if others else ")"
    if transfer_problem:
        detail += f"; its transfer.json {transfer_problem}"
    return MtlError(
        f"no finished runs under {folder}: {detail}; pass a finished sweep such as runs/multirun/<date>/<time>"
    )


# --- configurations, seeds and the best one -----------------------------------------------------


def summary(values: list[Any]) -> dict[str, Any]:
    """Mean, std (sample, n-1) and n of the finite values; `values` kept as given (per seed, None if missing)."""
    finite = [v for v in map(_number, values) if v is not None]
    return {
        "mean": statistics.mean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
        "values": [_number(v) for v in values],
    }


def welch_p(a: list[Any], b: list[Any]) -> float | None:
    """Welch's t-test p-value between two configurations' per-seed values, as mtl transfer computes
    it: identical samples (or two without spread) give no evidence, p = 1; n=1 on either side: None."""
    from scipy import stats  # delayed: scipy takes a second to import, and only this needs it

    a = [v for v in map(_number, a) if v is not None]
    b = [v for v in map(_number, b) if v is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    same = a == b or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0)
    with warnings.catch_warnings():
        # Nearly identical seeds make scipy warn of precision loss; the p-value says it (near 1, or NaN: 1).
        warnings.simplefilter("ignore", RuntimeWarning)
        p = 1.0 if same else float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else 1.0


def _label(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={short_value(v)}" for k, v in config.items()) or "all runs"


def configurations(runs: list[dict], swept: list[str], tasks: list[str], metrics: dict[str, str]) -> list[dict]:
    """One row per configuration (runs equal on every swept key but the seed), sorted by the swept values."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        flat = flatten(run["config"])
        run["seed"] = flat.get(SEED)
        run["key"] = {k: flat.get(k) for k in swept}
        groups.setdefault(json.dumps(run["key"], sort_keys=True), []).append(run)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: (_sort_key(r["seed"]), r["run"]))
        row: dict[str, Any] = {"config": members[0]["key"], "label": _label(members[0]["key"]), "n": len(members),
                               "seeds": [r["seed"] for r in members], "runs": [r["run"] for r in members]}  # fmt: skip
        for split in SPLITS:
            row[split] = {
                task: summary([r[split].get(task, {}).get(metrics[task]) for r in members])
                for task in [*tasks, "average"]
            }
        rows.append(row)
    rows.sort(key=lambda r: [_sort_key(r["config"][k]) for k in swept])
    return rows


def choose_best(rows: list[dict]) -> dict | None:
    """The configuration with the highest validation average main metric (the first of equal ones);
    each row gets its difference to it and Welch's p over seeds. Test never enters the choice."""
    scored = [(i, r["validation"]["average"]["mean"]) for i, r in enumerate(rows)]
    scored = [(i, m) for i, m in scored if m is not None]
    if not scored:
        for row in rows:
            row.update(difference=None, p_value=None, significant=None, best=False)
        return None
    top, value = max(scored, key=lambda im: (im[1], -im[0]))
    best_values = rows[top]["validation"]["average"]["values"]
    for i, row in enumerate(rows):
        mean = row["validation"]["average"]["mean"]
        row["difference"] = None if mean is None else mean - value
        row["p_value"] = None if i == top else welch_p(row["validation"]["average"]["values"], best_values)
        row["significant"] = None if row["p_value"] is None else row["p_value"] < ALPHA
        row["best"] = i == top
    return {"split": "validation", "metric": "main", "value": value, "row": top, "config": rows[top]["config"],
            "runs": rows[top]["runs"]}  # fmt: skip


# --- the report ----------------------------------------------------------------------------


def build_report(folder: Path, split: str = "validation") -> dict:
    """Read the runs under `folder`; the report as a JSON-able dict (see the module docstring).
    `split` only decides which split the console shows first."""
    folder = Path(folder)
    if split not in SPLITS:
        raise MtlError(f"split must be one of {', '.join(SPLITS)} (the split the table shows first); got {split!r}")
    if not folder.is_dir():
        raise MtlError(f"no folder {folder}; pass a sweep folder such as runs/multirun/<date>/<time>")
    runs, skipped = read_runs(folder)
    transfer, transfer_problem = read_transfer(folder)
    if not runs and transfer is None:
        raise _no_runs(folder, skipped, transfer_problem)
    if transfer_problem:
        skipped.append({"run": "transfer.json", "reason": transfer_problem})

    task_sets: dict[tuple, list[str]] = {}
    for run in runs:
        task_sets.setdefault(tuple(sorted(run["config"]["task"])), []).append(run["run"])
    if len(task_sets) > 1:
        described = "; ".join(f"{'+'.join(ts)} in {', '.join(names)}" for ts, names in task_sets.items())
        raise MtlError(f"runs under {folder} train different task sets ({described}); report one sweep at a time")
    if runs:
        tasks = list(runs[0]["config"]["task"])
        metrics: dict[str, str] = {}
        for task in tasks:
            seen = {m: None for r in runs for split in SPLITS for m in r[split].get(task, {})}
            metrics[task] = main_metric(runs[0]["config"]["task"][task], seen) or "main"
    else:  # a transfer folder whose runs are gone: its own table is the report
        assert transfer is not None
        tasks = [r["task"] for r in transfer["rows"]]
        metrics = {r["task"]: r["metric"] for r in transfer["rows"]}
    metrics["average"] = "main"

    swept = [k for k in swept_keys(runs) if k != SEED]
    rows = configurations(runs, swept, tasks, metrics)
    best = choose_best(rows)
    parsed = [parse_overrides(run["overrides"]) for run in runs]
    common = {k: v for k, v in parsed[0].items() if all(k in p and p[k] == v for p in parsed[1:])} if runs else {}
    position = {name: (i, j) for i, row in enumerate(rows) for j, name in enumerate(row["runs"])}
    listed = sorted(zip(runs, parsed, strict=True), key=lambda rp: position[rp[0]["run"]])
    study = optuna_study(folder, runs)
    seeds = sorted({json.dumps(r["seed"]): r["seed"] for r in runs}.values(), key=_sort_key)
    return (
        {
            "folder": str(folder.resolve()),
            "split": split,
            "tasks": tasks,
            "metrics": metrics,
            "swept": {
                k: sorted({json.dumps(r["config"][k]): r["config"][k] for r in rows}.values(), key=_sort_key)
                for k in swept
            },
            "seeds": seeds,
            "overrides": common,
            "selection": {"split": "validation", "metric": "average main", "test": TEST_NAME, "alpha": ALPHA},
            "rows": rows,
            "best": best,
            "runs": [
                {
                    "run": run["run"],
                    "path": run["path"],
                    "overrides": over,
                    "seed": run["seed"],
                    "row": position[run["run"]][0],
                    **{
                        split: {t: _number(run[split].get(t, {}).get(metrics[t])) for t in [*tasks, "average"]}
                        for split in SPLITS
                    },
                }
                for run, over in listed
            ],
            "skipped": skipped,
        }
        | ({"study": study} if study else {})
        | ({"transfer": transfer} if transfer else {})
    )


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
    params = " ".join(f"{k}={short_value(v)}" for k, v in study["best_params"].items())
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


# --- text: Markdown, CSV, the console --------------------------------------------------------------


def short_value(value: Any) -> str:
    """A float a sweeper drew (2.368863950364078) to 4 significant digits; anything else as _display."""
    if isinstance(value, float) and len(repr(value)) > 8:
        return f"{value:.4g}"
    return value if isinstance(value, str) else _display(value)


def mean_std(cell: dict, digits: int = 4) -> str:
    """ "0.8123 ± 0.0123" (n > 1), "0.8123" (n = 1), "" (no value)."""
    if cell["mean"] is None:
        return ""
    return f"{cell['mean']:.{digits}f}" + ("" if cell["std"] is None else f" ± {cell['std']:.{digits}f}")


def versus_best(row: dict) -> tuple[str, str]:
    """(Δ best, p) as the tables show them: the best says so; n=1 says there is no test."""
    if row["best"]:
        return "best", ""
    diff = "" if row["difference"] is None else f"{row['difference']:+.4f}"
    if row["p_value"] is None:
        return diff, "n=1: no test" if row["difference"] is not None else ""
    return diff, f"{row['p_value']:.3f}" + ("*" if row["significant"] else "")


def explanation(report: dict) -> str:
    runs, rows = len(report["runs"]), len(report["rows"])
    seeds = ", ".join(map(short_value, report["seeds"])) or "none"
    return (
        f"{runs} finished run{'s' if runs != 1 else ''} in {rows} configuration{'s' if rows != 1 else ''} "
        f"(seeds {seeds}): each task's main metric as mean ± std over the configuration's runs (n). "
        "The best configuration is chosen on the validation average main metric; the test split is only "
        "reported beside it, never used to choose. Δ best and p: each configuration's validation average "
        f"against the best one's, {TEST_NAME}, `*`: p < {ALPHA}; n=1 on either side: no test."
    )


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")  # a value from a run file must not break the table


def to_markdown(report: dict) -> str:
    lines = [f"# Sweep report: {report['folder']}", ""]
    lines.append(explanation(report) if report["rows"] else "No finished runs here: the transfer study alone.")
    if report["swept"]:
        lines.append(
            "Swept: " + "; ".join(f"`{k}` = {', '.join(map(short_value, v))}" for k, v in report["swept"].items()) + "."
        )
    elif report["rows"]:
        lines.append("Swept: nothing but the seed (the runs' configs are otherwise the same).")
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
    text = "\n".join(_md(line) if line.startswith("Skipped") else line for line in lines) + "\n"
    names = {t: f"{t} {report['metrics'][t]}" for t in [*report["tasks"], "average"]}
    for split in SPLITS if report["rows"] else ():
        table = []
        for row in report["rows"]:
            cells = {_md(k): _md(short_value(v)) for k, v in row["config"].items()} | {"n": str(row["n"])}
            cells |= {_md(names[t]): mean_std(row[split][t]) for t in names}
            if split == "validation":
                cells["Δ best"], cells["p (Welch)"] = versus_best(row)
                cells["runs"] = _md(", ".join(row["runs"]))
            else:
                cells["best"] = "best" if row["best"] else ""
            table.append(cells)
        title = (
            "chooses the best configuration" if split == "validation" else "reported beside it, never used to choose"
        )
        text += f"\n## {split.capitalize()} split ({title})\n\n" + rows_to_markdown(table)
    if report.get("transfer"):
        text += "\n" + transfer_markdown(report["transfer"])
    return text


def to_csv(report: dict) -> str:
    rows = []
    for row in report["rows"]:
        out: dict[str, Any] = {
            k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row["config"].items()
        }
        out |= {"n": row["n"], "seeds": " ".join(map(_display, row["seeds"]))}
        for split in SPLITS:
            for task in [*report["tasks"], "average"]:
                prefix = f"{split}_{task}_{report['metrics'][task]}"
                out |= {f"{prefix}_mean": row[split][task]["mean"], f"{prefix}_std": row[split][task]["std"]}
        out |= {"difference": row["difference"], "p_value": row["p_value"], "significant": row["significant"],
                "best": row["best"], "runs": " ".join(row["runs"])}  # fmt: skip
        rows.append(out)
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def console_table(report: dict) -> Any:
    """One section per configuration (its swept values, n, best), a row per task and the average:
    a long table stays whole in a narrow terminal, where a column per task would be cut."""
    from rich.markup import escape
    from rich.table import Table

    order = [report["split"], *(s for s in SPLITS if s != report["split"])]
    table = Table(
        title=f"{report['folder']}: mean ± std over seeds",
        caption="best: chosen on the validation average (test is only reported beside it); Δ best, p: the "
        f"validation average against the best configuration, {TEST_NAME}, * p < {ALPHA}",
    )
    table.add_column("configuration / task (metric)", overflow="fold", ratio=1)
    for split in order:
        table.add_column(split, justify="right", no_wrap=True)
    table.add_column("Δ best", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    for row in report["rows"]:
        mark = " [bold green]best[/]" if row["best"] else ""
        table.add_row(f"[bold]{escape(row['label'])}[/] n={row['n']}{mark}")
        for task in [*report["tasks"], "average"]:
            last = task == "average"
            cells = [mean_std(row[s][task], 3 if not last else 4) for s in order]
            extra = list(versus_best(row)) if last else ["", ""]
            style = "bold green" if last and row["best"] else "bold" if last else None
            table.add_row(f"  {escape(task)} ({escape(report['metrics'][task])})", *cells, *extra, style=style)
        table.add_section()
    return table


def print_report(report: dict, console: Any = None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        # A pipe or a log gets a table 120 wide, unless COLUMNS says how wide to be.
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = max(console.width, 120)
    if report["rows"]:
        console.print(console_table(report))
    if report.get("transfer"):
        console.print(transfer_table(report["transfer"]))
    study = study_line(report)
    if study:
        console.print(study, markup=False, highlight=False)
    for s in report["skipped"]:
        console.print(f"skipped {s['run']}: {s['reason']}", markup=False, highlight=False)
