"""Batches: shuffled single-task training batches and length-sorted evaluation batches.

Each batch is padded only to its own longest sequence (dynamic padding); the task type's
`collate` builds its tensors. Training order and any random masking are pure functions of
(seed, epoch, position), so the position in the data is two integers, which is all a resumed
run needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Columns = dict[str, list]


def rows(columns: Columns, idx) -> list[dict]:
    return [{key: values[i] for key, values in columns.items()} for i in idx]


class TaskBatches:
    """Endless shuffled epochs over one task's training examples."""

    def __init__(self, columns: Columns, collate: Callable, batch_size: int, pad_id: int, seed: int):
        self.columns, self.collate = columns, collate
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.size = len(columns["input_ids"])
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next_batch(self) -> dict:
        if self.position >= self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.position : self.position + self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, self.position])
        self.position += len(idx)
        return self.collate(rows(self.columns, idx), self.pad_id, rng)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def eval_batches(columns: Columns, collate: Callable, batch_size: int, pad_id: int) -> Iterator[dict]:
    """Batches sorted by length, so little compute goes to padding; masking (MLM) is fixed per run."""
    lengths = columns["input_ids"]
    order = sorted(range(len(lengths)), key=lambda i: len(lengths[i]))
    rng = np.random.default_rng(0)
    for start in range(0, len(order), batch_size):
        yield collate(rows(columns, order[start : start + batch_size]), pad_id, rng)
