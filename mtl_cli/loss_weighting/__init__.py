"""Loss weighting and gradient combination: how the tasks' losses (or gradients) make one update.

Each method is one module with `build(cfg, tasks, steps_per_epoch) -> Weighting` and four flags
saying what it can do, read by validation and the training loop:

    NEEDS_ALL_TASKS            True: every step holds one batch of every task (GradNorm, PCGrad,
                               CAGrad need all tasks' losses or gradients at the same step)
    ACTS_ON_SHARED_GRADIENTS   True: it changes the shared parameters' gradients, so a sharing
                               scheme that freezes the encoder leaves it nothing to act on
    SUPPORTS_EARLY_STOPPING    False: it needs every task at every step (trainer.early_stopping_patience)
    SUPPORTS_ACCUMULATION      True: its backward is linear in the losses, so trainer.gradient_accumulation_steps
                               can call it once per micro-batch (the loss scaled by its share of the step)

A weighting has

    needs_all_tasks: bool      its module's NEEDS_ALL_TASKS
    parameters() -> list       learnable parameters the optimizer must update (uncertainty)
    weights() -> {task: float} the current effective weight of each task (logged every eval)
    backward(losses, shared)   turn {task: loss tensor} into gradients (.grad) of all parameters;
                               `shared` are the trunk's shared parameters (gradient surgery acts on them)
    state_dict()/load_state_dict()

PCGrad and CAGrad also have `conflicts(reset_at=None) -> surgery.ConflictStats`: the share of steps
whose task gradients conflicted and each pair's mean cosine since the last evaluation
(callbacks.diagnostics logs them and starts a new window at each evaluation).

Methods that only weight losses call `weighted.weighted_backward`. Adding a method: a module here,
its name in METHODS, and conf/loss_weighting/<name>.yaml. METHODS is the one list of names:
validation (mtl_cli.validation) reads it through `get`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mtl_cli.errors import MtlError

METHODS = ("equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad")


def get(name: str) -> ModuleType:
    if name not in METHODS:
        raise MtlError(f"unknown loss weighting {name!r} (`loss_weighting=`); use one of {list(METHODS)}")
    return importlib.import_module(f"mtl_cli.loss_weighting.{name}")
