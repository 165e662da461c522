"""Training batches: length grouping keeps padding low while every epoch still sees every example
once, in an order that is random and a pure function of (seed, epoch, batch number)."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_cli.batches import TaskBatches
from mtl_cli.errors import MtlError
from mtl_cli.task_types import classification
from tests.conftest import tiny_run

PAD = 0


def columns(n: int = 1000, seed: int = 0) -> dict[str, list]:
    """Lengths drawn like review lengths: many short texts, a long tail."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(4, 0.8, n).astype(int), 3, 256)
    return {"input_ids": [[i + 1] * int(k) for i, k in enumerate(lengths)], "labels": [i % 2 for i in range(n)]}


def epoch(batches: TaskBatches) -> list[list[int]]:
    """The row ids (first token - 1) of one epoch's batches, drawn through `next_batch`."""
    out = []
    for _ in range(len(batches._batches)):
        ids = batches.next_batch()["input_ids"]
        out.append([int(row[0]) - 1 for row in ids])
    return out


def real_fraction(batches: list[list[int]], cols: dict) -> float:
    lengths = [[len(cols["input_ids"][i]) for i in b] for b in batches]
    return sum(map(sum, lengths)) / sum(max(b) * len(b) for b in lengths)


@pytest.mark.parametrize("group", [0, 50])
def test_each_epoch_sees_every_example_once(group: int) -> None:
    cols = columns()
    b = TaskBatches(cols, classification.collate, 32, PAD, seed=3, group=group)
    for _ in range(2):
        seen = [i for batch in epoch(b) for i in batch]
        assert sorted(seen) == list(range(1000))


def test_grouping_cuts_padding_and_keeps_the_order_random() -> None:
    cols = columns()
    plain = epoch(TaskBatches(cols, classification.collate, 32, PAD, seed=3, group=0))
    grouped_batches = TaskBatches(cols, classification.collate, 32, PAD, seed=3, group=50)
    grouped = epoch(grouped_batches)
    assert real_fraction(plain, cols) < 0.6
    assert real_fraction(grouped, cols) > 0.9
    # Batch lengths are not sorted over the epoch (the batches are shuffled) ...
    longest = [max(len(cols["input_ids"][i]) for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # ... and the next epoch groups the examples differently.
    assert {tuple(sorted(b)) for b in epoch(grouped_batches)} != {tuple(sorted(b)) for b in grouped}


def test_order_is_a_function_of_seed_epoch_and_position() -> None:
    cols = columns(300)
    a = TaskBatches(cols, classification.collate, 16, PAD, seed=1, group=4)
    first = epoch(a) + epoch(a)[:5]
    b = TaskBatches(cols, classification.collate, 16, PAD, seed=1, group=4)
    epoch(b)
    b.next_batch()
    state = b.state_dict()
    c = TaskBatches(cols, classification.collate, 16, PAD, seed=1, group=4)
    c.load_state_dict(state)  # a resumed run continues exactly where the saved one was
    assert epoch(c)[:4] == first[len(first) - 4 :]
    assert epoch(TaskBatches(cols, classification.collate, 16, PAD, seed=2, group=4)) != first[:19]


def test_a_checkpoint_from_before_batch_numbers_is_refused() -> None:
    b = TaskBatches(columns(50), classification.collate, 8, PAD, seed=1)
    with pytest.raises(MtlError, match="older mtl"):
        b.load_state_dict({"epoch": 0, "position": 16})


def test_bf16_training_with_length_grouping_runs_and_reports_throughput(tmp_path) -> None:
    out = tiny_run(tmp_path, "trainer.max_steps=40", "trainer.precision=bf16", "trainer.eval_every=20")
    timing = out["timing"]
    assert timing["train_steps"] == 40 and timing["train_examples"] == 40 * 8
    assert timing["real_token_fraction"] > 0.9 and timing["train_examples_per_second"] > 0
    assert 0 <= out["results"]["average"]["accuracy"] <= 1
    plain = tiny_run(tmp_path, "trainer.max_steps=40", "trainer.length_grouping=0", "trainer.eval_every=20")
    assert plain["timing"]["real_token_fraction"] < timing["real_token_fraction"]
