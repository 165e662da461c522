"""benchmarks/bench.py --quick end to end: every figure of bench.json is there and plausible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA, needs_shared_data


@pytest.mark.slow
@needs_shared_data
def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # One torch thread: on a machine whose two cores other work shares, two threads of the tiny
    # encoder's small operations mostly wait on each other (the figures are checked for being
    # there and consistent, not for speed). No time limit: a loaded machine makes this slow, not wrong.
    # The GEMM peak from 512x512 multiplies: the default 2048 takes ~60 s per bf16 multiply on a
    # CPU without bf16 units (six of them), and the test checks the figures' consistency, not the peak.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--steps", "3", "--repeats", "1",
         "--domains", "books,dvd", "--max-length", "64", "--threads", "1", "--gemm-size", "512",
         "--data-root", str(SHARED_DATA), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    s = report["settings"]
    assert (s["steps"], s["repeats"], s["batch_size"], s["max_length"]) == (3, 1, 32, 64)
    assert s["domains"] == ["books", "dvd"] and s["threads"] == 1
    assert s["torch"] and s["cpu"] and s["mtl_trainer_config"]["max_steps"] == 3
    methods = report["methods"]
    assert set(methods) == {"mtl", "mtl_fp32", "loop", "trainer"}
    for name, m in methods.items():
        assert m["train_examples_per_second"] > 0, name
        assert m["real_tokens_per_second"] > m["train_examples_per_second"], name  # several tokens per example
        assert 0 < m["real_token_fraction"] <= 1, name
        assert 1 < m["real_tokens_per_example"] <= 64, name  # --max-length 64
        assert m["peak_rss_mb"] > 50, name
        (run,) = m["runs"]
        # mtl's one short batch per epoch (1,400 examples per domain) may be among them
        assert run["train_steps"] == 3 and 2 * 32 < run["train_examples"] <= 3 * 32, name
        assert run["threads"] == s["threads"] and run["load_average_1min"] >= 0, name
    ratios = report["ratios"]
    mtl_rate = methods["mtl"]["train_examples_per_second"]
    assert ratios["mtl_over_loop"] == pytest.approx(mtl_rate / methods["loop"]["train_examples_per_second"])
    assert ratios["mtl_over_trainer"] == pytest.approx(mtl_rate / methods["trainer"]["train_examples_per_second"])
    mtl_tokens = methods["mtl"]["real_tokens_per_second"]
    assert ratios["mtl_over_loop_real_tokens"] == pytest.approx(mtl_tokens / methods["loop"]["real_tokens_per_second"])
    assert ratios["mtl_over_trainer_real_tokens"] == pytest.approx(
        mtl_tokens / methods["trainer"]["real_tokens_per_second"]
    )

    mtl = report["mtl"]
    peak = report["peak"]
    assert peak["bf16_flops_per_second"] > 0 and peak["fp32_flops_per_second"] > 0
    assert mtl["model_flops_per_second"] > 0
    assert 0 < mtl["fraction_of_fp32_peak"] < 1
    assert mtl["fraction_of_fp32_peak"] == pytest.approx(mtl["model_flops_per_second"] / peak["fp32_flops_per_second"])
    assert mtl["fraction_of_bf16_peak"] == pytest.approx(mtl["model_flops_per_second"] / peak["bf16_flops_per_second"])
    assert mtl["non_embedding_parameters"] > 0 and mtl["layers"] == 2 and mtl["hidden_size"] == 32  # encoder=tiny
    assert mtl["eval_examples_per_second"] > 0
    assert mtl["eval_over_train_examples_per_second"] == pytest.approx(mtl["eval_examples_per_second"] / mtl_rate)

    startup = report["startup"]
    assert (
        startup["help_seconds"] > 0 and startup["eval_help_seconds"] > 0
    )  # no time limit: a busy machine is slow, not wrong
    assert 0 < startup["first_step_seconds"] < startup["first_step_run_wall_seconds"]
    assert "examples/s" in proc.stdout  # the table


def test_missing_data_folder_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--data-root", str(tmp_path / "nowhere")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "shared data not found" in proc.stderr
