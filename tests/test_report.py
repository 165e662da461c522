"""`mtl report`: configurations with seeds averaged, the best on validation, Welch's p, the files,
the console, skipped run folders, errors; a transfer folder; and a real (tiny) sweep through the CLI."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from mtl_cli.errors import MtlError
from mtl_cli.report import build_report, flatten, parse_overrides, print_report
from mtl_cli.report_files import report_command, write_report
from tests.conftest import TINY_RUN

A, B = "a", "b"
TYPES = {A: "classification", B: "regression"}  # b's main metric is pearson, not the first (mse)
METRIC = {"classification": "accuracy", "regression": "pearson"}


def results_json(scores: dict[str, float]) -> dict:
    """results.json as mtl writes it, each task's main metric from `scores` ("average" optional)."""
    out: dict = {}
    for task, value in scores.items():
        if task == "average":
            continue
        if TYPES.get(task, "classification") == "regression":
            out[task] = {"mse": 0.3, "pearson": value, "spearman": 0.2}
        else:
            out[task] = {"accuracy": value, "macro_f1": value - 0.1}
    out["average"] = {"main": scores.get("average", statistics.mean(v for t, v in scores.items() if t != "average"))}
    return out


def metrics_csv(validation: dict[str, float], test: dict[str, float]) -> str:
    """metrics.csv as mtl writes it: a row per task, then the average with `main`."""
    lines = ["task,train_examples,validation_accuracy,validation_pearson,validation_main,test_accuracy,test_main"]
    for task, value in validation.items():
        if task == "average":
            continue
        regression = TYPES.get(task, "classification") == "regression"
        acc, pearson = ("", value) if regression else (value, "")
        lines.append(f"{task},240,{acc},{pearson},,{test.get(task, '')},")
    avg = validation.get("average", statistics.mean(v for t, v in validation.items() if t != "average"))
    lines.append(f"average,,,,{avg},,{test.get('average', '')}")
    return "\n".join(lines) + "\n"


def make_run(
    root: Path,
    name: str,
    test: dict[str, float] | None,
    validation: dict[str, float] | None = None,
    *,
    temperature: float = 1.0,
    seed: int = 42,
    mixing: str = "temperature",
    curves: list[dict] | None = None,
) -> Path:
    """A run folder the way mtl writes one; `test` None: unfinished. `validation` defaults to `test`."""
    tasks = [t for t in (test or validation or {A: 0, B: 0}) if t != "average"]
    run = root / name
    run.mkdir(parents=True)
    config = {
        "task": {t: {"type": TYPES.get(t, "classification"), "data_dir": f"/data/{name}/{t}"} for t in tasks},
        "mixing": {"name": mixing, "temperature": temperature, "max_examples": None, "weights": {}},
        "trainer": {"max_steps": 2, "progress": False},
        "runs_root": f"/elsewhere/{name}",  # differs per run: noise, never a swept key
        "data_root": None,
        "seed": seed,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    overrides = [f"mixing={mixing}", f"mixing.temperature={temperature}", f"seed={seed}", "++mixing.weights.x=1"]
    (run / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    if test is not None:
        (run / "results.json").write_text(json.dumps(results_json(test)), encoding="utf-8")
        (run / "metrics.csv").write_text(metrics_csv(validation or test, test), encoding="utf-8")
    if curves is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curves), encoding="utf-8")
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """temperature 5, 1, 2 (two seeds each, two levels down) and an unfinished run. Validation and
    test disagree: on validation 2.0 is best, on test 1.0 would be."""
    folder = tmp_path / "sweep"
    deep = folder / "2026-11-26" / "10-00-00"
    runs = [  # (temperature, seed, validation a, validation b, test a, test b)
        (5.0, 1, 0.70, 0.50, 0.70, 0.50),
        (5.0, 2, 0.72, 0.52, 0.70, 0.52),
        (1.0, 1, 0.80, 0.40, 0.90, 0.80),
        (1.0, 2, 0.78, 0.44, 0.92, 0.82),
        (2.0, 1, 0.75, 0.65, 0.75, 0.65),
        (2.0, 2, 0.77, 0.61, 0.74, 0.61),
    ]
    for i, (temperature, seed, va, vb, ta, tb) in enumerate(runs):
        make_run(deep, f"{i}_a+b", {A: ta, B: tb}, {A: va, B: vb}, temperature=temperature, seed=seed)
    make_run(deep, "6_a+b", None, temperature=10.0)
    return folder


def test_helpers() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {"a.b": 1, "a.c": [1, 2], "e": None}
    assert parse_overrides(["mixing=weights", "++mixing.weights.yelp=0.1", "+x=a=b", "~seed"]) == {
        "mixing": "weights",
        "mixing.weights.yelp": "0.1",
        "x": "a=b",
        "seed": None,
    }


def test_seeds_are_aggregated_per_configuration(sweep: Path) -> None:
    report = build_report(sweep)
    prefix = "2026-11-26/10-00-00/"
    assert report["swept"] == {
        "mixing.temperature": [1.0, 2.0, 5.0]
    }  # not seed, not runs_root, not the unfinished 10.0
    assert report["seeds"] == [1, 2]
    assert report["metrics"] == {A: "accuracy", B: "pearson", "average": "main"}
    assert [(r["config"], r["n"], r["seeds"]) for r in report["rows"]] == [
        ({"mixing.temperature": 1.0}, 2, [1, 2]),
        ({"mixing.temperature": 2.0}, 2, [1, 2]),
        ({"mixing.temperature": 5.0}, 2, [1, 2]),
    ]
    assert report["rows"][0]["runs"] == [prefix + "2_a+b", prefix + "3_a+b"]
    # Hand values: temperature 1.0, validation a = 0.80, 0.78; test b = 0.80, 0.82.
    cell = report["rows"][0]["validation"][A]
    assert cell["values"] == [0.80, 0.78] and cell["n"] == 2
    assert cell["mean"] == pytest.approx(0.79) and cell["std"] == pytest.approx(0.0141421356, rel=1e-6)
    test_b = report["rows"][0]["test"][B]
    assert test_b["mean"] == pytest.approx(0.81) and test_b["std"] == pytest.approx(statistics.stdev([0.80, 0.82]))
    average = report["rows"][1]["validation"]["average"]  # each run's average of its mains
    assert average["values"] == pytest.approx([0.70, 0.69]) and average["mean"] == pytest.approx(0.695)
    assert report["skipped"] == [{"run": prefix + "6_a+b", "reason": "no results.json (unfinished)"}]
    # Overrides (with the CLI's ++ stripped): common ones once, each run's own in `runs`.
    assert report["overrides"] == {"mixing": "temperature", "mixing.weights.x": "1"}
    assert [(r["run"], r["seed"], r["row"]) for r in report["runs"]][:2] == [
        (prefix + "2_a+b", 1, 0),
        (prefix + "3_a+b", 2, 0),
    ]
    assert report["runs"][0]["validation"] == {A: 0.80, B: 0.40, "average": pytest.approx(0.60)}


def test_the_best_is_chosen_on_validation_even_when_test_disagrees(sweep: Path) -> None:
    report = build_report(sweep)
    means = {r["config"]["mixing.temperature"]: r["validation"]["average"]["mean"] for r in report["rows"]}
    tests = {r["config"]["mixing.temperature"]: r["test"]["average"]["mean"] for r in report["rows"]}
    assert max(means, key=means.__getitem__) == 2.0 and max(tests, key=tests.__getitem__) == 1.0
    assert report["best"] == {
        "split": "validation",
        "metric": "main",
        "value": pytest.approx(means[2.0]),
        "row": 1,
        "config": {"mixing.temperature": 2.0},
        "runs": ["2026-11-26/10-00-00/4_a+b", "2026-11-26/10-00-00/5_a+b"],
    }
    assert [r["best"] for r in report["rows"]] == [False, True, False]
    assert report["rows"][0]["difference"] == pytest.approx(means[1.0] - means[2.0])
    assert report["selection"]["split"] == "validation"


def test_p_values_are_welch_over_seeds(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    best = [0.80, 0.82, 0.85]
    other = [0.70, 0.78, 0.71]
    for seed, (x, y) in enumerate(zip(best, other, strict=True)):
        make_run(folder, f"best_{seed}", {A: x, B: x}, temperature=1.0, seed=seed)
        make_run(folder, f"other_{seed}", {A: y, B: y}, temperature=2.0, seed=seed)
    make_run(folder, "alone", {A: 0.5, B: 0.5}, temperature=3.0, seed=0)  # n=1: no test
    for seed in range(3):  # the same per-seed values as the best: no evidence, p = 1
        make_run(folder, f"same_{seed}", {A: best[seed], B: best[seed]}, temperature=4.0, seed=seed)
    report = build_report(folder)
    rows = {r["config"]["mixing.temperature"]: r for r in report["rows"]}
    assert rows[1.0]["best"] and rows[1.0]["p_value"] is None
    expected = stats.ttest_ind(other, best, equal_var=False).pvalue
    assert rows[2.0]["validation"]["average"]["values"] == pytest.approx(other)
    assert rows[2.0]["p_value"] == pytest.approx(expected) and rows[2.0]["significant"] is bool(expected < 0.05)
    assert rows[3.0]["n"] == 1 and rows[3.0]["p_value"] is None and rows[3.0]["significant"] is None
    assert rows[4.0]["p_value"] == 1.0 and rows[4.0]["difference"] == 0.0 and not rows[4.0]["best"]

    md = (write_report(folder, report)[0]).read_text()
    assert "Welch's t-test over seeds (scipy.stats.ttest_ind, equal_var=False)" in md
    assert "chosen on the validation average main metric" in md and "never used to choose" in md
    assert f"| 2.0 | 3 | {statistics.mean(other):.4f} ± {statistics.stdev(other):.4f} |" in md
    assert f"| {statistics.mean(other) - statistics.mean(best):+.4f} | {expected:.3f}" in md
    assert "| 3.0 | 1 | 0.5000 | 0.5000 | 0.5000 | -0.3233 | n=1: no test |" in md
    assert "| 1.0 | 3 |" in md and "| best |  |" in md


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe's console width (120), whatever COLUMNS the test runner sets (pytest-xdist's workers: 80)."""
    monkeypatch.delenv("COLUMNS", raising=False)


def test_files_written_and_never_overwritten(sweep: Path, capsys: pytest.CaptureFixture, wide_console: None) -> None:
    report_command(str(sweep))
    out = capsys.readouterr().out
    assert "mixing.temperature=2.0 n=2 best" in out and "skipped 2026-11-26/10-00-00/6_a+b" in out
    names = ["report.md", "report.csv", "report.json", "report.png", "report.html"]
    assert all((sweep / n).is_file() for n in names)
    assert (sweep / "report.png").read_bytes().startswith(b"\x89PNG")
    assert (sweep / "report.html").read_text().startswith("<!DOCTYPE html>")

    md = (sweep / "report.md").read_text()
    assert "## Validation split (chooses the best configuration)" in md
    assert "| mixing.temperature | n | a accuracy | b pearson | average main | Δ best | p (Welch) | runs |" in md
    assert "| 2.0 | 2 | 0.7600 ± 0.0141 | 0.6300 ± 0.0283 | 0.6950 ± 0.0071 | best |  |" in md
    assert "## Test split (reported beside it, never used to choose)" in md
    assert "| 1.0 | 2 | 0.9100 ± 0.0141 | 0.8100 ± 0.0141 | 0.8600 ± 0.0141 |  |" in md
    assert "Skipped 1: 2026-11-26/10-00-00/6_a+b (no results.json (unfinished))" in md

    rows = list(csv.DictReader(io.StringIO((sweep / "report.csv").read_text())))
    assert [(r["mixing.temperature"], r["n"], r["seeds"], r["best"]) for r in rows] == [
        ("1.0", "2", "1 2", "False"),
        ("2.0", "2", "1 2", "True"),
        ("5.0", "2", "1 2", "False"),
    ]
    assert float(rows[0]["validation_a_accuracy_mean"]) == pytest.approx(0.79)
    assert float(rows[0]["test_b_pearson_std"]) == pytest.approx(statistics.stdev([0.80, 0.82]))
    assert json.loads((sweep / "report.json").read_text()) == json.loads(json.dumps(build_report(sweep)))

    before = {n: (sweep / n).read_bytes() for n in names}
    second = write_report(sweep, build_report(sweep))
    assert [p.name for p in second] == ["report_2.md", "report_2.csv", "report_2.json", "report_2.png", "report_2.html"]
    assert {n: (sweep / n).read_bytes() for n in names} == before
    # Any one file of a set holds its number: with only report_3.html there, the next report is report_4.
    (sweep / "report_3.html").write_text("someone's")
    assert write_report(sweep, build_report(sweep))[0].name == "report_4.md"
    # The reports themselves are not runs.
    assert len(build_report(sweep)["runs"]) == 6


def test_split_chooses_only_what_the_console_shows_first(
    sweep: Path, capsys: pytest.CaptureFixture, wide_console: None
) -> None:
    first = build_report(sweep, split="test")
    second = build_report(sweep, split="validation")
    assert {k: v for k, v in first.items() if k != "split"} == {k: v for k, v in second.items() if k != "split"}
    print_report(first)
    header = next(line for line in capsys.readouterr().out.splitlines() if "configuration / task" in line)
    assert header.index("test") < header.index("validation")


def test_two_swept_keys_and_categorical_plot(tmp_path: Path) -> None:
    folder = tmp_path / "grid"
    runs = [("uniform", 2.0, 1), ("temperature", 1.0, 1), ("uniform", 1.0, 1), ("temperature", 2.0, 1),
            ("uniform", 1.0, 2), ("temperature", 1.0, 2)]  # fmt: skip
    for i, (mixing, temperature, seed) in enumerate(runs):
        make_run(folder, f"{i}_a+b", {A: 0.5 + i / 10, B: 0.5}, mixing=mixing, temperature=temperature, seed=seed)
    report = build_report(folder)
    # Named on the command line in this order: mixing (name) first, then the temperature; seed averaged.
    assert report["swept"] == {"mixing.name": ["temperature", "uniform"], "mixing.temperature": [1.0, 2.0]}
    assert [(r["label"], r["n"]) for r in report["rows"]] == [
        ("mixing.name=temperature mixing.temperature=1.0", 2),
        ("mixing.name=temperature mixing.temperature=2.0", 1),
        ("mixing.name=uniform mixing.temperature=1.0", 2),
        ("mixing.name=uniform mixing.temperature=2.0", 1),
    ]
    paths = write_report(folder, report)
    assert paths[3].read_bytes().startswith(b"\x89PNG")
    page = paths[4].read_text()
    assert page.count("<svg") == 2 * 3  # a panel per task and the average, per key; no metrics.jsonl: no curves
    assert "Combinations run" in page and "mixing.name \\ mixing.temperature" in page


def test_seven_tasks_in_a_grid_and_a_console_that_folds(tmp_path: Path, capsys, monkeypatch) -> None:
    """Seven tasks read on a page, in report.png, and in an 80-column console, a long name whole."""
    long_name = "sentiment_of_electronics_reviews_in_german_and_french"
    tasks = ["t1", "t2", "t3", "t4", "t5", "t6", long_name]
    folder = tmp_path / "seven"
    for i, (temperature, seed) in enumerate([(1.0, 1), (1.0, 2), (2.0, 1), (2.0, 2)]):
        scores = {t: 0.5 + j / 100 + i / 50 for j, t in enumerate(tasks)}
        make_run(folder, f"{i}_run", scores, temperature=temperature, seed=seed)
    report = build_report(folder)
    monkeypatch.setenv("COLUMNS", "80")
    print_report(report)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines and max(len(line) for line in lines) <= 80 and "…" not in out
    first_column = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert f"{long_name}(accuracy)" in first_column.replace(" ", "")
    assert all(f"{t} (accuracy)" in out for t in tasks[:-1])
    assert "0.560 ± 0.014" in out  # t6 at temperature 1.0: 0.55 and 0.57 over the two seeds, whole
    paths = write_report(folder, report)
    assert paths[3].read_bytes().startswith(b"\x89PNG")
    assert "--cols:4" in paths[4].read_text()  # 7 tasks and the average: 4 columns, two rows


def test_single_run_has_no_swept_key(tmp_path: Path) -> None:
    run = make_run(tmp_path, "only", {A: 0.5, B: 0.5})
    report = build_report(run)  # the folder may be a run itself
    assert report["swept"] == {} and [r["runs"] for r in report["rows"]] == [["only"]]
    assert report["rows"][0]["label"] == "all runs" and report["rows"][0]["best"]
    assert write_report(run, report)[3].read_bytes().startswith(b"\x89PNG")


def test_malformed_run_folders_are_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    records = [
        {"step": 2, "split": "validation", "task": A, "accuracy": 0.5, "train_loss": 0.7},
        {"step": 4, "split": "validation", "task": A, "accuracy": 0.6, "train_loss": 0.6, "forgetting": True},
        {"step": 4, "split": "validation", "task": "average", "main": 0.55},
    ]
    make_run(folder, "good_1", {A: 0.6, B: 0.5}, seed=1, curves=records)
    make_run(folder, "good_2", {A: 0.7, B: 0.5}, seed=2)  # no metrics.jsonl: no curves, still a run
    (make_run(folder, "bad_jsonl", {A: 0.7, B: 0.5}, seed=3) / "metrics.jsonl").write_bytes(b"\xff\xfe not utf-8")
    (make_run(folder, "config_a_list", {A: 0.1, B: 0.1}) / "config.yaml").write_text("- 1\n- 2\n")
    dated = make_run(folder, "config_a_date", {A: 0.1, B: 0.1})
    (dated / "config.yaml").write_text((dated / "config.yaml").read_text().replace("seed: 42", "seed: 2020-01-01"))
    (make_run(folder, "results_a_list", {A: 0.1, B: 0.1}) / "results.json").write_text("[1, 2]")
    (make_run(folder, "results_strings", {A: 0.1, B: 0.1}) / "results.json").write_text(
        '{"a": {"accuracy": "high"}, "average": {}}'
    )
    (make_run(folder, "no_csv", {A: 0.1, B: 0.1}) / "metrics.csv").unlink()
    csv_dir = make_run(folder, "csv_a_folder", {A: 0.1, B: 0.1})
    (csv_dir / "metrics.csv").unlink()
    (csv_dir / "metrics.csv").mkdir()
    (make_run(folder, "csv_empty", {A: 0.1, B: 0.1}) / "metrics.csv").write_text("task,validation_accuracy\n")
    nan = make_run(folder, "nan", {A: 0.1, B: 0.1}, seed=4)  # NaN is valid JSON here: no figure, but a run
    (nan / "results.json").write_text('{"a": {"accuracy": NaN}, "b": {"pearson": 0.5}, "average": {"main": NaN}}')

    report = build_report(folder)
    assert {s["run"]: s["reason"] for s in report["skipped"]} == {
        "config_a_list": "config.yaml is not an mtl run config",
        "config_a_date": "config.yaml holds values that are not plain data (a date?)",
        "results_a_list": "unreadable results.json (test split)",
        "results_strings": "unreadable results.json (test split)",
        "no_csv": "metrics.csv does not exist (validation split)",
        "csv_a_folder": "metrics.csv is a directory, not a plain file (validation split)",
        "csv_empty": "metrics.csv holds no rows (validation split)",
    }
    (row,) = report["rows"]
    assert row["runs"] == ["good_1", "good_2", "bad_jsonl", "nan"] and row["n"] == 4
    assert row["test"][A]["values"] == [0.6, 0.7, 0.7, None] and row["test"][A]["n"] == 3
    page = write_report(folder, report)[4].read_text()
    assert "no curves for bad_jsonl: metrics.jsonl is not UTF-8 text" in page
    assert "no curves for good_2: metrics.jsonl" not in page  # no file: nothing to draw, nothing wrong
    assert "csv_a_folder: metrics.csv is a directory" in page


def test_run_strings_are_escaped_in_the_page(tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    evil = "<img src=x onerror=alert(1)>"
    for i, mixing in enumerate(["<script>alert(2)</script>", "$\\frac{1}{0}$ & co"]):
        make_run(folder, f"{i}_<b>run</b>", {evil: 0.5 + i / 10, B: 0.5}, mixing=mixing)
    page = write_report(folder, build_report(folder))[4].read_text()
    assert evil not in page and "<script>alert" not in page and "<b>run" not in page
    assert html_escaped(evil) in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own sorting script


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_transfer(folder: Path, seeds=(1, 2)) -> dict:
    single = {A: [0.60, 0.64], B: [0.40, 0.42]}
    multi = {A: [0.70, 0.72], B: [0.38, 0.44]}
    rows = []
    for task in (A, B):
        metric = METRIC[TYPES[task]]
        s, m = single[task][: len(seeds)], multi[task][: len(seeds)]
        p = float(stats.ttest_ind(m, s, equal_var=False).pvalue) if len(seeds) > 1 else None
        rows.append({"task": task, "metric": metric, "seeds": len(seeds), "single_mean": statistics.mean(s),
                     "single_std": statistics.stdev(s) if len(s) > 1 else None, "multi_mean": statistics.mean(m),
                     "multi_std": statistics.stdev(m) if len(m) > 1 else None,
                     "difference": statistics.mean(m) - statistics.mean(s), "transfer": "positive",
                     "p_value": p, "significant": None if p is None else p < 0.05})  # fmt: skip
    data = {
        "rows": rows, "test": "Welch's t-test over seeds, p < 0.05", "tasks": [A, B], "seeds": list(seeds),
        "multi": {str(s): {"run_dir": "x", "results": {t: {METRIC[TYPES[t]]: multi[t][i]} for t in (A, B)}} for i, s in enumerate(seeds)},
        "single": {t: {str(s): {"run_dir": "y", "reused": False, "results": {t: {METRIC[TYPES[t]]: single[t][i]}}} for i, s in enumerate(seeds)} for t in (A, B)},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transfer.json").write_text(json.dumps(data), encoding="utf-8")
    return data


def test_a_transfer_folder_gets_its_table_and_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "transfer" / "10-00-00_a+b"
    write_transfer(folder)
    for seed, (a, b) in zip((1, 2), [(0.70, 0.38), (0.72, 0.44)], strict=True):
        make_run(folder, f"multi_seed{seed}", {A: a, B: b}, seed=seed)
    report_command(str(folder))
    out = capsys.readouterr().out
    assert "transfer: single- vs multi-task" in out and "positive" in out
    report = json.loads((folder / "report.json").read_text())
    assert [(r["label"], r["n"]) for r in report["rows"]] == [("all runs", 2)]
    transfer = report["transfer"]
    assert transfer["seeds"] == [1, 2] and [r["task"] for r in transfer["rows"]] == [A, B]
    assert transfer["per_seed"] == {A: {"multi": [0.70, 0.72], "single": [0.60, 0.64]},
                                    B: {"multi": [0.38, 0.44], "single": [0.40, 0.42]}}  # fmt: skip
    md = (folder / "report.md").read_text()
    assert "## Transfer (" in md and "| a | accuracy | 0.6200 ± 0.0283 | 0.7100 ± 0.0141 | +0.0900 |" in md
    page = (folder / "report.html").read_text()
    assert 'id="transfer"' in page and "Transfer: single- vs multi-task" in page
    assert page.count("<svg") == 3 + 2  # a, b and the average (nothing swept but the seed); transfer: a, b


def test_a_transfer_folder_without_runs_and_a_broken_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "study"
    write_transfer(folder, seeds=(1,))
    report = build_report(folder)
    assert report["rows"] == [] and report["runs"] == [] and report["best"] is None
    assert report["tasks"] == [A, B] and report["transfer"]["rows"][0]["p_value"] is None
    paths = write_report(folder, report)
    assert "one seed: no significance test" in paths[0].read_text()
    assert paths[3].read_bytes().startswith(b"\x89PNG") and "Transfer: single- vs multi-task" in paths[4].read_text()

    (folder / "transfer.json").write_text('{"rows": [{"task": "a"}]}')
    with pytest.raises(
        MtlError,
        match=r"no finished runs under .*study: it holds no run .*; its transfer.json has no readable rows; pass",
    ):
        for path in paths:
            path.unlink()  # a report is no run, but start clean
        build_report(folder)
    make_run(folder, "run", {A: 0.5, B: 0.5})
    assert build_report(folder)["skipped"] == [{"run": "transfer.json", "reason": "has no readable rows"}]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(MtlError, match="no folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlError, match=r"no finished runs under .*empty: it holds no run directory"):
        build_report(tmp_path / "empty")

    make_run(tmp_path / "unfinished", "0_a+b", None, temperature=1.0)
    make_run(tmp_path / "unfinished", "1_a+b", None, temperature=2.0)
    with pytest.raises(MtlError, match=r"runs without results.json are skipped \(2 of the 2 run directories"):
        build_report(tmp_path / "unfinished")

    make_run(tmp_path / "mixed", "0_a+b", {A: 0.5, B: 0.5})
    make_run(tmp_path / "mixed", "1_a+c", {A: 0.5, "c": 0.5})
    with pytest.raises(MtlError, match=r"different task sets \(a\+b in 0_a\+b; a\+c in 1_a\+c\)") as err:
        report_command(str(tmp_path / "mixed"))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "mixed").glob("report*"))

    with pytest.raises(MtlError, match="split must be one of validation, test"):
        build_report(tmp_path / "mixed", split="train")


def test_the_cli_usage_and_a_bad_split(mtl, tmp_path: Path) -> None:
    proc = mtl("report", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "split=validation|test" in proc.stdout and ".html" in proc.stdout
    make_run(tmp_path / "one", "run", {A: 0.5, B: 0.5})
    proc = mtl("report", str(tmp_path / "one"), "split=train", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "split must be one of validation, test" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_real_sweep_through_the_cli(tmp_path: Path, mtl) -> None:
    # The sweep of an open-dict key: rewritten by mtl's command line, expanded by Hydra's launcher.
    sweep = ["mixing=weights", "mixing.weights.restaurants=0.1,0.5,0.9", "mixing.weights.electronics=1"]
    short = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=4"]
    proc = mtl("train", "-m", "task=demo/restaurants+demo/electronics", *TINY_RUN, *sweep, *short, cwd=tmp_path)
    assert proc.returncode == 0, f"the documented sweep of an open-dict key failed: {proc.stderr[-2000:]}"
    (folder,) = (tmp_path / "runs" / "multirun").glob("*/*")
    proc = mtl("report", str(folder), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((folder / "report.json").read_text())

    assert report["swept"] == {"mixing.weights.restaurants": [0.1, 0.5, 0.9]}
    assert [r["config"]["mixing.weights.restaurants"] for r in report["rows"]] == [0.1, 0.5, 0.9]
    assert [r["n"] for r in report["rows"]] == [1, 1, 1] and report["skipped"] == []
    for run in report["runs"]:
        path, row = Path(run["path"]), report["rows"][run["row"]]
        res = json.loads((path / "results.json").read_text())
        config = yaml.safe_load((path / "config.yaml").read_text())
        assert row["config"]["mixing.weights.restaurants"] == config["mixing"]["weights"]["restaurants"]
        assert row["test"]["restaurants"]["values"] == [res["restaurants"]["accuracy"]]
        assert row["test"]["average"]["mean"] == res["average"]["main"]
        validation = list(csv.DictReader(io.StringIO((path / "metrics.csv").read_text())))
        assert row["validation"]["average"]["values"] == [float(validation[-1]["validation_main"])]
    best = max(report["rows"], key=lambda r: r["validation"]["average"]["mean"])
    assert report["best"]["config"] == best["config"] and best["best"]
    assert (folder / "report.png").read_bytes().startswith(b"\x89PNG")
    assert (folder / "report.html").read_text().count("<svg") >= 3


def test_an_optuna_study_names_its_best_trial(tmp_path: Path) -> None:
    """hydra/sweeper=optuna: the trials are job folders like a basic sweep's; the study's best trial
    (optimization_results.yaml, chosen on the validation objective) is named with the run that trained it."""
    folder = tmp_path / "study"
    for i, temperature in enumerate([2.368863950364078, 5.395030966670228, 1.4322493718230251]):
        make_run(folder, f"{i}_a+b", {A: 0.5 + i / 10, B: 0.5 + i / 10}, temperature=temperature)
    (folder / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  mixing.temperature: 5.395030966670228\nbest_value: 0.61\n", encoding="utf-8"
    )
    report = build_report(folder)
    assert report["study"] == {
        "file": str((folder / "optimization_results.yaml").resolve()),
        "best_value": 0.61,
        "best_params": {"mixing.temperature": 5.395030966670228},
        "runs": ["1_a+b"],
    }
    write_report(folder, report)
    md = (folder / "report.md").read_text()
    assert "Optuna's best trial (validation objective 0.6100): mixing.temperature=5.395: 1_a+b (" in md
    assert "| 5.395 | 1 | 0.6000 |" in md  # a drawn float to 4 significant digits in the table
    assert "`mixing.temperature` = 1.432, 2.369, 5.395" in md
    rows = list(csv.DictReader(io.StringIO((folder / "report.csv").read_text())))
    assert [r["mixing.temperature"] for r in rows] == ["1.4322493718230251", "2.368863950364078", "5.395030966670228"]

    # A multi-objective study's file (a Pareto front, no best_params) or none: no study in the report.
    (folder / "optimization_results.yaml").write_text("name: optuna\nsolutions: []\n", encoding="utf-8")
    assert "study" not in build_report(folder)
