"""Checkpoints (mtl_cli/checkpoints.py): named and found (`step-4` is `step-000004`), rotated,
verified against their manifests, written atomically (a kill or a full disk mid-save leaves the
previous one intact), falling back to the previous intact one, and self-contained: a checkpoint
copied out of its run still evaluates. The CLI's messages for damaged ones: test_bad_input.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mtl_cli.checkpoints import checkpoint_problem, find_checkpoint
from mtl_cli.errors import MtlError
from mtl_cli.rundir import RunDir
from tests.conftest import run_dirs, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run (8 steps) evaluated every 2 steps, keeping 3 `last`s: checkpoints best,
    last (step 8), step-000004 and step-000006. Read only; a test that damages it takes `run_copy`."""
    out = tiny_run(tmp_path_factory.mktemp("runs"), "trainer.eval_every=2", "trainer.keep_checkpoints=3")
    return Path(out["run_dir"])


@pytest.fixture
def run_copy(run: Path, tmp_path: Path) -> Path:
    """`run`, copied byte for byte under this test's runs/: a copy is as good as the run, and cheaper than training."""
    return Path(shutil.copytree(run, tmp_path / "runs" / run.parent.name / run.name))


def written(proc) -> Path:
    """The JSON table `mtl eval` wrote (it prints `wrote <table>.md`)."""
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    return Path(line.removeprefix("wrote ")).with_suffix(".json")


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mtl: error: ") and "Traceback" not in proc.stdout + proc.stderr
    return line


def test_the_newest_lasts_are_kept_as_step_checkpoints(run: Path) -> None:
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last", "step-000004", "step-000006"]
    for name, step in (("last", 8), ("step-000004", 4), ("step-000006", 6)):
        assert json.loads((ckpts / name / "trainer_state.json").read_text())["step"] == step, name
    assert all(checkpoint_problem(p) is None for p in ckpts.iterdir())


def test_a_checkpoint_copied_out_of_its_run_still_evaluates(run: Path, tmp_path: Path, mtl) -> None:
    elsewhere = Path(shutil.copytree(run / "checkpoints" / "best", tmp_path / "elsewhere"))
    in_run = mtl("eval", str(run), cwd=tmp_path)
    assert in_run.returncode == 0, in_run.stderr
    alone = mtl("eval", str(elsewhere), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert written(alone).parent == elsewhere / "eval"  # a checkpoint on its own keeps its own eval/
    assert json.loads(written(alone).read_text()) == json.loads(written(in_run).read_text())
    trained = json.loads((run / "results.json").read_text())
    for task, metrics in json.loads(written(alone).read_text()).items():
        assert metrics == pytest.approx(trained[task], abs=1e-9)


def test_step_checkpoints_are_found_without_zero_padding(run: Path, tmp_path: Path, mtl) -> None:
    proc = mtl("eval", str(run), "checkpoint=step-4", "split=validation", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert written(proc).name.startswith("step-000004_validation")
    evaluated = json.loads(written(proc).read_text())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in (r for r in logged if r["step"] == 4 and r["task"] != "average"):
        assert evaluated[record["task"]]["accuracy"] == pytest.approx(record["accuracy"])


def test_an_unknown_checkpoint_lists_the_checkpoints_the_run_has(run: Path, tmp_path: Path, mtl) -> None:
    for name in ("step-20", "best-nosuchtask"):
        line = one_line_error(mtl("eval", str(run), f"checkpoint={name}", cwd=tmp_path))
        expected = "step-000020" if name == "step-20" else name
        assert f"has no '{expected}' checkpoint; it has: best, last, step-000004, step-000006" in line


def test_a_truncated_last_falls_back_to_the_previous_step(run_copy: Path, tmp_path: Path, mtl, capsys) -> None:
    ckpts = run_copy / "checkpoints"
    weights = ckpts / "last" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert "truncated" in (checkpoint_problem(ckpts / "last") or "")
    assert find_checkpoint(RunDir(run_copy), "last") == ckpts / "step-000006"
    assert "checkpoints/last is unusable" in capsys.readouterr().err
    # mtl eval says so, and evaluates the previous good one.
    proc = mtl("eval", str(run_copy), "checkpoint=last", cwd=tmp_path)
    assert proc.returncode == 0 and "using step-000006" in proc.stderr


def test_a_damaged_checkpoint_without_fallback_is_named(run_copy: Path, tmp_path: Path, mtl) -> None:
    best = run_copy / "checkpoints" / "best" / "model.safetensors"
    data = bytearray(best.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit
    best.write_bytes(bytes(data))
    assert "does not match its SHA-256" in one_line_error(mtl("eval", str(run_copy), cwd=tmp_path))


def test_a_kill_during_a_save_leaves_the_last_checkpoint_readable(run_copy: Path, tmp_path: Path, monkeypatch) -> None:
    before = (run_copy / "checkpoints" / "last" / "model.safetensors").read_bytes()

    def killed_midway(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half an optimizer state")
        raise KeyboardInterrupt  # as good as a kill: the rest of the save never happens

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(MtlError, match="stopped at once"):
        tiny_run(tmp_path / "runs")
    monkeypatch.undo()
    # The earlier run is untouched, and the interrupted one has no half-written `last`.
    assert (run_copy / "checkpoints" / "last" / "model.safetensors").read_bytes() == before
    (interrupted,) = [r for r in run_dirs(tmp_path / "runs") if r != run_copy]
    assert not (interrupted / "checkpoints" / "last").exists()
    assert checkpoint_problem(run_copy / "checkpoints" / "last") is None


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_save, calls = torch.save, []

    def fills_the_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second `last`: the first must survive
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(MtlError) as err:
        tiny_run(tmp_path)
    message = str(err.value)
    assert "No space left on device" in message and "previous checkpoint is intact" in message
    (run,) = run_dirs(tmp_path)
    last = run / "checkpoints" / "last"
    assert checkpoint_problem(last) is None
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 4
    assert not list((run / "checkpoints").glob(".*tmp"))
