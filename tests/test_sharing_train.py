"""Every sharing scheme and loss weighting in a tiny real run: trains, saves, and `mtl eval` reproduces it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mtl_cli.eval_run import evaluate_run
from tests.conftest import tiny_run


def short_run(tmp_path: Path, *overrides: str) -> Path:
    """The tiny run on the two demo tasks, cut to 4 steps evaluated at 2 and 4."""
    return Path(tiny_run(tmp_path, "trainer.max_steps=4", "trainer.eval_every=2", *overrides)["run_dir"])


@pytest.mark.parametrize(
    ("scheme", "overrides"),
    [
        ("hard", []),
        ("partial", ["sharing.shared_layers=1"]),
        ("adapters", ["sharing.lora_r=4"]),
        # The frozen base's marker rows are rebuilt from the seed, as training drew them.
        ("adapters", ["sharing.lora_r=4", "task.restaurants.task_marker=prefix"]),
        ("mmoe", ["sharing.num_experts=3", "sharing.expert_hidden=16"]),
    ],
)
def test_each_sharing_scheme_trains_saves_and_evaluates(tmp_path: Path, scheme: str, overrides: list[str]) -> None:
    run = short_run(tmp_path, f"sharing={scheme}", *overrides)
    results = json.loads((run / "results.json").read_text())
    again = evaluate_run(str(run), split="test")
    for task in ("restaurants", "electronics", "average"):
        assert again[task] == pytest.approx(results[task], abs=1e-9)

    counts = json.loads((run / "parameters.json").read_text())
    assert counts["sharing"] == scheme
    assert set(counts["per_task"]) == {"restaurants", "electronics"}
    assert counts["total"] == counts["shared"] + sum(counts["per_task"].values())
    saved = load_file(run / "checkpoints" / "best" / "model.safetensors")
    if scheme == "adapters":
        # Only what is trained is saved; the frozen base is named, not copied.
        assert counts["shared_trainable"] == 0 and counts["trainable"] < counts["total"]
        assert (run / "checkpoints" / "best" / "base_encoder.json").is_file()
        assert sum(v.numel() for v in saved.values()) == counts["trainable"]
        assert not any("word_embeddings" in k for k in saved)
    else:
        assert not (run / "checkpoints" / "best" / "base_encoder.json").exists()
        assert sum(v.numel() for v in saved.values()) >= counts["total"]  # plus buffers
    if scheme == "partial":
        # With 2 tiny layers and 1 shared, each task owns a copy of the top layer.
        assert counts["per_task"]["restaurants"] == counts["per_task"]["electronics"] > 1000
    if scheme == "mmoe":
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        gates = next(r["gates"] for r in records if r["task"] == "restaurants")
        assert len(gates) == 3 and sum(gates) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("equal", []),
        ("static", ["++loss_weighting.weights.restaurants=2"]),
        ("uncertainty", []),
        ("dwa", []),
        ("gradnorm", []),
        ("pcgrad", []),
        ("cagrad", []),
    ],
)
def test_each_loss_weighting_trains_and_logs_its_weights(tmp_path: Path, method: str, overrides: list[str]) -> None:
    run = short_run(tmp_path, f"loss_weighting={method}", *overrides)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = {r["task"]: r["weight"] for r in records if r["step"] == 4 and r["task"] != "average"}
    assert set(weights) == {"restaurants", "electronics"} and all(w >= 0 for w in weights.values())
    if method == "cagrad":  # the solved simplex weights, times the number of tasks
        assert sum(weights.values()) == pytest.approx(2.0)
    if method == "static":
        assert weights == {"restaurants": 2.0, "electronics": 1.0}
    seen = {r["task"]: r["examples_seen"] for r in records if r["step"] == 4 and r["task"] != "average"}
    if method in ("gradnorm", "pcgrad", "cagrad"):
        # These need every task's gradient at each step: each step holds one batch of each task.
        assert seen == {"restaurants": 32, "electronics": 32}
    else:
        assert sum(seen.values()) == 32
    assert (run / "results.json").is_file()


def test_a_collapsed_task_weight_is_reported(tmp_path: Path) -> None:
    run = short_run(
        tmp_path, "loss_weighting=static", "++loss_weighting.weights.restaurants=0.001",
        "++loss_weighting.weights.electronics=1",
    )  # fmt: skip
    log = (run / "train.log").read_text()
    assert "task restaurants's weight 0.001 fell below 0.01 of the mean" in log


def test_gradient_surgery_needs_a_trainable_shared_encoder() -> None:
    from mtl_cli.compose import check_overrides
    from mtl_cli.errors import MtlError

    with pytest.raises(MtlError, match="sharing.train_encoder=true"):
        check_overrides(["sharing=adapters", "loss_weighting=pcgrad"], {}, multirun=False)
    check_overrides(["sharing=adapters", "sharing.train_encoder=true", "loss_weighting=pcgrad"], {}, multirun=False)


def test_eval_refuses_an_adapter_run_whose_base_cannot_be_rebuilt(tmp_path: Path) -> None:
    """A random-init base is rebuilt from the training seed: a changed seed must be caught, not scored."""
    from mtl_cli.checkpoints import write_manifest
    from mtl_cli.errors import MtlError

    run = short_run(tmp_path, "sharing=adapters", "sharing.lora_r=4")
    base = run / "checkpoints" / "best" / "base_encoder.json"
    ref = json.loads(base.read_text())
    assert ref["fingerprint"]
    base.write_text(json.dumps({**ref, "seed": ref["seed"] + 1}))
    write_manifest(base.parent)  # an intact checkpoint whose base no longer rebuilds (else the SHA-256 fails first)
    with pytest.raises(MtlError, match="base encoder differs"):
        evaluate_run(str(run), split="test")
