"""Multi-gate Mixture-of-Experts (Ma et al. 2018, KDD) on top of the shared encoder.

`sharing.num_experts` feed-forward experts, Linear(H, expert_hidden) -> GELU -> Linear(expert_hidden, H),
are applied to every token's hidden state, so sequence and token heads both work. Each task has
its own gate, Linear(H, num_experts) on the (mask-aware) mean of the encoder output followed by a
softmax: one mixture per example, the same for all of its tokens. A task's hidden states are

    encoder_output + sum_k gate_k * expert_k(encoder_output)

Shared: the encoder and the experts. Per task: its gate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_cli.config import SharingConfig

# The shared encoder is trained (read by mtl_cli.validation; see __init__).
FREEZES_ENCODER = False


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MMoETrunk(nn.Module):
    def __init__(self, encoder: Any, tasks: list[str], num_experts: int, expert_hidden: int):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, expert_hidden), nn.GELU(), nn.Linear(expert_hidden, hidden))
            for _ in range(num_experts)
        )
        self.gates = nn.ModuleDict({task: nn.Linear(hidden, num_experts) for task in tasks})
        # Gate weights (detached): the last batch's mean per task, and sums since `gate_summary`.
        self._last: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(**inputs).last_hidden_state  # [B, T, H]
        logits = self.gates[task](masked_mean(hidden, inputs.get("attention_mask")))
        gates = torch.softmax(logits.float(), dim=-1)  # [B, E]; in fp32 under bf16 autocast: weights sum to 1
        experts = torch.stack([expert(hidden) for expert in self.experts], dim=-1)  # [B, T, H, E]
        mixed = (experts * gates[:, None, None, :]).sum(-1)
        self._record(task, gates.detach())
        # Residual: the experts start random, so without it the heads would first see a random
        # projection of the encoder; with it the pretrained representation stays reachable at init
        # (the experts only have to learn a correction) and the encoder keeps a direct gradient path.
        return hidden + mixed

    def _record(self, task: str, gates: torch.Tensor) -> None:
        gates = gates.float()
        self._last[task] = gates.mean(0)
        self._sums[task] = self._sums[task] + gates.sum(0) if task in self._sums else gates.sum(0)
        self._counts[task] = self._counts.get(task, 0) + gates.shape[0]

    @property
    def last_gates(self) -> dict[str, list[float]]:
        """Per task, its gate weights in the last batch it ran (mean over the batch)."""
        return {task: g.tolist() for task, g in self._last.items()}

    def gate_summary(self) -> dict[str, list[float]]:
        """Per task, the mean weight of each expert over every example since the last call (train and
        eval forwards alike); resets the sums. Tasks that ran no batch since then are left out."""
        summary = {task: (s / self._counts[task]).tolist() for task, s in self._sums.items()}
        self._sums, self._counts = {}, {}
        return summary

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.encoder.parameters(), *self.experts.parameters()] if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.gates[task].parameters() if p.requires_grad]


def build(encoder: Any, tasks: list[str], cfg: SharingConfig) -> MMoETrunk:
    return MMoETrunk(encoder, list(tasks), cfg.num_experts, cfg.expert_hidden)
