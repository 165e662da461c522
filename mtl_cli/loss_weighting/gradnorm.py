"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks").

Every step has one batch of every task. With learnable weights w_i (initialised to 1):

    L       = sum_i w_i L_i                        the model's loss (w_i held constant)
    G_i     = || grad_W (w_i L_i) ||_2              W: the last shared weight matrix
    G_bar   = mean_i G_i
    r_i     = L~_i / mean_j L~_j,   L~_i = L_i / L_i(0)   (L_i(0): the first step's losses)
    L_grad  = sum_i | G_i - stopgrad(G_bar * r_i^alpha) |

The model gets d L / d theta with the weights before this step's update; the weights get
d L_grad / d w only, and are updated here by their own Adam (lr `loss_weighting.weight_lr`), then
renormalised so that sum_i w_i = N with every w_i > 0. `parameters()` is therefore empty: the
training loop's optimizer must not update the weights too.

G_i is computed as w_i * ||grad_W L_i||, which equals ||grad_W (w_i L_i)|| for w_i > 0 and has the
same derivative in w_i (||grad_W L_i||), without the double-backward graph that
`autograd.grad(w_i L_i, W, create_graph=True)` would keep; LibMTL computes it the same way.
"""

from __future__ import annotations

from typing import Any

import torch

from mtl_cli.config import LossWeightingConfig
from mtl_cli.errors import MtlError

# What this method can do (read by mtl_cli.validation and the training loop; see __init__).
NEEDS_ALL_TASKS = True
ACTS_ON_SHARED_GRADIENTS = True
SUPPORTS_EARLY_STOPPING = False
SUPPORTS_ACCUMULATION = False

# Renormalisation floor: a weight Adam pushed to or below 0 comes back as a small positive one.
MIN_WEIGHT = 1e-4


class GradNorm:
    needs_all_tasks = NEEDS_ALL_TASKS

    def __init__(self, tasks: list[str], alpha: float, weight_lr: float):
        self.tasks = tasks
        self.alpha = alpha
        self.task_weights = torch.nn.Parameter(torch.ones(len(tasks)))
        self.optimizer = torch.optim.Adam([self.task_weights], lr=weight_lr)
        self.initial_losses: torch.Tensor | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.detach().tolist(), strict=True))

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> torch.Tensor:
        """Set the gradients; returns the (detached) loss it differentiated."""
        missing = [task for task in self.tasks if task not in losses]
        if missing:
            raise MtlError(f"gradnorm needs every task's loss at every step; this step lacks {missing}")
        matrices = [p for p in shared if p.ndim == 2 and p.requires_grad]
        if not matrices:
            raise MtlError("gradnorm needs a shared weight matrix (a 2-D shared parameter); this model shares none")
        last_shared = matrices[-1]
        task_losses = [losses[task] for task in self.tasks]

        norms_per_task = []
        for task, loss in zip(self.tasks, task_losses, strict=True):
            (grad,) = torch.autograd.grad(loss, last_shared, retain_graph=True, allow_unused=True)
            if grad is None:
                raise MtlError(f"task '{task}' does not reach the last shared weight matrix; gradnorm cannot weigh it")
            norms_per_task.append(grad.norm())
        # The weight arithmetic is on N numbers: do it where the weights live (the CPU).
        grad_norms = torch.stack(norms_per_task).detach().float().to(self.task_weights.device)
        loss_values = torch.stack([loss.detach() for loss in task_losses]).float().to(self.task_weights.device)

        current = self.task_weights.detach().tolist()
        model_loss: Any = sum(w * loss for w, loss in zip(current, task_losses, strict=True))
        model_loss.backward()

        if self.initial_losses is None:
            self.initial_losses = loss_values.clone()
        norms = self.task_weights * grad_norms
        relative = loss_values / self.initial_losses.clamp_min(torch.finfo(loss_values.dtype).tiny)
        inverse_rate = relative / relative.mean()
        target = (norms.mean() * inverse_rate**self.alpha).detach()
        grad_loss = (norms - target).abs().sum()
        self.optimizer.zero_grad(set_to_none=True)
        grad_loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.task_weights.clamp_(min=MIN_WEIGHT)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())
        return model_loss.detach()

    def state_dict(self) -> dict:
        # Plain numbers and lists, so the state fits a JSON trainer state as well as torch.save.
        adam = self.optimizer.state.get(self.task_weights, {})
        return {
            "weights": self.task_weights.detach().tolist(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.tolist(),
            "adam": {key: (value.tolist() if torch.is_tensor(value) else value) for key, value in adam.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.task_weights.copy_(torch.tensor(state["weights"]))
        initial = state["initial_losses"]
        self.initial_losses = None if initial is None else torch.tensor(initial)
        self.optimizer.state.clear()
        if state["adam"]:
            self.optimizer.state[self.task_weights] = {
                key: torch.tensor(value, dtype=torch.float32) for key, value in state["adam"].items()
            }


def build(cfg: LossWeightingConfig, tasks: list[str], steps_per_epoch: int) -> GradNorm:
    return GradNorm(tasks, cfg.alpha, cfg.weight_lr)
