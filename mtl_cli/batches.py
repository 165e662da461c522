"""Batches: shuffled single-task training batches and length-sorted evaluation batches.

Each batch is padded only to its own longest sequence (dynamic padding). Training order is a
pure function of (seed, task index, epoch), so the position in it is two integers, which is
all a resumed run needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def pad(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class TaskBatches:
    """Endless shuffled epochs over one task's training examples."""

    def __init__(self, input_ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int, seed: int):
        self.input_ids, self.labels = input_ids, labels
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.position : self.position + self.batch_size]
        self.position += len(idx)
        batch = pad([self.input_ids[i] for i in idx], self.pad_id)
        batch["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def eval_batches(input_ids: list[list[int]], batch_size: int, pad_id: int) -> Iterator[tuple[list[int], dict]]:
    """Batches sorted by length, so little compute goes to padding; yields original indices too."""
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, pad([input_ids[i] for i in idx], pad_id)
