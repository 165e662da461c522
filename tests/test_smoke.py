"""Tiny CPU smoke runs: `mtl train experiment=smoke` through the real CLI, exactly as a user types
it; the run directory's files, its tables, `mtl eval`, determinism, sweeps (those through
`mtl_cli.cli.main` in this process)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from mtl_cli.compose import compose_config
from mtl_cli.validation import to_typed
from tests.conftest import TINY_RUN, run_dirs, run_mtl, tiny_encoder, tiny_run

CHECKPOINT = {
    "model.safetensors", "encoder/config.json", "labels.json", "trainer_state.json", "config.yaml", "manifest.json",
}  # fmt: skip
RUN_FILES = {
    "config.yaml", "overrides.yaml", "train.log", "data_check.json", "parameters.json",
    "metrics.jsonl", "metrics.md", "metrics.csv", "results.json", "curves.png", "timing.json",
    "train_metrics.jsonl", "tensorboard/events.out.tfevents",
}  # fmt: skip
TASKS = ["restaurants", "electronics"]


def file_set(run: Path) -> set[str]:
    # The tokenizer's file names depend on the transformers version, an event file's name holds the
    # time, host and process id; the rest is exact.
    names = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "/tokenizer/" not in str(p)}
    return {re.sub(r"(events\.out\.tfevents)\..*", r"\1", n) for n in names}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_mtl("train", "experiment=smoke", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(cwd / "runs")
    return run


def test_run_directory_holds_exactly_the_expected_files(smoke_run: Path) -> None:
    # 8 steps, evaluated at 4 and 8: `last` is step 8, the previous one is kept (keep_checkpoints=2).
    kept = ("best", "last", "step-000004")
    expected = RUN_FILES | {f"checkpoints/{c}/{f}" for c in kept for f in CHECKPOINT}
    expected |= {"checkpoints/last/optimizer.pt", "checkpoints/step-000004/optimizer.pt"}
    assert file_set(smoke_run) == expected
    for which in kept:
        assert (smoke_run / "checkpoints" / which / "tokenizer" / "tokenizer_config.json").is_file()
    assert smoke_run.parent.parent.name == "runs" and smoke_run.name.endswith("_restaurants+electronics")


def test_metrics_files_agree(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    assert set(results) == {*TASKS, "average"}
    for task in TASKS:
        assert set(results[task]) == {"accuracy", "macro_f1"}
        assert 0.0 <= results[task]["accuracy"] <= 1.0
    mean = sum(results[t]["accuracy"] for t in TASKS) / 2
    assert results["average"]["accuracy"] == pytest.approx(mean)

    rows = list(csv.DictReader((smoke_run / "metrics.csv").open()))
    assert [r["task"] for r in rows] == [*TASKS, "average"]
    for row in rows:
        assert float(row["test_accuracy"]) == pytest.approx(results[row["task"]]["accuracy"])
    assert [r["train_examples"] for r in rows[:2]] == ["240", "240"]
    # Every example sampled belongs to some step: 8 steps of batch 8.
    assert sum(int(r["examples_seen"]) for r in rows[:2]) == 64

    md = (smoke_run / "metrics.md").read_text()
    for task in [*TASKS, "average"]:
        assert f"| {task} |" in md
    assert f"{results['restaurants']['accuracy']:.4f}" in md

    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"]) for r in records] == [(s, t) for s in (4, 8) for t in [*TASKS, "average"]]
    assert all(r["split"] == "validation" for r in records)


def test_saved_config_is_resolved_and_reloads(smoke_run: Path) -> None:
    saved = OmegaConf.load(smoke_run / "config.yaml")
    assert isinstance(saved, DictConfig)
    cfg = to_typed(saved)
    assert cfg.trainer.max_steps == 8 and cfg.encoder.random_init
    data_dir = cfg.task["restaurants"].data_dir
    assert data_dir is not None and Path(data_dir).is_absolute()
    assert OmegaConf.load(smoke_run / "overrides.yaml") == ["experiment=smoke"]
    assert "eval step 8" in (smoke_run / "train.log").read_text()


def test_eval_reproduces_the_training_results(smoke_run: Path, tmp_path: Path, mtl) -> None:
    proc = mtl("eval", str(smoke_run), cwd=tmp_path)  # from another directory
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((smoke_run / "eval" / "best_test.json").read_text())
    trained = json.loads((smoke_run / "results.json").read_text())
    assert evaluated.keys() == trained.keys()
    for task in trained:
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-9)
    assert "restaurants" in proc.stdout and "average" in proc.stdout


def test_eval_of_a_split_subset_and_the_last_checkpoint(smoke_run: Path, tmp_path: Path, mtl) -> None:
    proc = mtl("eval", str(smoke_run), "split=validation", "checkpoint=last", "tasks=electronics", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((smoke_run / "eval" / "last_validation.json").read_text())
    assert set(out) == {"electronics", "average"}
    last = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()][-3:]
    logged = next(r for r in last if r["task"] == "electronics")
    assert out["electronics"]["accuracy"] == pytest.approx(logged["accuracy"])
    # A second eval writes next to the first instead of overwriting it.
    assert mtl("eval", str(smoke_run), "split=validation", "checkpoint=last", cwd=tmp_path).returncode == 0
    assert (smoke_run / "eval" / "last_validation_2.json").is_file()


def test_eval_latest_finds_the_newest_run(smoke_run: Path, mtl) -> None:
    proc = mtl("eval", "latest", cwd=smoke_run.parents[2])
    assert proc.returncode == 0, proc.stderr
    assert str(smoke_run.name) in proc.stdout.replace("\n", "")


def test_training_is_deterministic_on_cpu(tmp_path: Path) -> None:
    first = tiny_run(tmp_path, "trainer.max_steps=6")
    second = tiny_run(tmp_path, "trainer.max_steps=6")
    assert first["run_dir"] != second["run_dir"]
    assert first["results"] == second["results"]
    a = load_file(Path(first["run_dir"]) / "checkpoints" / "last" / "model.safetensors")
    b = load_file(Path(second["run_dir"]) / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other_seed = tiny_run(tmp_path, "trainer.max_steps=6", "seed=7")
    c = load_file(Path(other_seed["run_dir"]) / "checkpoints" / "last" / "model.safetensors")
    assert not torch.equal(a["heads.restaurants.out.weight"], c["heads.restaurants.out.weight"])


def test_tokenization_is_cached_for_the_next_run() -> None:
    from mtl_cli.tasks import load_task
    from mtl_cli.tokenization import tokenize_task, tokenizer_fingerprint

    cfg = to_typed(compose_config(["experiment=smoke"]))
    _, tokenizer = tiny_encoder()  # experiment=smoke's encoder
    fp = tokenizer_fingerprint(tokenizer)
    first = tokenize_task(load_task("restaurants", cfg.task["restaurants"], None), tokenizer, fp)["train"]
    path = Path(first.cache_files[0]["filename"])
    mtime = path.stat().st_mtime_ns
    second = tokenize_task(load_task("restaurants", cfg.task["restaurants"], None), tokenizer, fp)["train"]
    assert Path(second.cache_files[0]["filename"]) == path and path.stat().st_mtime_ns == mtime
    assert second["input_ids"] == first["input_ids"]


def test_multirun_sweep_gives_each_job_its_own_run(tmp_path: Path, mtl) -> None:
    sweep = ["mixing=temperature", "mixing.temperature=1,4", "trainer.max_steps=2", "trainer.eval_every=2"]
    proc = mtl("train", "-m", *TINY_RUN, *sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(tmp_path / "runs")
    assert len(runs) == 2 and all(r.parts[-4] == "multirun" for r in runs)
    temps = sorted(OmegaConf.load(r / "config.yaml").mixing.temperature for r in runs)
    assert temps == [1.0, 4.0]
    assert all((r / "results.json").is_file() and (r / "metrics.md").is_file() for r in runs)
    assert all("eval step 2" in (r / "train.log").read_text() for r in runs)  # every job logs, not only the first
