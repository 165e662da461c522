"""Batches: shuffled single-task training batches, length-sorted evaluation batches, padding.

Each batch is padded only to its own longest sequence (dynamic padding); the task type's
`collate` builds its tensors. Training order and any random masking are pure functions of
(seed, epoch, batch number), so the position in the data is two integers, which is all a
resumed run needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtl_cli.errors import MtlError

Columns = dict[str, list]


@dataclass
class Drawn:
    """One planned batch as this process trains it."""

    pieces: list[dict]  # collated micro-batches (one without accumulation)
    shares: list[float]  # each piece's share of the planned batch's examples (0 for a stand-in)
    examples: int  # examples in the planned batch, over all ranks


def rows(columns: Columns, idx) -> list[dict]:
    return [{key: values[i] for key, values in columns.items()} for i in idx]


class TaskBatches:
    """Endless shuffled epochs over one task's training examples.

    With `group` > 1 (length grouping), each epoch's shuffled examples are cut into groups of
    `group` batches; each group is sorted by length and cut into batches, and all the epoch's
    batches are then shuffled. A batch so holds examples of similar length (little padding),
    while which examples meet in a batch, and the order of batches, stay random. `group` <= 1
    gives plain random batches.
    """

    def __init__(self, columns: Columns, collate: Callable, batch_size: int, pad_id: int, seed: int, group: int = 0):
        self.columns, self.collate = columns, collate
        self.batch_size, self.pad_id, self.seed, self.group = batch_size, pad_id, seed, group
        self.size = len(columns["input_ids"])
        self.lengths = np.fromiter(map(len, columns["input_ids"]), dtype=np.int64, count=self.size)
        self.epoch, self.batch = 0, 0
        self._batches = self._plan()

    def _plan(self) -> list[np.ndarray]:
        """The epoch's batches, a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order, bs = rng.permutation(self.size), self.batch_size
        if self.group <= 1:
            return [order[i : i + bs] for i in range(0, self.size, bs)]
        batches = []
        for start in range(0, self.size, bs * self.group):
            chunk = order[start : start + bs * self.group]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self) -> dict:
        return self.draw(1).pieces[0]

    def next_batches(self, parts: int) -> list[dict]:
        return self.draw(parts).pieces

    def draw(self, parts: int, rank: int = 0, world: int = 1) -> Drawn:
        """The next planned batch: this rank's slice of it (`world` > 1, data parallel), collated as
        `parts` micro-batches (gradient accumulation), each padded to its own longest row."""
        if self.batch >= len(self._batches):
            self.epoch, self.batch = self.epoch + 1, 0
            self._batches = self._plan()
        idx = self._batches[self.batch]
        rng = np.random.default_rng([self.seed, self.epoch, self.batch])  # e.g. MLM masking
        self.batch += 1
        mine = np.array_split(idx, world)[rank] if world > 1 else idx
        if len(mine) == 0:
            # An epoch's last batch with fewer examples than ranks: a stand-in example with no weight
            # keeps this rank's forward and backward in step with the others (DDP reduces every step).
            pieces, shares = [idx[:1]], [0.0]
        else:
            pieces = np.array_split(mine, min(parts, len(mine))) if parts > 1 else [mine]
            shares = [len(piece) / len(idx) for piece in pieces]
        batches = [self.collate(rows(self.columns, piece), self.pad_id, rng) for piece in pieces]
        return Drawn(batches, shares, len(idx))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "batch" not in state:
            raise MtlError(
                "this checkpoint was written by an older mtl whose batch order differs; it cannot be resumed"
            )
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._batches = self._plan()


def eval_batches(columns: Columns, collate: Callable, batch_size: int, pad_id: int) -> Iterator[dict]:
    """Batches sorted by length, so little compute goes to padding; masking (MLM) is fixed per run."""
    lengths = columns["input_ids"]
    order = sorted(range(len(lengths)), key=lambda i: len(lengths[i]))
    rng = np.random.default_rng(0)
    for start in range(0, len(order), batch_size):
        yield collate(rows(columns, order[start : start + batch_size]), pad_id, rng)


def pad_inputs(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids padded to the longest row of this batch, attention_mask, token_type_ids if present."""
    longest = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in rows[0]:
        token_type_ids = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            token_type_ids[i, : len(r["token_type_ids"])] = torch.tensor(r["token_type_ids"], dtype=torch.long)
        batch["token_type_ids"] = token_type_ids
    return batch


def pad_sequences(seqs: list[list], value: Any, dtype: torch.dtype) -> torch.Tensor:
    """Per-token values (tags, MLM targets) padded to the longest row with `value`."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=dtype)
    return out
