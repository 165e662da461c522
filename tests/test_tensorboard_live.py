"""A default run watched live: `tensorboard --logdir runs` (the real server, over HTTP) shows the
run's training loss while it trains, and more of it a little later. Slow: it starts TensorBoard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_RUN

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, **query: str) -> object:
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def loss_steps(port: int) -> dict[str, list[int]]:
    """run -> the steps of its train/loss/<task> points that TensorBoard serves now."""
    out: dict[str, list[int]] = {}
    try:
        tags = get(port, "/data/plugin/scalars/tags")
    except OSError:  # not listening yet
        return out
    assert isinstance(tags, dict)
    for run, run_tags in tags.items():
        for tag in run_tags:
            if tag.startswith("train/loss/"):
                points = get(port, "/data/plugin/scalars/scalars", run=run, tag=tag)
                assert isinstance(points, list)
                out[run] = sorted(int(p[1]) for p in points)
    return out


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    # No time limit (a loaded machine is slow, not wrong): the training process ending first fails it.
    while not condition():
        assert proc.poll() is None, f"training ended before {what}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.5)


def test_a_default_run_is_watched_live_in_tensorboard(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    train = subprocess.Popen(
        [sys.executable, "-m", "mtl_cli", "train", *TINY_RUN, f"runs_root={root}", "trainer.max_steps=100000",
         "trainer.log_every=5", "trainer.eval_every=50"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--port", str(port), "--host", "127.0.0.1",
         "--reload_interval", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: any(steps for steps in loss_steps(port).values()), train, "TensorBoard showed a loss point")
        (run, first), *others = loss_steps(port).items()
        assert not others and run.endswith("tensorboard") and first[0] == 5 and all(s % 5 == 0 for s in first)
        # Live: later points arrive while the run goes on.
        wait_for(lambda: max(loss_steps(port)[run]) > max(first), train, "TensorBoard showed later points")
        tags = get(port, "/data/plugin/scalars/tags")
        assert isinstance(tags, dict)
        assert {"train/lr", "train/grad_norm", "train/tokens_per_second"} <= set(tags[run])
    finally:
        for proc in (train, board):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT if proc is train else signal.SIGTERM)
        train.communicate()
        board.wait()
    assert train.returncode == 130  # the Ctrl-C saved a checkpoint and said how to continue
