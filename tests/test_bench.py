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
    # The GEMM peak from 512x512 multiplies: the test checks the figures' consistency, not the peak.
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
    # mtl_fp32 only where mtl's default precision is bf16 (CPUs with bf16 units)
    peers = {"loop", "trainer", "loop_best", "trainer_best"}
    assert set(methods) == {"mtl", "mtl_frozen", *peers} | ({"mtl_fp32"} if s["cpu_bf16_units"] else set())
    assert s["best_peers_precision"] == ("bf16 autocast" if s["cpu_bf16_units"] else "fp32")
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
    mtl_tokens = methods["mtl"]["real_tokens_per_second"]
    for name in set(methods) - {"mtl"}:
        assert ratios[f"mtl_over_{name}"] == pytest.approx(mtl_rate / methods[name]["train_examples_per_second"])
        assert ratios[f"mtl_over_{name}_real_tokens"] == pytest.approx(
            mtl_tokens / methods[name]["real_tokens_per_second"]
        )
    # length grouping: the best-configured peers pad far less than the ones as users write them
    for name in ("loop", "trainer"):
        assert methods[f"{name}_best"]["real_token_fraction"] > methods[name]["real_token_fraction"], name
    headline = report["headline"]
    fastest = max(("loop_best", "trainer_best"), key=lambda m: methods[m]["real_tokens_per_second"])
    assert headline["fastest_best_configured_peer"] == fastest
    assert headline["mtl_over_it_real_tokens"] == ratios[f"mtl_over_{fastest}_real_tokens"]

    mtl = report["mtl"]
    peak = report["peak"]
    assert peak["fp32_flops_per_second"] > 0
    if s["cpu_bf16_units"]:  # elsewhere emulated bf16 multiplies take minutes: not measured
        assert peak["bf16_flops_per_second"] > 0
        assert mtl["fraction_of_bf16_peak"] == pytest.approx(
            mtl["model_flops_per_second"] / peak["bf16_flops_per_second"]
        )
    else:
        assert peak["bf16_flops_per_second"] is None and mtl["fraction_of_bf16_peak"] is None
    assert mtl["model_flops_per_second"] > 0
    assert 0 < mtl["fraction_of_fp32_peak"] < 1
    assert mtl["fraction_of_fp32_peak"] == pytest.approx(mtl["model_flops_per_second"] / peak["fp32_flops_per_second"])
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
