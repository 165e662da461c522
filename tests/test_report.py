"""`mtl report`: the sweep table, best marks, files, errors; and a real (tiny) sweep through the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from mtl_cli.errors import MtlError
from mtl_cli.report import build_report, flatten, parse_overrides, report_command, write_report
from tests.conftest import TINY_RUN

A, B = "a", "b"


def make_run(
    root: Path,
    name: str,
    temperature: float,
    results: dict | None,
    *,
    tasks: tuple[str, ...] = (A, B),
    seed: int = 42,
    mixing: str = "temperature",
    validation: dict | None = None,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    types = {A: "classification", B: "regression"}
    config = {
        "task": {t: {"type": types.get(t, "classification"), "data_dir": f"/data/{name}/{t}"} for t in tasks},
        "mixing": {"name": mixing, "temperature": temperature, "max_examples": None, "weights": {}},
        "trainer": {"max_steps": 2, "progress": False},
        "runs_root": f"/elsewhere/{name}",  # differs per run: noise, never a swept key
        "data_root": None,
        "seed": seed,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    overrides = [f"mixing={mixing}", f"mixing.temperature={temperature}", f"seed={seed}", "++mixing.weights.x=1"]
    (run / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    if results is not None:
        (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if validation is not None:
        lines = ["task,validation_accuracy,validation_main,test_accuracy"]
        lines += [f"{t},{v if t != 'average' else ''},{v if t == 'average' else ''},0.1" for t, v in validation.items()]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


def results(acc: float, pearson: float, avg: float) -> dict:
    # `mse` first for b: the main metric comes from the task type (pearson), not the order.
    return {
        A: {"accuracy": acc, "macro_f1": acc - 0.1},
        B: {"mse": 0.3, "pearson": pearson, "spearman": 0.2},
        "average": {"main": avg, "accuracy": acc},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Three finished runs (temperature 5, 1, 2) two levels down, and an unfinished one."""
    folder = tmp_path / "sweep"
    deep = folder / "2026-11-26" / "10-00-00"
    make_run(deep, "0_a+b", 5.0, results(0.70, 0.50, 0.60), validation={A: 0.9, B: 0.1, "average": 0.5})
    make_run(deep, "1_a+b", 1.0, results(0.80, 0.40, 0.60), validation={A: 0.7, B: 0.2, "average": 0.45})
    make_run(deep, "2_a+b", 2.0, results(0.75, 0.65, 0.70), validation={A: 0.8, B: 0.3, "average": 0.55})
    make_run(deep, "3_a+b", 10.0, None)
    return folder


def test_helpers() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {"a.b": 1, "a.c": [1, 2], "e": None}
    assert parse_overrides(["mixing=weights", "++mixing.weights.yelp=0.1", "+x=a=b", "~seed"]) == {
        "mixing": "weights",
        "mixing.weights.yelp": "0.1",
        "x": "a=b",
        "seed": None,
    }


def test_rows_swept_keys_and_best(sweep: Path) -> None:
    report = build_report(sweep)
    prefix = "2026-11-26/10-00-00/"
    assert report["swept"] == {"mixing.temperature": [1.0, 2.0, 5.0]}  # not runs_root, not the unfinished 10.0
    assert report["metrics"] == {A: "accuracy", B: "pearson", "average": "main"}
    assert report["rows"] == [
        {
            "mixing.temperature": 1.0,
            "a_accuracy": 0.80,
            "b_pearson": 0.40,
            "average_main": 0.60,
            "run": prefix + "1_a+b",
        },
        {
            "mixing.temperature": 2.0,
            "a_accuracy": 0.75,
            "b_pearson": 0.65,
            "average_main": 0.70,
            "run": prefix + "2_a+b",
        },
        {
            "mixing.temperature": 5.0,
            "a_accuracy": 0.70,
            "b_pearson": 0.50,
            "average_main": 0.60,
            "run": prefix + "0_a+b",
        },
    ]
    assert report["best"] == {
        A: {"metric": "accuracy", "value": 0.80, "runs": [prefix + "1_a+b"]},
        B: {"metric": "pearson", "value": 0.65, "runs": [prefix + "2_a+b"]},
        "average": {"metric": "main", "value": 0.70, "runs": [prefix + "2_a+b"]},
    }
    assert report["skipped"] == [{"run": prefix + "3_a+b", "reason": "no results.json (unfinished)"}]
    # Overrides (with the CLI's ++ stripped): common ones once, each run's own in `runs`.
    assert report["overrides"] == {"mixing": "temperature", "seed": "42", "mixing.weights.x": "1"}
    assert [r["overrides"]["mixing.temperature"] for r in report["runs"]] == ["1.0", "2.0", "5.0"]


def test_validation_split_reads_metrics_csv(sweep: Path) -> None:
    report = build_report(sweep, split="validation")
    assert [(r["mixing.temperature"], r["a_accuracy"], r["average_main"]) for r in report["rows"]] == [
        (1.0, 0.7, 0.45),
        (2.0, 0.8, 0.55),
        (5.0, 0.9, 0.5),
    ]
    assert report["metrics"][B] == "accuracy"  # no pearson in this metrics.csv: the first metric


def test_files_written_and_never_overwritten(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    report_command(str(sweep))
    out = capsys.readouterr().out
    assert "mixing.temperature" in out and "skipped 2026-11-26/10-00-00/3_a+b" in out
    names = ["report.md", "report.csv", "report.json", "report.png"]
    assert all((sweep / n).is_file() for n in names)
    assert (sweep / "report.png").read_bytes().startswith(b"\x89PNG")

    md = (sweep / "report.md").read_text()
    assert "| mixing.temperature | a_accuracy | b_pearson | average_main | run |" in md
    assert "| 1.0 | 0.8000* | 0.4000 | 0.6000 | 2026-11-26/10-00-00/1_a+b |" in md
    assert "| 2.0 | 0.7500 | 0.6500* | 0.7000* | 2026-11-26/10-00-00/2_a+b |" in md
    assert "Skipped 1: 2026-11-26/10-00-00/3_a+b (no results.json (unfinished))" in md

    rows = list(csv.DictReader(io.StringIO((sweep / "report.csv").read_text())))
    assert [(r["mixing.temperature"], r["a_accuracy"], r["best"]) for r in rows] == [
        ("1.0", "0.8", "a"),
        ("2.0", "0.75", "b average"),
        ("5.0", "0.7", ""),
    ]
    assert json.loads((sweep / "report.json").read_text()) == build_report(sweep)

    before = {n: (sweep / n).read_bytes() for n in names}
    second = write_report(sweep, build_report(sweep))
    assert [p.name for p in second] == ["report_2.md", "report_2.csv", "report_2.json", "report_2.png"]
    assert {n: (sweep / n).read_bytes() for n in names} == before
    # The reports themselves are not runs.
    assert len(build_report(sweep)["rows"]) == 3


def test_two_swept_keys_and_categorical_plot(tmp_path: Path) -> None:
    folder = tmp_path / "grid"
    for i, (mixing, seed) in enumerate([("uniform", 2), ("temperature", 1), ("uniform", 1), ("temperature", 2)]):
        make_run(folder, f"{i}_a+b", 1.0, results(0.5 + i / 10, 0.5, 0.5), mixing=mixing, seed=seed)
    report = build_report(folder)
    # Named on the command line in this order: mixing (name) first, then seed.
    assert report["swept"] == {"mixing.name": ["temperature", "uniform"], "seed": [1, 2]}
    assert [(r["mixing.name"], r["seed"], r["run"]) for r in report["rows"]] == [
        ("temperature", 1, "1_a+b"),
        ("temperature", 2, "3_a+b"),
        ("uniform", 1, "2_a+b"),
        ("uniform", 2, "0_a+b"),
    ]
    paths = write_report(folder, report)
    assert paths[-1].read_bytes().startswith(b"\x89PNG")


def test_single_run_has_no_swept_key(tmp_path: Path) -> None:
    run = make_run(tmp_path, "only", 1.0, results(0.5, 0.5, 0.5))
    report = build_report(run)  # the folder may be a run itself
    assert report["swept"] == {} and [r["run"] for r in report["rows"]] == ["only"]
    assert write_report(run, report)[-1].read_bytes().startswith(b"\x89PNG")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(MtlError, match="no folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlError, match=r"no finished runs under .*empty: it holds no run directory"):
        build_report(tmp_path / "empty")

    make_run(tmp_path / "unfinished", "0_a+b", 1.0, None)
    make_run(tmp_path / "unfinished", "1_a+b", 2.0, None)
    with pytest.raises(MtlError, match=r"runs without results.json are skipped \(2 of the 2 run directories"):
        build_report(tmp_path / "unfinished")

    make_run(tmp_path / "mixed", "0_a+b", 1.0, results(0.5, 0.5, 0.5))
    make_run(tmp_path / "mixed", "1_a+c", 1.0, {A: {"accuracy": 0.5}, "c": {"accuracy": 0.5}, "average": {"main": 0.5}}, tasks=(A, "c"))  # fmt: skip
    with pytest.raises(MtlError, match=r"different task sets \(a\+b in 0_a\+b; a\+c in 1_a\+c\)") as err:
        report_command(str(tmp_path / "mixed"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "mixed" / "report.md").exists()

    with pytest.raises(MtlError, match="split must be one of"):
        build_report(tmp_path / "mixed", split="train")


def test_real_sweep_through_the_cli(tmp_path: Path, mtl) -> None:
    # The sweep of an open-dict key: rewritten by mtl's command line, expanded by Hydra's launcher.
    sweep = ["mixing=weights", "mixing.weights.restaurants=0.1,0.5,0.9", "mixing.weights.electronics=1"]
    short = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=4"]
    proc = mtl("train", "-m", "task=demo/restaurants+demo/electronics", *TINY_RUN, *sweep, *short, cwd=tmp_path)
    assert proc.returncode == 0, f"the documented sweep of an open-dict key failed: {proc.stderr[-2000:]}"
    (folder,) = (tmp_path / "runs" / "multirun").glob("*/*")
    report_command(str(folder))
    report = json.loads((folder / "report.json").read_text())

    assert report["swept"] == {"mixing.weights.restaurants": [0.1, 0.5, 0.9]}
    assert [r["mixing.weights.restaurants"] for r in report["rows"]] == [0.1, 0.5, 0.9]
    assert len(report["rows"]) == 3 and report["skipped"] == []
    by_run = {r["run"]: Path(r["path"]) for r in report["runs"]}
    for row in report["rows"]:
        run = by_run[row["run"]]
        res = json.loads((run / "results.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert row["mixing.weights.restaurants"] == config["mixing"]["weights"]["restaurants"]
        assert row["restaurants_accuracy"] == res["restaurants"]["accuracy"]
        assert row["electronics_accuracy"] == res["electronics"]["accuracy"]
        assert row["average_main"] == res["average"]["main"]
    for task, best in report["best"].items():
        col = "average_main" if task == "average" else f"{task}_accuracy"
        assert best["value"] == max(r[col] for r in report["rows"])
        assert best["runs"] == [r["run"] for r in report["rows"] if r[col] == best["value"]]
    assert (folder / "report.png").read_bytes().startswith(b"\x89PNG")


def test_an_optuna_study_names_its_best_trial(tmp_path: Path) -> None:
    """hydra/sweeper=optuna: the trials are job folders like a basic sweep's; the study's best trial
    (optimization_results.yaml, chosen on the validation objective) is named with the run that trained it."""
    folder = tmp_path / "study"
    for i, temperature in enumerate([2.368863950364078, 5.395030966670228, 1.4322493718230251]):
        make_run(folder, f"{i}_a+b", temperature, results(0.5 + i / 10, 0.5, 0.5 + i / 10))
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
    assert "| 5.395 | 0.6000 |" in md  # a drawn float to 4 significant digits in the table
    assert "`mixing.temperature` = 1.432, 2.369, 5.395" in md
    rows = list(csv.DictReader(io.StringIO((folder / "report.csv").read_text())))
    assert [r["mixing.temperature"] for r in rows] == ["1.4322493718230251", "2.368863950364078", "5.395030966670228"]

    # A multi-objective study's file (a Pareto front, no best_params) or none: no study in the report.
    (folder / "optimization_results.yaml").write_text("name: optuna\nsolutions: []\n", encoding="utf-8")
    assert "study" not in build_report(folder)
