"""The multi-task model: one shared encoder (hard sharing), one classification head per task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_cli.config import SharingConfig


class ClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: Any, num_labels: dict[str, int], sharing: SharingConfig):
        super().__init__()
        self.encoder = encoder
        self.pooling = sharing.pooling
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {task: ClassificationHead(hidden, n, sharing.head_dropout) for task, n in num_labels.items()}
        )

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.heads[task](pool(hidden, attention_mask, self.pooling))

    def parameter_counts(self) -> dict[str, int]:
        counts = {"shared": sum(p.numel() for p in self.encoder.parameters())}
        for task, head in self.heads.items():
            counts[f"head:{task}"] = sum(p.numel() for p in head.parameters())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts
