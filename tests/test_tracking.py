"""Experiment tracking (mtl_cli/callbacks/tracking*.py): train_metrics.jsonl, TensorBoard event files
read back with TensorBoard's own reader, and MLflow against real stores (a SQLite file, and in a
slow test a real `mlflow server`), read back with MlflowClient. No mocks: what a user would open.

Resumes follow tests/test_resume.py: the run stops itself from a callback at a chosen step (a
SIGINT, or an exception for a crash), so the step it stops at does not depend on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mtl_cli import train as train_module
from mtl_cli.callbacks import Callback
from tests.conftest import TINY_RUN, run_dirs, tiny_run

mlflow = pytest.importorskip("mlflow")  # the optional `track` extra (installed with `dev`)
from mlflow.tracking import MlflowClient  # noqa: E402

TASKS = ["restaurants", "electronics"]
# 8 steps (experiment=smoke), evaluated at 4 and 8; a record every 2 steps, affinity at 4 and 8.
LOGGED = ["trainer.log_every=2", "trainer.affinity_every=4"]
BOTH = "trainer.loggers=[tensorboard,mlflow]"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_metrics.jsonl").read_text().splitlines()]


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def runs_of(uri: str, experiment: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client, list(client.search_runs([found.experiment_id]))


def only_run(uri: str, experiment: str):
    client, (run,) = runs_of(uri, experiment)
    return client, run


def history(client: MlflowClient, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, str]:
    """One tiny run logged to TensorBoard and to a local MLflow store: (run directory, store URI)."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = store(tmp)
    out = tiny_run(tmp / "runs", *LOGGED, BOTH, f"trainer.mlflow_tracking_uri={uri}", "trainer.mlflow_experiment=t")
    return Path(out["run_dir"]), uri


def test_train_metrics_has_one_record_every_log_every_steps(tracked) -> None:
    run, _ = tracked
    recs = records(run)
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    for r in recs:
        assert set(r) == {"step", "epoch", "loss", "lr", "grad_norm", "examples_per_second", "tokens_per_second",
                          "task_weights", "sampling"}  # fmt: skip
        assert set(r["loss"]) == set(TASKS) and any(v is not None for v in r["loss"].values())
        assert r["lr"] > 0 and r["grad_norm"] > 0 and r["examples_per_second"] > 0 and r["tokens_per_second"] > 0
        assert r["task_weights"] == {t: 1.0 for t in TASKS}
        assert sum(r["sampling"].values()) == pytest.approx(1.0)
    assert [r["lr"] for r in recs] == sorted((r["lr"] for r in recs), reverse=True)  # the schedule decays


def test_tensorboard_events_hold_every_tag_at_its_steps(tracked) -> None:
    run, _ = tracked
    acc = events(run)
    tags = set(acc.Tags()["scalars"])
    train = {"train/lr", "train/grad_norm", "train/examples_per_second", "train/tokens_per_second", "train/epoch"}
    for task in TASKS:
        train |= {f"train/loss/{task}", f"train/task_weight/{task}", f"train/sampling/{task}"}
    assert train <= tags
    for tag in train - {f"train/loss/{t}" for t in TASKS}:  # a task not drawn in 2 steps has no loss there
        assert steps(acc, tag) == [2, 4, 6, 8], tag
    validation = {f"validation/{t}/{m}" for t in TASKS for m in ("accuracy", "macro_f1")}
    validation |= {"validation/average/main", "validation/average/accuracy"}
    assert validation <= tags
    for tag in validation:
        assert steps(acc, tag) == [4, 8], tag
    assert steps(acc, "affinity/cosine/restaurants~electronics") == [4, 8]
    results = json.loads((run / "results.json").read_text())
    assert [(e.step, e.value) for e in acc.Scalars("test/average/main")] == [
        (8, pytest.approx(results["average"]["main"]))
    ]
    assert "affinity/cosine/electronics~restaurants" not in tags  # symmetric: each pair once
    assert any(t.startswith("affinity/cosine") for t in acc.Tags()["tensors"])  # the matrix, as a text table
    lrs = {r["step"]: r["lr"] for r in records(run)}
    assert {e.step: e.value for e in acc.Scalars("train/lr")} == pytest.approx(lrs)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    accuracy = {m["step"]: m["accuracy"] for m in metrics if m["task"] == "restaurants"}
    assert {e.step: e.value for e in acc.Scalars("validation/restaurants/accuracy")} == pytest.approx(accuracy)


def test_mlflow_run_holds_params_metrics_artifacts_and_finished(tracked) -> None:
    run, uri = tracked
    client, found = only_run(uri, "t")
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert found.data.tags["mtl.run_dir"] == str(run)
    params = found.data.params
    assert params["trainer.log_every"] == "2" and params["trainer.max_steps"] == "8"
    assert json.loads(params["trainer.loggers"]) == ["tensorboard", "mlflow"]
    assert history(client, found, "train/lr") == [2, 4, 6, 8]
    assert history(client, found, "validation/average/main") == [4, 8]
    assert history(client, found, "affinity/cosine/restaurants_vs_electronics") == [4, 8]
    assert history(client, found, "test/electronics/accuracy") == [8]
    lrs = [m.value for m in sorted(client.get_metric_history(found.info.run_id, "train/lr"), key=lambda m: m.step)]
    assert lrs == pytest.approx([r["lr"] for r in records(run)])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.md", "metrics.csv", "results.json", "curves.png", "affinity.png"} <= artifacts
    # A new experiment in a SQLite store keeps its artifacts beside the database, not in ./mlruns.
    assert found.info.artifact_uri.startswith((Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri())
    assert not (Path.cwd() / "mlruns").exists()


class StopAt(Callback):
    """After step `step`: a SIGINT (as Ctrl-C), or an exception (a crash)."""

    def __init__(self, step: int, crash: bool) -> None:
        self.step, self.crash = step, crash

    def on_step(self, parts, state, step) -> None:
        if state.step == self.step:
            if self.crash:
                raise RuntimeError("a crash in the middle of training")
            os.kill(os.getpid(), signal.SIGINT)


def stopping_at(step: int, crash: bool = False):
    build = train_module.build_callbacks
    return lambda parts: [*build(parts), StopAt(step, crash)]  # after Tracking: the step is logged


def test_a_crash_then_resume_logs_every_step_once(tracked, tmp_path: Path, monkeypatch) -> None:
    """Crashed after step 6 (checkpoint at 4, steps 5-6 logged), resumed: TensorBoard hides the earlier
    process's events after the checkpoint, train_metrics.jsonl is trimmed, MLflow skips what it has."""
    uri = store(tmp_path)
    args = (*LOGGED, BOTH, f"trainer.mlflow_tracking_uri={uri}", "trainer.mlflow_experiment=t")
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", stopping_at(6, crash=True))
        with pytest.raises(RuntimeError, match="a crash"):
            tiny_run(tmp_path / "runs", *args)
    (run,) = run_dirs(tmp_path / "runs")
    assert [r["step"] for r in records(run)] == [2, 4, 6]
    assert steps(events(run), "train/lr") == [2, 4, 6]  # step 6 is written: the resume must hide it
    client, found = only_run(uri, "t")
    assert found.info.status == "FAILED" and history(client, found, "train/lr") == [2, 4, 6]

    train_module.resume(run)
    assert [r["step"] for r in records(run)] == [2, 4, 6, 8]
    reference, _ = tracked  # the same config, uninterrupted
    for got, want in zip(records(run), records(reference), strict=True):
        assert got["loss"] == want["loss"] and got["lr"] == want["lr"] and got["grad_norm"] == want["grad_norm"]
    acc = events(run)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process
    assert steps(acc, "train/lr") == [2, 4, 6, 8]
    assert steps(acc, "validation/average/main") == [4, 8]
    client, found = only_run(uri, "t")  # the same MLflow run, continued
    assert found.info.status == "FINISHED"
    assert history(client, found, "train/lr") == [2, 4, 6, 8]
    assert history(client, found, "validation/average/main") == [4, 8]


def test_ctrl_c_marks_the_mlflow_run_killed_and_resume_continues_the_window(tracked, tmp_path: Path, mtl,
                                                                            monkeypatch) -> None:  # fmt: skip
    """SIGINT after step 3: the checkpoint holds step 3 of the window of 3-4, so the resumed run's record
    at step 4 is the uninterrupted one. Without tensorboard in trainer.loggers, no event files."""
    uri = store(tmp_path)
    args = [*TINY_RUN, *LOGGED, "trainer.loggers=[mlflow]", f"trainer.mlflow_tracking_uri={uri}"]
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", stopping_at(3))
        stopped = mtl("train", *args, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    (run,) = run_dirs(tmp_path / "runs")
    assert [r["step"] for r in records(run)] == [2]
    assert only_run(uri, "restaurants+electronics")[1].info.status == "KILLED"

    proc = mtl("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reference, _ = tracked
    assert [r["loss"] for r in records(run)] == [r["loss"] for r in records(reference)]
    assert not (run / "tensorboard").exists()
    client, found = only_run(uri, "restaurants+electronics")
    assert found.info.status == "FINISHED" and history(client, found, "train/lr") == [2, 4, 6, 8]


def test_a_sweep_gives_one_mlflow_run_and_one_event_folder_per_job(tmp_path: Path, mtl, monkeypatch) -> None:
    # No URI set anywhere: the default local store in <runs_root>/mlruns.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    short = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1"]
    proc = mtl("train", "-m", *TINY_RUN, *short, BOTH, "seed=1,2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = run_dirs(tmp_path / "runs" / "multirun")
    assert len(jobs) == 2
    for job in jobs:
        assert steps(events(job), "train/lr") == [1, 2]
    _, found = runs_of(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}", "restaurants+electronics")
    assert sorted(r.data.tags["mtl.run_dir"] for r in found) == [str(j) for j in jobs]
    assert sorted(r.data.params["seed"] for r in found) == ["1", "2"]
    assert {r.info.status for r in found} == {"FINISHED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_one_line_before_any_run_folder(tmp_path: Path, mtl, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = mtl("train", *TINY_RUN, BOTH, f"trainer.mlflow_tracking_uri={uri}", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"mtl: error: cannot reach the MLflow tracking server {uri}")
    assert "trainer.mlflow_tracking_uri" in line
    assert run_dirs(tmp_path / "runs") == [] and not list((tmp_path / "runs").glob("*/*"))


def test_mlflow_not_installed_names_the_install(tmp_path: Path, mtl, monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] or ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import mlflow...` now fails as if not installed
    proc = mtl("train", *TINY_RUN, BOTH, cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "pip install mlflow" in line and "trainer.loggers" in line
    assert run_dirs(tmp_path / "runs") == []


def test_mlflow_params_and_names_fit_mlflow_limits() -> None:
    from mtl_cli.callbacks.tracking_mlflow import MAX_VALUE, metric_key, params, status_of
    from mtl_cli.compose import compose_typed
    from mtl_cli.errors import MtlError

    cfg = compose_typed([*TINY_RUN, "trainer.mlflow_experiment=" + "x" * 7000])
    flat = params(cfg)
    assert len(flat["trainer.mlflow_experiment"]) == MAX_VALUE
    assert flat["trainer.mlflow_tracking_uri"] == "null" and flat["trainer.progress"] == "false"
    assert metric_key("affinity/lookahead/a~b") == "affinity/lookahead/a_vs_b"
    assert metric_key("validation/t(1)/f1") == "validation/t_1_/f1"
    assert status_of(None) == "FINISHED" and status_of(RuntimeError()) == "FAILED"
    assert status_of(MtlError("SIGINT: stopped", 130)) == "KILLED" and status_of(MtlError("bad")) == "FAILED"


@pytest.mark.slow
def test_a_real_tracking_server_over_http(tmp_path: Path) -> None:
    import sqlalchemy

    if not hasattr(sqlalchemy, "Engine"):  # the client's SQLite store works on 1.4; the server does not
        pytest.skip(f"mlflow server needs SQLAlchemy 2, this environment has {sqlalchemy.__version__} (the sweep pin)")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):  # up to minutes to start on a busy machine; one that does not is a skip, not a failure
            if server.poll() is not None:
                pytest.skip(f"mlflow server did not start: {server.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.skip("mlflow server did not answer on /health")
        out = tiny_run(tmp_path / "runs", *LOGGED, BOTH, f"trainer.mlflow_tracking_uri={uri}")
        client, found = only_run(uri, "restaurants+electronics")
        assert found.info.status == "FINISHED" and found.data.tags["mtl.run_dir"] == out["run_dir"]
        assert history(client, found, "train/lr") == [2, 4, 6, 8]
        assert {"metrics.md", "results.json"} <= {a.path for a in client.list_artifacts(found.info.run_id)}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, by its group's id
        server.wait()
