"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient of the shared parameters is projected onto the normal plane of every other
task's gradient it conflicts with (negative dot product), the others taken in a random order:
g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j; the shared parameters get the sum of the projected
gradients (`surgery.pcgrad`). The task heads get their own loss's gradient unchanged.

`conflicts()`: how often the task gradients conflicted since the last evaluation, and each pair's
mean cosine (`surgery.ConflictStats`, from the Gram matrix the projection uses anyway).
"""

from __future__ import annotations

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.surgery import ConflictStats, gram, pcgrad, task_gradients, write_gradient

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
        self.stats = ConflictStats(tasks)

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> None:
        grads, _ = task_gradients(losses, shared)
        G = gram(grads)
        self.stats.add(list(losses), G)
        write_gradient(shared, pcgrad(grads, self.generator, G))

    def conflicts(self, reset_at: int | None = None) -> ConflictStats:
        """A copy of the gradient conflicts since the last reset; with `reset_at` (the step of an
        evaluation) a new window starts there. Between evaluations (a tracker) read without
        `reset_at`, or the evaluation's window loses those steps."""
        return self.stats.snapshot(reset_at)

    def state_dict(self) -> dict:
        # The window since the last evaluation too, so a resume from a save_every checkpoint reports it whole.
        return {"generator": self.generator.get_state(), "conflicts": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if "conflicts" in state:  # a checkpoint written before the statistics starts an empty window
            self.stats.load_state_dict(state["conflicts"])


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> PCGrad:
    return PCGrad(tasks)
