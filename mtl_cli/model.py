"""The multi-task model: one shared encoder (hard sharing) and one head per task.

Each head comes from its task type (`mtl_cli/task_types`) and is called as head(hidden, batch),
with the encoder's last hidden states.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: Any, heads: dict[str, nn.Module], embedding_tasks: list[str] = ()):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        # Tasks with `task_marker: embedding` add a learned vector to every input embedding.
        self.task_index = {task: i for i, task in enumerate(embedding_tasks)}
        if embedding_tasks:
            self.task_embeddings = nn.Embedding(len(embedding_tasks), encoder.config.hidden_size)
            nn.init.zeros_(self.task_embeddings.weight)

    def forward(self, task: str, batch: dict) -> Any:
        kwargs = {"attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if task in self.task_index:
            embeds = self.encoder.get_input_embeddings()(batch["input_ids"])
            index = torch.tensor(self.task_index[task], device=embeds.device)
            kwargs["inputs_embeds"] = embeds + self.task_embeddings(index)
        else:
            kwargs["input_ids"] = batch["input_ids"]
        hidden = self.encoder(**kwargs).last_hidden_state
        return self.heads[task](hidden, batch)

    def parameter_counts(self) -> dict[str, int]:
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        counts = {"shared": count(self.encoder)}
        for task, head in self.heads.items():
            # A tied MLM decoder shares the encoder's embedding matrix: count only its own weights.
            shared = {id(p) for p in self.encoder.parameters()}
            counts[f"head:{task}"] = sum(p.numel() for p in head.parameters() if id(p) not in shared)
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts


def build_model(encoder: Any, task_cfgs: dict, labels: dict[str, list[str] | None], sharing: Any) -> MultiTaskModel:
    from mtl_cli import task_types

    hidden = encoder.config.hidden_size
    heads = {
        name: task_types.get(cfg.type).build_head(hidden, labels[name], encoder, sharing)
        for name, cfg in task_cfgs.items()
    }
    embedding_tasks = [name for name, cfg in task_cfgs.items() if cfg.task_marker == "embedding"]
    return MultiTaskModel(encoder, heads, embedding_tasks)
