"""`mtl transfer`: single-task baselines vs the multi-task run, every number traceable to a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, TINY_RUN, needs_shared_data, run_mtl

# `mtl transfer` runs in this process (the `mtl` fixture): it is a loop over `train()` calls.
TINY = [*TINY_RUN, "trainer.max_steps=6", "trainer.eval_every=3"]


def check_report(out: Path, tasks: list[str], seeds: list[int]) -> dict:
    """The report's files exist and every number in it is read back from the runs it names."""
    assert {p.name for p in out.iterdir()} >= {"transfer.md", "transfer.csv", "transfer.json", "transfer.png"}
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "transfer.json").read_text())
    assert [r["task"] for r in report["rows"]] == tasks and report["seeds"] == seeds
    md = (out / "transfer.md").read_text()
    for row in report["rows"]:
        task, metric = row["task"], row["metric"]
        multi = [json.loads((Path(report["multi"][str(s)]["run_dir"]) / "results.json").read_text()) for s in seeds]
        single = [
            json.loads((Path(report["single"][task][str(s)]["run_dir"]) / "results.json").read_text()) for s in seeds
        ]
        assert row["multi_mean"] == pytest.approx(sum(r[task][metric] for r in multi) / len(seeds))
        assert row["single_mean"] == pytest.approx(sum(r[task][metric] for r in single) / len(seeds))
        assert row["difference"] == pytest.approx(row["multi_mean"] - row["single_mean"])
        assert f"| {task} | {metric} |" in md
        for s in seeds:
            # The baseline saw as many examples of its task as the multi-task run (whole batches).
            base = Path(report["single"][task][str(s)]["run_dir"])
            seen = json.loads((base / "checkpoints" / "last" / "trainer_state.json").read_text())["examples_seen"][task]
            mtl_run = Path(report["multi"][str(s)]["run_dir"])
            mtl_seen = json.loads((mtl_run / "checkpoints" / "last" / "trainer_state.json").read_text())
            assert 0 <= seen - mtl_seen["examples_seen"][task] < 8
    return report


def test_transfer_study_reuses_baselines(tmp_path: Path, mtl) -> None:
    args = ["transfer", "task=demo/restaurants+demo/electronics", "seeds=[1,2]", *TINY]
    first = mtl(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (out,) = (tmp_path / "runs" / "transfer").glob("*/*")
    report = check_report(out, ["restaurants", "electronics"], [1, 2])
    assert all(row["p_value"] is not None for row in report["rows"])  # two seeds: Welch's t-test
    assert not any(v["reused"] for t in report["single"].values() for v in t.values())
    assert "transfer" in first.stdout
    baselines = sorted((tmp_path / "runs" / "baselines").iterdir())
    assert len(baselines) == 4

    second = mtl(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    newest = max((tmp_path / "runs" / "transfer").glob("*/*"), key=lambda p: p.name)
    again = json.loads((newest / "transfer.json").read_text())
    assert all(v["reused"] for t in again["single"].values() for v in t.values())
    assert sorted((tmp_path / "runs" / "baselines").iterdir()) == baselines  # nothing retrained
    assert [r["single_mean"] for r in again["rows"]] == [r["single_mean"] for r in report["rows"]]


def test_transfer_needs_two_tasks_and_valid_seeds(tmp_path: Path, mtl) -> None:
    one = mtl("transfer", "task=demo/restaurants", *TINY, cwd=tmp_path)
    assert one.returncode == 2 and "at least two tasks" in one.stderr
    bad = mtl("transfer", "seeds=[a]", *TINY, cwd=tmp_path)
    assert bad.returncode == 2 and "seeds must be a list of integers" in bad.stderr


@pytest.mark.slow
@needs_shared_data
def test_transfer_study_on_three_sentiment_tasks(tmp_path: Path) -> None:
    proc = run_mtl(
        "transfer", "task=sentences/yelp+sentences/imdb+sentences/amazon", f"data_root={SHARED_DATA}",
        "trainer.max_steps=45", "trainer.eval_every=15", "trainer.progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (out,) = (tmp_path / "runs" / "transfer").glob("*/*")
    report = check_report(out, ["yelp", "imdb", "amazon"], [42])  # the configured seed
    for row in report["rows"]:
        assert row["multi_mean"] > 0.6 and row["single_mean"] > 0.5  # MiniLM learns in both settings
        assert row["significant"] is None  # one seed: no significance claimed
