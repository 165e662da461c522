"""trainer.gradient_accumulation_steps: K micro-batches of B make the same update as one batch of K x B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_run
from tests.test_bad_input import assert_one_line_error

# No dropout anywhere: with it, the two runs would draw their masks differently.
NO_DROPOUT = [
    "+encoder.config_overrides.hidden_dropout_prob=0.0",
    "+encoder.config_overrides.attention_probs_dropout_prob=0.0",
    "sharing.head_dropout=0.0",
]


def weights(run: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(run["run_dir"]) / "checkpoints" / "last" / "model.safetensors")


def test_two_micro_batches_of_four_equal_one_batch_of_eight(tmp_path: Path) -> None:
    whole = tiny_run(tmp_path / "whole", *NO_DROPOUT, "trainer.batch_size=8")
    split = tiny_run(tmp_path / "split", *NO_DROPOUT, "trainer.batch_size=4", "trainer.gradient_accumulation_steps=2")
    a, b = weights(whole), weights(split)
    assert a.keys() == b.keys()
    # Summation order differs (two backward passes), so equal to float rounding, not bit for bit.
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    moved = max(float((a[k].float() - load_file_init(whole, k)).abs().max()) for k in a if "out.weight" in k)
    assert moved > 1e-4 > worst * 10  # the runs really trained: the comparison is not of two untouched models
    for task in ("restaurants", "electronics"):
        assert split["results"][task]["accuracy"] == pytest.approx(whole["results"][task]["accuracy"], abs=1e-9)
    state_a = json.loads((Path(whole["run_dir"]) / "checkpoints" / "last" / "trainer_state.json").read_text())
    state_b = json.loads((Path(split["run_dir"]) / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state_a["step"] == state_b["step"] == 8
    assert state_a["examples_seen"] == state_b["examples_seen"]


def load_file_init(run: dict, key: str) -> torch.Tensor:
    """The tensor at the first checkpoint the run kept (step 4 of 8): what training moved since."""
    steps = sorted((Path(run["run_dir"]) / "checkpoints").glob("step-*"))
    return load_file(steps[0] / "model.safetensors")[key].float()


def test_an_epoch_counts_accumulated_steps(tmp_path: Path) -> None:
    """One epoch sees every training example once: with K=2 it takes half the steps of K=1."""
    run = tiny_run(
        tmp_path, "trainer.max_steps=null", "trainer.epochs=1", "trainer.eval_every=1000",
        "trainer.batch_size=8", "trainer.gradient_accumulation_steps=2",
    )  # fmt: skip
    state = json.loads((Path(run["run_dir"]) / "checkpoints" / "last" / "trainer_state.json").read_text())
    total = sum(state["examples_seen"].values())
    assert state["step"] == -(-480 // 16)  # the two demo tasks: 240 training examples each
    assert total == state["step"] * 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.gradient_accumulation_steps=0"], "`trainer.gradient_accumulation_steps` must be positive; got 0"),
        (["trainer.gradient_accumulation_steps=2", "loss_weighting=pcgrad"], "raise trainer.batch_size instead"),
        (["trainer.gradient_accumulation_steps=2", "loss_weighting=uncertainty"], "cannot accumulate gradients"),
    ],
)
def test_settings_it_cannot_run_are_one_line(mtl, tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = mtl("train", "experiment=smoke", "trainer.progress=false", *overrides, cwd=tmp_path)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "runs").exists()
