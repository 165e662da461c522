"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning with
Attention", section 3.3).

    w_i(t) = N * exp(r_i(t-1) / T) / sum_j exp(r_j(t-1) / T),    r_i(t-1) = L_i(t-1) / L_i(t-2)

L_i(t) is task i's average (unweighted) training loss over epoch t, N the number of tasks and T the
temperature (`loss_weighting.temperature`, 2 in the paper). The weights sum to N and are fixed for the
whole epoch. Here an epoch is `steps_per_epoch` calls to `backward` (optimizer steps); w_i = 1 during
the first two epochs, before two averages exist. With one task per step each task's average is over
the steps that sampled it; a task with no step in an epoch keeps its previous average, and a ratio
with no (or a zero) denominator counts as 1, i.e. no change.
"""

from __future__ import annotations

import math

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting.weighted import weighted_backward

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = False
ACTS_ON_SHARED_GRADIENTS = False
SUPPORTS_EARLY_STOPPING = True
SUPPORTS_ACCUMULATION = True


class DWA:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str], temperature: float, steps_per_epoch: int):
        self.tasks = tasks
        self.temperature = temperature
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.step = 0
        self._sums = dict.fromkeys(tasks, 0.0)
        self._counts = dict.fromkeys(tasks, 0)
        # Average loss of each task over the last two finished epochs, oldest first.
        self._history: list[dict[str, float | None]] = []
        self._weights = dict.fromkeys(tasks, 1.0)

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> torch.Tensor:
        """Set the gradients; returns the (detached) loss it differentiated."""
        total = weighted_backward(losses, self._weights)
        for task, loss in losses.items():
            self._sums[task] += float(loss.detach())
            self._counts[task] += 1
        self.step += 1
        if self.step % self.steps_per_epoch == 0:
            self._end_epoch()
        return total.detach()

    def _end_epoch(self) -> None:
        previous = self._history[-1] if self._history else dict.fromkeys(self.tasks)
        averages = {
            task: self._sums[task] / self._counts[task] if self._counts[task] else previous[task] for task in self.tasks
        }
        self._history = [*self._history, averages][-2:]
        self._sums = dict.fromkeys(self.tasks, 0.0)
        self._counts = dict.fromkeys(self.tasks, 0)
        if len(self._history) == 2:
            self._weights = self.compute_weights(*self._history)

    def compute_weights(self, older: dict[str, float | None], newer: dict[str, float | None]) -> dict[str, float]:
        ratios = {}
        for task in self.tasks:
            before, after = older[task], newer[task]
            ratios[task] = after / before if before and after is not None else 1.0
        # Subtracting the largest ratio leaves the softmax unchanged and keeps exp from overflowing.
        top = max(ratios.values())
        exps = {task: math.exp((r - top) / self.temperature) for task, r in ratios.items()}
        total = sum(exps.values())
        return {task: len(self.tasks) * e / total for task, e in exps.items()}

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "sums": dict(self._sums),
            "counts": dict(self._counts),
            "history": [dict(h) for h in self._history],
            "weights": dict(self._weights),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self._sums = dict(state["sums"])
        self._counts = dict(state["counts"])
        self._history = [dict(h) for h in state["history"]]
        self._weights = dict(state["weights"])


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> DWA:
    return DWA(tasks, cfg.temperature, steps_per_epoch)
