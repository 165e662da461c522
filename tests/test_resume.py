"""Resume and stop signals, and non-finite losses.

A run stopped between two checkpoints (SIGKILL, SIGINT, SIGTERM) and resumed with
`mtl train resume=DIR` must end bit for bit like an uninterrupted run of the same config.

The run sends the signal itself, from a callback, after step STOP_AT: it lands at that step
however loaded the machine is, so the run can neither finish first nor stop somewhere else.
SIGKILL needs a process of its own; SIGINT goes through `mtl_cli.cli.main` in this process.
One SIGTERM comes from outside, as `kill` sends it, to a `python -m mtl_cli` run far too long to
finish first. What a checkpoint holds and how it is saved and verified: test_checkpoints.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl_cli import train as train_module
from mtl_cli.callbacks import Callback
from mtl_cli.checkpoints import checkpoint_problem
from mtl_cli.interrupts import StopRequest
from tests.conftest import REPO, TINY_RUN, run_dirs, tiny_run, write

# Checkpoints every 20 steps; the signal lands after step STOP_AT, between the first two, so the
# resumed run redoes steps and rewrites records. Early stopping (patience 1 stops tasks in the
# resumed part), uncertainty weighting, temperature mixing and the affinity probe put every kind
# of saved state to work.
LONG = [
    "trainer.max_steps=80", "trainer.eval_every=20", "trainer.affinity_every=10", "loss_weighting=uncertainty",
    "mixing=temperature", "trainer.early_stopping_patience=1",
]  # fmt: skip
STOP_AT = 30


class SignalAt(Callback):
    """Sends `sig` to this process after step `step`, as a user's Ctrl-C or `kill` would at that moment."""

    def __init__(self, step: int, sig: int) -> None:
        self.step, self.sig = step, sig

    def on_step(self, parts, state, step) -> None:
        if state.step == self.step:
            os.kill(os.getpid(), self.sig)


def signal_at(step: int, sig: int):
    """`train.build_callbacks` with a SignalAt added: what a test puts in its place."""
    build = train_module.build_callbacks
    return lambda parts: [*build(parts), SignalAt(step, sig)]


# `python -c KILL_9 train ...`: the real CLI in a fresh interpreter that SIGKILLs itself after STOP_AT.
KILL_9 = (
    "import signal, sys; from mtl_cli import cli, train; from tests.test_resume import STOP_AT, signal_at; "
    "train.build_callbacks = signal_at(STOP_AT, signal.SIGKILL); cli.main(sys.argv[1:])"
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The LONG run, uninterrupted (in this process: the kill tests compare across processes)."""
    return Path(tiny_run(tmp_path_factory.mktemp("reference"), *LONG)["run_dir"])


def assert_same_run(reference: Path, resumed: Path) -> None:
    for name in ("results.json", "metrics.jsonl", "affinity.jsonl"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    for ckpt in ("best", "last"):
        a = (reference / "checkpoints" / ckpt / "model.safetensors").read_bytes()
        assert (resumed / "checkpoints" / ckpt / "model.safetensors").read_bytes() == a, ckpt


def last_step(run: Path) -> int:
    return json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["step"]


def test_the_reference_run_stops_tasks_early_after_the_signal(reference: Path) -> None:
    """What the resumed runs must reproduce: an early stop after STOP_AT, and the full budget."""
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 80
    assert not any(r.get("stopped") for r in records if r["step"] <= STOP_AT)
    assert any(r.get("stopped") for r in records)


def test_kill_9_then_resume_matches_an_uninterrupted_run(reference: Path, tmp_path: Path, mtl) -> None:
    env = {**os.environ, "MTL_RUNS_ROOT": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    env.pop("MTL_DATA_ROOT", None)
    cmd = [sys.executable, "-c", KILL_9, "train", *TINY_RUN, *LONG]
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert not (run / "results.json").exists() and last_step(run) == 20  # killed between checkpoints
    proc = mtl("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in (run / "train.log").read_text()
    assert_same_run(reference, run)


def test_sigint_saves_and_says_how_to_resume(reference: Path, tmp_path: Path, mtl, monkeypatch) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", signal_at(STOP_AT, signal.SIGINT))
        stopped = mtl("train", *TINY_RUN, *LONG, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    (run,) = run_dirs(tmp_path / "runs")
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith(f"mtl: error: SIGINT: stopped at step {STOP_AT}, checkpoint saved")
    assert f"mtl train resume={run}" in message
    assert last_step(run) == STOP_AT and "Interrupted at step" in (run / "metrics.md").read_text()
    assert not (run / "results.json").exists()
    proc = mtl("train", "--resume", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, run)


def test_sigterm_from_outside_saves_a_checkpoint(tmp_path: Path) -> None:
    """`kill PID` to the real CLI. The run has 5,000 steps and saves `last` every 10: the signal,
    sent once the first checkpoint exists, lands thousands of steps before the end."""
    env = {**os.environ, "MTL_RUNS_ROOT": str(tmp_path / "runs")}
    env.pop("MTL_DATA_ROOT", None)
    args = [*TINY_RUN, "trainer.max_steps=5000", "trainer.eval_every=5000", "trainer.save_every=10"]
    cmd = [sys.executable, "-m", "mtl_cli", "train", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not list(tmp_path.glob("runs/*/*/checkpoints/last/manifest.json")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: stopped at step" in err.strip().splitlines()[-1]
    (run,) = run_dirs(tmp_path / "runs")
    assert not (run / "results.json").exists() and 10 <= last_step(run) < 5000
    assert checkpoint_problem(run / "checkpoints" / "last") is None


def test_a_second_signal_stops_at_once() -> None:
    stop = StopRequest()
    stop.handle(signal.SIGINT)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT)


def test_resume_refuses_other_overrides_and_finished_runs(tmp_path: Path, reference: Path, mtl) -> None:
    proc = mtl("train", f"resume={reference}", "trainer.lr=1", cwd=tmp_path)
    assert proc.returncode == 2 and "keeps the config it started with" in proc.stderr
    proc = mtl("train", f"resume={reference}", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


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


# Batches of 64 hold all 41 rows: every step sees the huge label.
EXPLODING = ["task=reg", "trainer.max_steps=3", "trainer.batch_size=64"]


def test_a_non_finite_loss_stops_with_step_task_and_evidence(exploding_task: Path, mtl) -> None:
    proc = mtl("train", "--config-dir", str(exploding_task / "conf"), *TINY_RUN, *EXPLODING, cwd=exploding_task)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "loss of task 'reg' is inf at step" in message and "trainer.nonfinite=skip" in message
    (run,) = run_dirs(exploding_task / "runs")
    (debug,) = (run / "debug").iterdir()
    assert {p.name for p in debug.iterdir()} == {"model.safetensors", "batch-reg.safetensors", "info.json"}
    assert json.loads((debug / "info.json").read_text())["problem"].startswith("loss of task 'reg' is inf")


def test_non_finite_batches_can_be_skipped(exploding_task: Path, mtl) -> None:
    args = ["--config-dir", str(exploding_task / "conf"), *TINY_RUN, *EXPLODING, "trainer.nonfinite=skip"]
    proc = mtl("train", *args, cwd=exploding_task)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(exploding_task / "runs")
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["callbacks"]["nonfinite"]["skipped"] >= 1
    assert "update skipped" in (run / "train.log").read_text()
