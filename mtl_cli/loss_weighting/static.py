"""Static weights: a fixed weight per task from `loss_weighting.weights` (tasks not named get 1.0).

The step's loss is sum_i w_i * L_i; with one task per step, the sampled task's loss times its weight.
"""

from __future__ import annotations

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.weighted import weighted_backward

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = False
ACTS_ON_SHARED_GRADIENTS = False
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = True


class Static:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str], weights: dict[str, float]):
        self.tasks = tasks
        self._weights = {task: float(weights.get(task, 1.0)) for task in tasks}

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> torch.Tensor:
        """Set the gradients; returns the (detached) loss it differentiated."""
        return weighted_backward(losses, self._weights).detach()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> Static:
    return Static(tasks, cfg.weights)
