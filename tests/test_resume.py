"""Resume, stop signals, atomic and verified checkpoints, non-finite losses.

The kill tests drive the real CLI: a run is killed (SIGKILL, SIGINT, SIGTERM) once its first
checkpoint exists, resumed with `mtl train resume=DIR`, and must end bit for bit like an
uninterrupted run of the same config.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl_cli.checkpoints import checkpoint_problem, find_checkpoint
from mtl_cli.compose import compose_config
from mtl_cli.errors import MtlError
from mtl_cli.interrupts import StopRequest
from mtl_cli.rundir import RunDir
from tests.conftest import run_dirs, run_mtl, write

# Long enough that a kill after the first checkpoint (step 100) lands mid-run; early stopping,
# uncertainty weighting and temperature mixing put every kind of saved state to work.
LONG = [
    "experiment=smoke", "trainer.max_steps=600", "trainer.eval_every=100", "trainer.progress=false",
    "loss_weighting=uncertainty", "mixing=temperature", "trainer.early_stopping_patience=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_mtl("train", *LONG, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(cwd / "runs")
    return run


def start_and_kill(cwd: Path, sig: int) -> tuple[subprocess.CompletedProcess, Path]:
    """Start the LONG run, send `sig` as soon as its first checkpoint exists; (finished process, run dir)."""
    env = {**os.environ, "MTL_RUNS_ROOT": str(cwd / "runs")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtl_cli", "train", *LONG], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(cwd.glob("runs/*/*/checkpoints/last/manifest.json")):
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    (run,) = run_dirs(cwd / "runs")
    assert not (run / "results.json").exists(), "the run finished before the signal arrived; nothing was tested"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run


def assert_same_run(reference: Path, resumed: Path) -> None:
    for name in ("results.json", "metrics.jsonl", "affinity.jsonl"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    for ckpt in ("best", "last"):
        a = (reference / "checkpoints" / ckpt / "model.safetensors").read_bytes()
        assert (resumed / "checkpoints" / ckpt / "model.safetensors").read_bytes() == a, ckpt


def test_kill_9_then_resume_matches_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    killed, run = start_and_kill(tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    proc = run_mtl("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in (run / "train.log").read_text()
    assert_same_run(reference, run)


def test_sigint_saves_and_says_how_to_resume(reference: Path, tmp_path: Path) -> None:
    stopped, run = start_and_kill(tmp_path, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("mtl: error: SIGINT: stopped at step ") and f"mtl train resume={run}" in message
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] >= 100 and "Interrupted at step" in (run / "metrics.md").read_text()
    proc = run_mtl("train", "--resume", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, run)


def test_sigterm_saves_a_checkpoint(tmp_path: Path) -> None:
    stopped, run = start_and_kill(tmp_path, signal.SIGTERM)
    assert stopped.returncode == 143 and "SIGTERM: stopped at step" in stopped.stderr
    assert checkpoint_problem(run / "checkpoints" / "last") is None


def test_a_second_signal_stops_at_once() -> None:
    stop = StopRequest()
    stop.handle(signal.SIGINT)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT)


def test_resume_refuses_other_overrides_and_finished_runs(tmp_path: Path, reference: Path) -> None:
    proc = run_mtl("train", f"resume={reference}", "trainer.lr=1", cwd=tmp_path)
    assert proc.returncode == 2 and "keeps the config it started with" in proc.stderr
    proc = run_mtl("train", f"resume={reference}", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


# --- checkpoints: verified, atomic, rotated -----------------------------------------------------


def small_run(tmp_path: Path, *extra: str) -> Path:
    from mtl_cli.train import train

    overrides = ["experiment=smoke", f"runs_root={tmp_path}", "trainer.progress=false", "trainer.eval_every=2", *extra]
    return Path(train(compose_config(overrides))["run_dir"])


def test_keep_checkpoints_and_fall_back_from_a_truncated_one(tmp_path: Path, capsys) -> None:
    run = small_run(tmp_path, "trainer.keep_checkpoints=3")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last", "step-000004", "step-000006"]
    weights = ckpts / "last" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert "truncated" in checkpoint_problem(ckpts / "last")
    assert find_checkpoint(RunDir(run), "last") == ckpts / "step-000006"
    assert "checkpoints/last is unusable" in capsys.readouterr().err
    # mtl eval says so, and evaluates the previous good one.
    proc = run_mtl("eval", str(run), "checkpoint=last", cwd=tmp_path)
    assert proc.returncode == 0 and "using step-000006" in proc.stderr


def test_a_damaged_checkpoint_without_fallback_is_named(tmp_path: Path) -> None:
    run = small_run(tmp_path)
    best = run / "checkpoints" / "best" / "model.safetensors"
    data = bytearray(best.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit
    best.write_bytes(bytes(data))
    proc = run_mtl("eval", str(run), cwd=tmp_path)
    assert proc.returncode == 2 and "does not match its SHA-256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_kill_during_a_save_leaves_the_last_checkpoint_readable(tmp_path: Path, monkeypatch) -> None:
    import torch

    from mtl_cli import train as train_module

    run = small_run(tmp_path)
    before = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()

    def killed_midway(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half an optimizer state")
        raise KeyboardInterrupt  # as good as a kill: the rest of the save never happens

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(MtlError, match="stopped at once"):
        train_module.train(compose_config(["experiment=smoke", f"runs_root={tmp_path}", "trainer.progress=false"]))
    monkeypatch.undo()
    # The earlier run is untouched, and the interrupted one has no half-written `last`.
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == before
    (interrupted,) = [r for r in run_dirs(tmp_path) if r != run]
    assert not (interrupted / "checkpoints" / "last").exists()
    assert checkpoint_problem(run / "checkpoints" / "last") is None


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import torch

    from mtl_cli.train import train

    real_save, calls = torch.save, []

    def fills_the_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second `last`: the first must survive
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(MtlError) as err:
        train(compose_config(["experiment=smoke", f"runs_root={tmp_path}", "trainer.progress=false"]))
    message = str(err.value)
    assert "No space left on device" in message and "previous checkpoint is intact" in message
    (run,) = run_dirs(tmp_path)
    last = run / "checkpoints" / "last"
    assert checkpoint_problem(last) is None
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 4
    assert not list((run / "checkpoints").glob(".*tmp"))


# --- non-finite losses ------------------------------------------------------------------------


@pytest.fixture
def exploding_task(tmp_path: Path) -> Path:
    """A regression task with one label so large that its squared error overflows float32."""
    rows = "".join(f"text number {i}\t{i % 5}\n" for i in range(40))
    write(tmp_path / "data" / "reg.tsv", "text\tlabel\n" + rows + "a huge one\t1e30\n")
    write(tmp_path / "data" / "ok.tsv", "text\tlabel\n" + rows)
    write(
        tmp_path / "conf" / "task" / "reg.yaml",
        f"# @package task.reg\ntype: regression\ndata_dir: {tmp_path / 'data'}\nformat: tsv\n"
        "files:\n  train: reg.tsv\n  validation: ok.tsv\n  test: ok.tsv\n",
    )
    return tmp_path


def test_a_non_finite_loss_stops_with_step_task_and_evidence(exploding_task: Path) -> None:
    args = ["train", "--config-dir", str(exploding_task / "conf"), "task=reg", "encoder=tiny", "trainer.epochs=3"]
    proc = run_mtl(*args, "trainer.batch_size=64", "trainer.progress=false", cwd=exploding_task)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "loss of task 'reg' is inf at step" in message and "trainer.nonfinite=skip" in message
    (run,) = run_dirs(exploding_task / "runs")
    (debug,) = (run / "debug").iterdir()
    assert {p.name for p in debug.iterdir()} == {"model.safetensors", "batch-reg.safetensors", "info.json"}
    assert json.loads((debug / "info.json").read_text())["problem"].startswith("loss of task 'reg' is inf")


def test_non_finite_batches_can_be_skipped(exploding_task: Path) -> None:
    args = ["train", "--config-dir", str(exploding_task / "conf"), "task=reg", "encoder=tiny", "trainer.epochs=3"]
    proc = run_mtl(
        *args, "trainer.batch_size=64", "trainer.nonfinite=skip", "trainer.progress=false", cwd=exploding_task
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(exploding_task / "runs")
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["callbacks"]["nonfinite"]["skipped"] >= 1
    assert "update skipped" in (run / "train.log").read_text()
