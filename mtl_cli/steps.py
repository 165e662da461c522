"""One optimizer step: the step's task batches through the model, the loss weighting's backward,
clipping, and the update (withheld when a loss or the gradient is not finite)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from torch.nn.utils import clip_grad_norm_

from mtl_cli.device import autocast


@dataclass
class StepResult:
    tasks: list[str]
    losses: dict[str, float]
    batches: dict[str, dict]  # on the device, for the non-finite dump
    examples: dict[str, int]  # task -> examples in its batch
    real_tokens: int
    processed_tokens: int
    lr: list[float]  # the learning rate(s) this step used
    seconds: float
    # A NaN/inf loss or gradient norm: the update was not applied.
    problem: str | None = None


def train_step(parts: Any, tasks: list[str]) -> StepResult:
    began = time.perf_counter()
    losses, batches = {}, {}
    examples: dict[str, int] = {}
    real = processed = 0
    for task in tasks:
        batch = batches[task] = {k: v.to(parts.device) for k, v in parts.batches[task].next_batch().items()}
        with autocast(parts.device, parts.bf16):
            losses[task] = parts.types[task].loss(parts.model(task, batch), batch)
        examples[task] = batch["input_ids"].shape[0]
        real += int(batch["attention_mask"].sum())
        processed += batch["input_ids"].numel()
    values = {t: v.item() for t, v in losses.items()}
    problem = next((f"loss of task '{t}' is {v}" for t, v in values.items() if not math.isfinite(v)), None)
    if problem is None:
        parts.weighting.backward(losses, parts.shared)
        max_norm = parts.cfg.trainer.max_grad_norm
        if max_norm > 0:
            norm = float(clip_grad_norm_(parts.model.parameters(), max_norm))
            if not math.isfinite(norm):
                problem = f"gradient norm of task(s) {'+'.join(losses)} is {norm}"
    if problem is None:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    lr = parts.scheduler.get_last_lr()
    parts.scheduler.step()
    return StepResult(
        tasks, values, batches, examples, real, processed, lr, time.perf_counter() - began, problem
    )  # fmt: skip
