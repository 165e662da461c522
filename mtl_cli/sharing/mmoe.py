"""Multi-gate Mixture-of-Experts (Ma et al. 2018, KDD) on top of the shared encoder.

`sharing.num_experts` feed-forward experts, Linear(H, expert_hidden) -> GELU -> Linear(expert_hidden, H),
are applied to every token's hidden state, so sequence and token heads both work. Each task has
its own gate, Linear(H, num_experts) on the (mask-aware) mean of the encoder output followed by a
softmax: one mixture per example, the same for all of its tokens. A task's hidden states are

    encoder_output + sum_k gate_k * expert_k(encoder_output)

Shared: the encoder and the experts. Per task: its gate.

The gate statistics (`gate_summary`: sums since the last evaluation) are part of where training
stands: `running_state` goes into every checkpoint's trainer_state.json (`trunk`), and a resume
puts it back with `load_running_state`, so the first record after a resume is the uninterrupted
run's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_cli.config import SharingConfig
from mtl_cli.errors import MtlError

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

    def running_state(self) -> dict[str, dict]:
        """The gate statistics, as JSON (float32 values as Python floats: they come back exactly)."""
        return {
            "last": {task: g.tolist() for task, g in self._last.items()},
            "sums": {task: s.tolist() for task, s in self._sums.items()},
            "counts": dict(self._counts),
        }

    def load_running_state(self, state: dict) -> None:
        """Put back what `running_state` returned (an empty `state`, from an older checkpoint: none)."""
        experts = len(self.experts)
        device = next(self.gates.parameters()).device
        last, sums, counts = state.get("last", {}), state.get("sums", {}), state.get("counts", {})
        ok = all(isinstance(part, dict) and set(part) <= set(self.gates) for part in (last, sums, counts))
        ok = ok and set(sums) == set(counts)
        ok = ok and all(isinstance(v, list) and len(v) == experts for v in [*last.values(), *sums.values()])
        ok = ok and all(type(n) is int and n > 0 for n in counts.values())
        if not ok:
            raise MtlError(
                f"the checkpoint's MMoE gate statistics do not fit this model ({experts} experts, tasks "
                f"{sorted(self.gates)}); the checkpoint is damaged or was not written by this run"
            )
        self._last = {task: torch.tensor(v, dtype=torch.float32, device=device) for task, v in last.items()}
        self._sums = {task: torch.tensor(v, dtype=torch.float32, device=device) for task, v in sums.items()}
        self._counts = dict(counts)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.encoder.parameters(), *self.experts.parameters()] if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.gates[task].parameters() if p.requires_grad]


def build(encoder: Any, tasks: list[str], cfg: SharingConfig) -> MMoETrunk:
    return MMoETrunk(encoder, list(tasks), cfg.num_experts, cfg.expert_hidden)
