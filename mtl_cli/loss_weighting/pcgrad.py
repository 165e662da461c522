"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient of the shared parameters is projected onto the normal plane of every other
task's gradient it conflicts with (negative dot product), the others taken in a random order:
g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j; the shared parameters get the sum of the projected
gradients (`surgery.pcgrad`). The task heads get their own loss's gradient unchanged.
"""

from __future__ import annotations

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.surgery import pcgrad, task_gradients, write_gradient

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = True
ACTS_ON_SHARED_GRADIENTS = True
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = False


class PCGrad:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str], seed: int = 0):
        self.tasks = tasks
        self.generator = torch.Generator().manual_seed(seed)

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> None:
        grads, _ = task_gradients(losses, shared)
        write_gradient(shared, pcgrad(grads, self.generator))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> PCGrad:
    return PCGrad(tasks)
