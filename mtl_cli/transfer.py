"""`mtl transfer`: does training the tasks together help each task, or hurt it?

For every seed: one multi-task run, then one single-task run per task with the same encoder,
settings and seed, trained on exactly as many examples of its task as the multi-task run saw
(its `examples_seen`). The report compares each task's main test metric, single vs multi.

Baselines are cached under `<runs_root>/baselines/<key>/`, the key hashing everything that
decides the baseline (task data and settings, encoder, sharing, trainer settings incl. the step
budget, seed), so a second study with the same settings reuses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtl_cli import task_types
from mtl_cli.checkpoints import find_checkpoint, read_checkpoint_state
from mtl_cli.config import MtlConfig, task_names_label
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import file_digest
from mtl_cli.readers import read_json, read_jsonl
from mtl_cli.rundir import RunDir
from mtl_cli.tables import rows_to_csv, rows_to_markdown
from mtl_cli.tasks import resolve_path
from mtl_cli.train import train
from mtl_cli.writers import write_json, write_text, write_with, writing

ALPHA = 0.05  # Welch's t-test level for calling a difference significant


def copy_config(cfg: MtlConfig) -> MtlConfig:
    """A deep copy, typed as the schema (OmegaConf's own return type is a union)."""
    copied = OmegaConf.to_object(OmegaConf.structured(cfg))
    assert isinstance(copied, MtlConfig)
    return copied


def baseline_config(cfg: MtlConfig, task: str, examples: int, evals: int, seed: int) -> MtlConfig:
    """A single-task copy of `cfg` that sees `examples` examples of `task` (whole batches) and is
    evaluated as often as the multi-task run (`evals` times), so both pick a best checkpoint alike."""
    single = copy_config(cfg)
    single.task = {task: single.task[task]}
    single.seed = seed
    single.mixing = type(single.mixing)()  # one task: mixing is moot; defaults keep the key stable
    single.loss_weighting = type(single.loss_weighting)()
    steps = max(1, math.ceil(examples / single.trainer.batch_size))
    single.trainer.max_steps = steps
    single.trainer.eval_every = max(1, steps // max(evals, 1))
    return single


def cache_key(cfg: MtlConfig) -> str:
    settings: Any = OmegaConf.to_container(OmegaConf.structured(cfg))
    settings.pop("runs_root", None)
    settings["trainer"].pop("progress", None)
    settings["data_sha256"] = data_digests(cfg)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def data_digests(cfg: MtlConfig) -> dict[str, dict[str, str]]:
    """task -> split -> sha256 of its local file: the data's content enters the baseline's key, not
    only its paths, so a baseline cached on other data is not reused."""
    out: dict[str, dict[str, str]] = {}
    for name, tc in cfg.task.items():
        if tc.source == "hub":
            continue
        # format: parallel names a stem: its data are <stem>.<source_language> and <stem>.<target_language>.
        sides = [f".{tc.source_language}", f".{tc.target_language}"] if tc.format == "parallel" else [""]
        paths = {
            split + side: resolve_path(rel + side, tc, cfg.data_root)
            for split, rel in tc.files.items()
            for side in sides
        }
        out[name] = {split: file_digest(path) for split, path in paths.items() if path.is_file()}
    return out


def cached_run(root: Path, key: str) -> RunDir | None:
    for path in sorted(root.glob(f"{key}*")):
        if RunDir(path).results.is_file():
            return RunDir(path)
    return None


def main_metric(cfg: MtlConfig, task: str) -> str:
    return task_types.get(cfg.task[task].type).MAIN_METRIC


def new_folder(base: Path) -> Path:
    """`base`, or `base_2`, `base_3`... when a study started in the same second has it; one line
    when the folder cannot be made (a read-only or full disk)."""
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}_{n}")
        with writing(folder, what="create the folder"):
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                continue
    raise MtlError(f"could not find a free folder next to {base}; clean up {base.parent}")


def run_transfer(cfg: MtlConfig, seeds: list[int], overrides: list[str] | None = None) -> dict:
    """Train (or reuse) every run of the study and write the report; returns the report dict."""
    runs_root = Path(cfg.runs_root)
    now = datetime.now()
    out = new_folder(runs_root / "transfer" / now.strftime("%Y-%m-%d") / f"{now:%H-%M-%S}_{task_names_label(cfg.task)}")
    baselines_root = runs_root / "baselines"
    record: dict[str, Any] = {"tasks": list(cfg.task), "seeds": seeds, "multi": {}, "single": {}}
    for seed in seeds:
        multi_cfg = copy_config(cfg)
        multi_cfg.seed = seed
        multi = train(multi_cfg, run_dir=out / f"multi_seed{seed}", overrides=overrides)
        run = RunDir(Path(multi["run_dir"]))
        state = read_checkpoint_state(find_checkpoint(run, "last"))[1]
        evals = len({rec["step"] for rec in read_jsonl(run.metrics) if type(rec.get("step")) is int})
        record["multi"][seed] = {"run_dir": multi["run_dir"], "results": multi["results"]}
        for task in cfg.task:
            single_cfg = baseline_config(cfg, task, state["examples_seen"][task], evals, seed)
            key = cache_key(single_cfg)
            baseline = cached_run(baselines_root, key)
            reused = baseline is not None
            if baseline is None:
                baseline = RunDir(Path(train(single_cfg, run_dir=baselines_root / key)["run_dir"]))
            results = read_json(baseline.results)  # the checked reader: a cached run may be anyone's
            record["single"].setdefault(task, {})[seed] = {
                "run_dir": str(baseline),
                "reused": reused,
                "results": results,
            }
    report = summarise(cfg, record)
    write_report(out, report)
    return report


def summarise(cfg: MtlConfig, record: dict) -> dict:
    """Per task: single and multi main metric (mean, std over seeds), difference, verdict."""
    from scipy import stats

    rows = []
    for task in record["tasks"]:
        metric = main_metric(cfg, task)
        single = [record["single"][task][s]["results"][task][metric] for s in record["seeds"]]
        multi = [record["multi"][s]["results"][task][metric] for s in record["seeds"]]
        diff = statistics.mean(multi) - statistics.mean(single)
        row = {
            "task": task, "metric": metric, "seeds": len(single),
            "single_mean": statistics.mean(single), "single_std": statistics.stdev(single) if len(single) > 1 else None,
            "multi_mean": statistics.mean(multi), "multi_std": statistics.stdev(multi) if len(multi) > 1 else None,
            "difference": diff, "transfer": "positive" if diff > 0 else "negative" if diff < 0 else "none",
        }  # fmt: skip
        if len(single) > 1:
            # Welch's t-test: the two arms may differ in variance; identical samples give no evidence.
            same = single == multi or (statistics.pstdev(single) == 0 and statistics.pstdev(multi) == 0)
            p = 1.0 if same else float(stats.ttest_ind(multi, single, equal_var=False).pvalue)
            row["p_value"] = p if math.isfinite(p) else 1.0
            row["significant"] = row["p_value"] < ALPHA
        else:
            row["p_value"], row["significant"] = None, None
        rows.append(row)
    return {"rows": rows, "test": f"Welch's t-test over seeds, p < {ALPHA}", **record}


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def verdict(row: dict) -> str:
    if row["significant"] is None:
        return f"{row['transfer']} (one seed: no significance test)"
    return f"{row['transfer']}, {'significant' if row['significant'] else 'within seed noise'} (p={row['p_value']:.3f})"


def write_report(out: Path, report: dict) -> None:
    table = [
        {
            "task": r["task"], "metric": r["metric"], "single-task": _cell(r["single_mean"], r["single_std"]),
            "multi-task": _cell(r["multi_mean"], r["multi_std"]), "difference": f"{r['difference']:+.4f}",
            "transfer": verdict(r),
        }
        for r in report["rows"]
    ]  # fmt: skip
    seeds = ", ".join(map(str, report["seeds"]))
    header = (
        f"Transfer report: main test metric of each task trained alone vs together (seeds {seeds}).\n"
        f"Significance: {report['test']}. Single-task runs saw as many examples of their task as the\n"
        f"multi-task run did.\n\n"
    )
    # The Markdown table shows formatted cells; the CSV keeps every field at full precision.
    write_text(out / "transfer.md", header + rows_to_markdown(table))
    write_text(out / "transfer.csv", rows_to_csv(report["rows"]))
    write_json(out / "transfer.json", report)
    bar_chart(report, out / "transfer.png")
    print_transfer(table, out)


def bar_chart(report: dict, path: Path) -> Any:
    """transfer.png: per task the single- and multi-task means (bars, ± std) with every seed's value
    as a point over its bar; the y axis spans the data with a margin, not from 0, so that a
    difference of 0.01 at 0.9 shows. Returns the matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["rows"]
    x = range(len(rows))
    fig = Figure(figsize=(max(4, 1.6 * len(rows) + 1), 3.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no GUI backend, no global figure state
    ax = fig.subplots()
    shown: list[float] = []  # every value drawn, for the axis limits
    for offset, arm, color in ((-0.2, "single", "#9aa5b1"), (0.2, "multi", "#2f6db3")):
        means = [r[f"{arm}_mean"] for r in rows]
        errs = [r[f"{arm}_std"] or 0 for r in rows]
        ax.bar([i + offset for i in x], means, 0.4, yerr=errs, capsize=3, color=color, label=f"{arm}-task")
        shown += [m - e for m, e in zip(means, errs, strict=True)] + [m + e for m, e in zip(means, errs, strict=True)]
        points = [(i + offset, v) for i, r in enumerate(rows) for v in seed_values(report, arm, r["task"], r["metric"])]
        if points:
            ax.scatter([p for p, _ in points], [v for _, v in points], s=14, color="black", zorder=3,
                       label="one seed" if arm == "multi" else None)  # fmt: skip
            shown += [v for _, v in points]
    for i, r in enumerate(rows):
        mark = "*" if r["significant"] else ""
        top = max([r["single_mean"] + (r["single_std"] or 0), r["multi_mean"] + (r["multi_std"] or 0),
                   *seed_values(report, "single", r["task"], r["metric"]),
                   *seed_values(report, "multi", r["task"], r["metric"])])  # fmt: skip
        ax.annotate(f"{r['difference']:+.3f}{mark}", (i, top), ha="center", va="bottom", xytext=(0, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    finite = [v for v in shown if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        margin = max(hi - lo, 0.01 * max(abs(lo), abs(hi)), 1e-3) * 0.25
        ax.set_ylim(lo - margin, hi + 2 * margin)  # room above for the differences
    ax.set_xticks(list(x), [f"{r['task']}\n({r['metric']})" for r in rows])
    ax.set_ylabel("test metric (axis from the data)")
    ax.set_title("single- vs multi-task (* significant)")
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)  # below the axes: not over a bar
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))  # whole, or one line
    return fig


def seed_values(report: dict, arm: str, task: str, metric: str) -> list[float]:
    """Each seed's test value of `task` in the `single` or `multi` arm (the report's per-run results;
    the seeds are numbers in memory, strings once read back from transfer.json)."""
    runs = report[arm][task] if arm == "single" else report[arm]
    out = []
    for seed in report["seeds"]:
        run = runs.get(seed, runs.get(str(seed)))
        value = run["results"][task][metric] if run is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def print_transfer(table: list[dict], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"transfer: {out}")
    for col in table[0]:
        t.add_column(col, justify="left" if col in ("task", "metric", "transfer") else "right")
    for row in table:
        style = (
            "green"
            if row["transfer"].startswith("positive")
            else "red"
            if row["transfer"].startswith("negative")
            else None
        )
        t.add_row(*[str(v) for v in row.values()], style=style)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(t)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.strip("[]").split(",") if s.strip()]
    except ValueError:
        raise MtlError(f"seeds must be a list of integers, e.g. seeds=[1,2,3]; got seeds={text}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise MtlError(f"seeds must name at least one seed, each once; got seeds={text}")
    return seeds
