"""What the sequence-level types (classification, regression, multi-label) share: a text or a
pair in, one target per example out, a pooled head; they differ in the target's dtype, head size
and loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mtl_cli.batches import pad_inputs
from mtl_cli.config import TaskConfig
from mtl_cli.tokenization import encode_texts


def columns(cfg: TaskConfig) -> dict[str, str]:
    roles = {"text": cfg.text_column, "label": cfg.label_column}
    if cfg.text_pair_column:
        roles["text_pair"] = cfg.text_pair_column
    return roles


def encode(batch: dict[str, list], tokenizer: Any, cfg: TaskConfig, labels: list[str] | None, marker_id=None) -> dict:
    enc = encode_texts(tokenizer, batch["text"], batch.get("text_pair"), cfg, marker_id)
    enc["labels"] = batch["label"]
    return enc


def collate_with(dtype: torch.dtype) -> Callable[[list[dict], int, Any], dict[str, torch.Tensor]]:
    def collate(rows: list[dict], pad_id: int, rng: Any) -> dict[str, torch.Tensor]:
        batch = pad_inputs(rows, pad_id)
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch

    return collate


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SequenceHead(nn.Module):
    """Pooled sequence -> dropout -> linear: classification, regression, multi-label."""

    def __init__(self, hidden_size: int, num_outputs: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.out(self.dropout(pool(hidden, batch["attention_mask"], self.pooling)))
