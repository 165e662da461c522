"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics").

Each task i has a learnable log-variance s_i = log sigma_i^2 (initialised to 0, i.e. weight 1) and
contributes

    L_i' = exp(-s_i) * L_i + s_i

The paper derives 1/sigma^2 * L + log sigma for classification and 1/(2 sigma^2) * L + log sigma for
regression; those differ from the form above only by constant factors on L and on the regulariser.
We use the single `exp(-s) L + s` form for every task type, as the authors' implementation and
LibMTL do: it is the same for all task types and optimising s rather than sigma is numerically stable.
d L_i' / d s_i = 1 - exp(-s_i) L_i, so s_i settles where exp(-s_i) = 1 / L_i.

`parameters()` are the s_i: the training loop's optimizer updates them with the model. Only the
tasks in a step's `losses` get a gradient, so one task per step works (the others' s_j wait).
"""

from __future__ import annotations

from typing import Any

import torch

from mtl_cli.config import LossWeightingConfig

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = False
ACTS_ON_SHARED_GRADIENTS = False
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = False


class Uncertainty:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str]):
        self.tasks = tasks
        self.log_vars = {task: torch.nn.Parameter(torch.zeros(())) for task in tasks}

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.log_vars.values())

    def weights(self) -> dict[str, float]:
        return {task: float(torch.exp(-s.detach())) for task, s in self.log_vars.items()}

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> torch.Tensor:
        """Set the gradients; returns the (detached) loss it differentiated."""
        total: Any = 0.0
        for task, loss in losses.items():
            # The s_i stay where they were built (the CPU); the copy on the loss's device keeps the graph.
            s = self.log_vars[task].to(loss.device)
            total = total + torch.exp(-s) * loss + s
        total.backward()
        return total.detach()

    def state_dict(self) -> dict:
        return {"log_vars": {task: float(s.detach()) for task, s in self.log_vars.items()}}

    def load_state_dict(self, state: dict) -> None:
        # In place: the optimizer holds these very Parameter objects.
        with torch.no_grad():
            for task, value in state["log_vars"].items():
                self.log_vars[task].fill_(value)


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> Uncertainty:
    return Uncertainty(tasks)
