"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

The shared parameters get the update d that maximises the worst task's improvement
min_i g_i . d within ||d - g0|| <= c ||g0|| of the average gradient g0 (`surgery.cagrad`,
`loss_weighting.c`); c = 0 is the average gradient. The task heads get their own loss's gradient.

weights() reports the last solved dual weights w* times the number of tasks (1.0 each for the
average gradient): a task above 1 is one the update leaned towards, being the worst served.
`conflicts()`: as PCGrad's, how often the task gradients conflicted since the last evaluation.
"""

from __future__ import annotations

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.surgery import ConflictStats, cagrad_with_weights, gram, task_gradients, write_gradient

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = True
ACTS_ON_SHARED_GRADIENTS = True
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = False


class CAGrad:
    needs_all_tasks = NEEDS_ALL_TASKS
    # weights() are the solved simplex weights (x n): 0 means the update leaned away from that task's
    # direction, not that the task stopped training (the mean gradient is always in the update).
    weights_can_collapse = False

    def __init__(self, tasks: list[str], c: float):
        self.tasks = tasks
        self.c = c
        self.last = dict.fromkeys(tasks, 1.0)
        self.stats = ConflictStats(tasks)

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict(self.last)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> None:
        grads, _ = task_gradients(losses, shared)
        G = gram(grads)
        self.stats.add(list(losses), G)
        update, w = cagrad_with_weights(grads, self.c, G)
        write_gradient(shared, update)
        self.last.update({task: float(wi) * len(w) for task, wi in zip(losses, w, strict=True)})

    def conflicts(self, reset_at: int | None = None) -> ConflictStats:
        """See PCGrad.conflicts: the window since the last reset; `reset_at` starts a new one."""
        return self.stats.snapshot(reset_at)

    def state_dict(self) -> dict:
        return {"conflicts": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "conflicts" in state:  # a checkpoint written before the statistics starts an empty window
            self.stats.load_state_dict(state["conflicts"])


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> CAGrad:
    return CAGrad(tasks, cfg.c)
