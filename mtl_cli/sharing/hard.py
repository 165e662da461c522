"""Hard parameter sharing: one encoder, every parameter shared; only the heads are per task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_cli.config import SharingConfig

# The shared encoder is trained (read by mtl_cli.validation; see __init__).
FREEZES_ENCODER = False


class HardTrunk(nn.Module):
    def __init__(self, encoder: Any):
        super().__init__()
        self.encoder = encoder

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(**inputs).last_hidden_state

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []


def build(encoder: Any, tasks: list[str], cfg: SharingConfig) -> HardTrunk:
    return HardTrunk(encoder)
