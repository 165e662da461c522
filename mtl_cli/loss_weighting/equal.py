"""Equal weights: the plain sum of the step's task losses (with one task per step, its loss)."""

from __future__ import annotations

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.weighted import weighted_backward

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = False
ACTS_ON_SHARED_GRADIENTS = False
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = True


class Equal:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str]):
        self.tasks = tasks

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> None:
        weighted_backward(losses, self.weights())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> Equal:
    return Equal(tasks)
