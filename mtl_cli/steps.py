"""One optimizer step: the step's task batches through the model, the loss weighting's backward,
clipping, and the update (withheld when a loss or the gradient is not finite); with
trainer.gradient_accumulation_steps > 1, each batch as that many micro-batches; in a distributed
run, each rank's slice of the batch through DDP."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from torch.nn.utils import clip_grad_norm_

from mtl_cli import distributed
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
    grad_norm: float | None = None  # of all the model's gradients, before clipping; None when no update was tried


def train_step(parts: Any, tasks: list[str]) -> StepResult:
    if parts.world.distributed:
        return parallel_step(parts, tasks)
    if parts.cfg.trainer.gradient_accumulation_steps > 1:
        return accumulated_step(parts, tasks)
    began = time.perf_counter()
    losses, batches = {}, {}
    examples: dict[str, int] = {}
    real = processed = 0
    for task in tasks:
        batch = batches[task] = {k: v.to(parts.device) for k, v in parts.batches[task].next_batch().items()}
        with autocast(parts.device, parts.bf16, parts.scaler is not None):
            losses[task] = parts.types[task].loss(parts.model(task, batch), batch)
        examples[task] = batch["input_ids"].shape[0]
        real += int(batch["attention_mask"].sum())
        processed += batch["input_ids"].numel()
    values = {t: v.item() for t, v in losses.items()}
    problem = next((f"loss of task '{t}' is {v}" for t, v in values.items() if not math.isfinite(v)), None)
    if problem is None:
        parts.weighting.backward({t: scaled(parts, v) for t, v in losses.items()}, parts.shared)
    return finish_step(parts, StepResult(tasks, values, batches, examples, real, processed, [], 0.0, problem), began)


def accumulated_step(parts: Any, tasks: list[str]) -> StepResult:
    """trainer.gradient_accumulation_steps = K: each task's batch (batch_size x K examples, planned as
    one) runs as K micro-batches, one forward and backward each. A micro-batch's loss is scaled by
    its share of the batch's examples, so the summed gradient is that of the whole batch's mean
    loss (for per-token losses, the mean of the micro-batches' token means, weighted by examples).
    Only loss weightings whose backward is linear in the losses allow this (validation)."""
    began = time.perf_counter()
    values: dict[str, float] = {}
    batches: dict[str, dict] = {}
    examples: dict[str, int] = {}
    real = processed = 0
    problem = None
    for task in tasks:
        micro = parts.batches[task].next_batches(parts.cfg.trainer.gradient_accumulation_steps)
        total = sum(b["input_ids"].shape[0] for b in micro)
        values[task], examples[task] = 0.0, total
        for part in micro:
            batch = {k: v.to(parts.device) for k, v in part.items()}
            real += int(batch["attention_mask"].sum())
            processed += batch["input_ids"].numel()
            if problem is not None:
                continue  # the batch is drawn (positions stay as planned), the update is withheld anyway
            batches[task] = batch  # the non-finite dump keeps the micro-batch that failed
            with autocast(parts.device, parts.bf16, parts.scaler is not None):
                loss = parts.types[task].loss(parts.model(task, batch), batch) * (batch["input_ids"].shape[0] / total)
            value = loss.item()
            values[task] += value
            if not math.isfinite(value):
                problem = f"loss of task '{task}' is {value}"
                continue
            parts.weighting.backward({task: scaled(parts, loss)}, parts.shared)
    return finish_step(parts, StepResult(tasks, values, batches, examples, real, processed, [], 0.0, problem), began)


def parallel_step(parts: Any, tasks: list[str]) -> StepResult:
    """Data parallel: every rank plans the same batch (batch_size x K x world size examples) and runs
    its own slice as K micro-batches through DDP, which all-reduces (averages) the gradients in the
    last backward only. Each micro-batch's loss is scaled by its share of the whole batch times the
    world size, so the average is the gradient of the whole batch's mean loss, as on one process
    with the same batch. Every rank runs every backward, even of a non-finite loss (the update is
    then withheld on all of them): a rank that skipped one would leave the others waiting in it."""
    began = time.perf_counter()
    world = parts.world.size
    values: dict[str, float] = {}
    batches: dict[str, dict] = {}
    examples: dict[str, int] = {}
    real = processed = 0
    for task in tasks:  # one task: validation refuses the weightings that need all of them at a step
        drawn = parts.batches[task].draw(parts.cfg.trainer.gradient_accumulation_steps, parts.world.rank, world)
        values[task], examples[task] = 0.0, drawn.examples
        for i, (part, share) in enumerate(zip(drawn.pieces, drawn.shares, strict=True)):
            batch = batches[task] = {k: v.to(parts.device) for k, v in part.items()}
            if share:
                real += int(batch["attention_mask"].sum())
                processed += batch["input_ids"].numel()
            with nullcontext() if i == len(drawn.pieces) - 1 else parts.ddp.no_sync():
                with autocast(parts.device, parts.bf16, parts.scaler is not None):
                    loss = parts.types[task].loss(parts.ddp(task, batch), batch) * (share * world)
                values[task] += loss.item() / world
                parts.weighting.backward({task: scaled(parts, loss)}, parts.shared)
    *losses, real_all, processed_all = distributed.all_sum([*values.values(), real, processed], parts.device)
    values = dict(zip(values, losses, strict=True))
    distributed.average_gradients(parts.weighting.parameters())
    problem = next((f"loss of task '{t}' is {v}" for t, v in values.items() if not math.isfinite(v)), None)
    step = StepResult(tasks, values, batches, examples, int(real_all), int(processed_all), [], 0.0, problem)
    return finish_step(parts, step, began)


def scaled(parts: Any, loss: Any) -> Any:
    """precision=fp16: the loss times the scaler's factor, so float16 gradients do not underflow."""
    return loss if parts.scaler is None else parts.scaler.scale(loss)


def finish_step(parts: Any, step: StepResult, began: float) -> StepResult:
    """Clip, update (unless the step has a problem), advance the schedule; the step took since `began`."""
    scaler = parts.scaler
    if step.problem is None:
        if scaler is not None:
            scaler.unscale_(parts.optimizer)  # clipping sees the true gradients
        max_norm = parts.cfg.trainer.max_grad_norm
        # Without clipping (max_grad_norm <= 0) the norm is still measured, for the trackers: an inf limit clips nothing.
        norm = step.grad_norm = float(clip_grad_norm_(parts.model.parameters(), max_norm if max_norm > 0 else math.inf))
        # With a scaler a non-finite norm is the scaler's business: its step skips the update and scales down.
        if max_norm > 0 and not math.isfinite(norm) and scaler is None:
            step.problem = f"gradient norm of task(s) {'+'.join(step.losses)} is {norm}"
    if step.problem is None and scaler is not None:
        scaler.step(parts.optimizer)
        scaler.update()
    elif step.problem is None:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    step.lr = parts.scheduler.get_last_lr()
    parts.scheduler.step()
    step.seconds = time.perf_counter() - began
    return step
