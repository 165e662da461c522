"""The multi-task model: a trunk (the sharing scheme over the encoder) and one head per task.

Each head comes from its task type (`mtl_cli/task_types`) and is called as head(hidden, batch),
with the trunk's last hidden states.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtl_cli import sharing as sharing_schemes
from mtl_cli import task_types


class MultiTaskModel(nn.Module):
    """trunk (the sharing scheme: hidden states for a task) + one head per task."""

    def __init__(self, trunk: Any, heads: dict[str, nn.Module], embedding_tasks: Sequence[str] = ()):
        super().__init__()
        self.trunk: Any = trunk  # a sharing scheme's Trunk (mtl_cli/sharing)
        self.heads: Any = nn.ModuleDict(heads)
        # T5's and BART's encoders have no segment embeddings (their forward takes **kwargs and would
        # pass the ids on unread): text pairs reach them as one sequence.
        params = inspect.signature(trunk.encoder.forward).parameters
        self.takes_token_types = "token_type_ids" in params or hasattr(trunk.encoder.config, "type_vocab_size")
        # Tasks with `task_marker: embedding` add a learned vector to every input embedding.
        self.task_index = {task: i for i, task in enumerate(embedding_tasks)}
        if embedding_tasks:
            self.task_embeddings: Any = nn.Embedding(len(embedding_tasks), trunk.encoder.config.hidden_size)
            nn.init.zeros_(self.task_embeddings.weight)

    @property
    def encoder(self) -> Any:
        return self.trunk.encoder

    def forward(self, task: str, batch: dict) -> Any:
        inputs = {"attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and self.takes_token_types:
            inputs["token_type_ids"] = batch["token_type_ids"]
        if task in self.task_index:
            embeds = self.encoder.get_input_embeddings()(batch["input_ids"])
            index = torch.tensor(self.task_index[task], device=embeds.device)
            inputs["inputs_embeds"] = embeds + self.task_embeddings(index)
        else:
            inputs["input_ids"] = batch["input_ids"]
        return self.heads[task](self.trunk(task, **inputs), batch)

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Heads that write text (seq2seq) decode with the run's tokenizer."""
        for head in self.heads.values():
            if hasattr(head, "tokenizer"):
                head.tokenizer = tokenizer

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.trunk.shared_parameters()

    def parameter_counts(self) -> dict:
        """Shared (used by every task), per task (only that task), trainable and total, each counted once."""
        seen: set[int] = set()

        def count(params) -> int:
            fresh = [p for p in params if id(p) not in seen]
            seen.update(id(p) for p in fresh)
            return sum(p.numel() for p in fresh)

        in_trunk = {id(p) for p in self.trunk.parameters()}
        per_task = {}
        for task, head in self.heads.items():
            # A head may reuse trunk weights (an MLM decoder tied to the embeddings): those are shared.
            own = [*self.trunk.task_parameters(task), *(p for p in head.parameters() if id(p) not in in_trunk)]
            per_task[task] = count(own)
        if self.task_index:
            per_task["task_embeddings"] = count(self.task_embeddings.parameters())
        unique = {id(p): p for p in self.parameters()}.values()
        shared = sum(p.numel() for p in unique if id(p) not in seen)
        return {
            "shared": shared,
            "shared_trainable": sum(p.numel() for p in unique if id(p) not in seen and p.requires_grad),
            "per_task": per_task,
            "trainable": sum(p.numel() for p in unique if p.requires_grad),
            "total": sum(p.numel() for p in unique),
        }


def build_model(encoder: Any, task_cfgs: dict, labels: dict[str, list[str] | None], sharing: Any) -> MultiTaskModel:
    trunk = sharing_schemes.get(sharing.name).build(encoder, list(task_cfgs), sharing)
    hidden = trunk.encoder.config.hidden_size
    heads = {
        name: task_types.get(cfg.type).build_head(hidden, labels[name], trunk.encoder, sharing)
        for name, cfg in task_cfgs.items()
    }
    decoders: dict[str, Any] = {}  # seq2seq tasks naming the same `decoder` train one module
    for name, cfg in task_cfgs.items():
        head = heads[name]
        if hasattr(head, "configure"):
            head.configure(cfg)
        if getattr(cfg, "decoder", None) and hasattr(head, "decoder"):
            head.decoder = decoders.setdefault(cfg.decoder, head.decoder)
    embedding_tasks = [name for name, cfg in task_cfgs.items() if cfg.task_marker == "embedding"]
    return MultiTaskModel(trunk, heads, embedding_tasks)
