"""Per-task metrics (each task type's own) and their average over tasks."""

from __future__ import annotations

from typing import Any

import torch

from mtl_cli import task_types
from mtl_cli.batches import eval_batches


@torch.inference_mode()
def evaluate_task(model: Any, task: str, ttype: Any, columns: dict, labels: Any, batch_size: int, pad_id: int) -> dict:
    preds, golds = [], []
    total_loss, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in eval_batches(columns, ttype.collate, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(task, batch)
        n = batch["input_ids"].shape[0]
        total_loss += ttype.loss(output, batch).item() * n
        count += n
        p, g = ttype.predict(output, batch)
        preds.extend(p)
        golds.extend(g)
    loss = total_loss / max(count, 1)
    return {**ttype.metrics(preds, golds, labels, loss), "loss": loss}


def evaluate(model: Any, data: dict, types: dict[str, str], labels: dict, batch_size: int, pad_id: int) -> dict:
    """`data`: task -> columns of one split; `types`: task -> type name. Adds an `average` row."""
    was_training = model.training
    model.eval()
    results = {
        task: evaluate_task(model, task, task_types.get(types[task]), cols, labels[task], batch_size, pad_id)
        for task, cols in data.items()
    }
    model.train(was_training)
    results["average"] = average(results, types)
    return results


def average(results: dict, types: dict[str, str]) -> dict[str, float]:
    """Mean over the non-auxiliary tasks of each metric they have, and of their main metrics (`main`)."""
    scored = {t: r for t, r in results.items() if not task_types.get(types[t]).AUXILIARY} or results
    out = {"main": sum(r[task_types.get(types[t]).MAIN_METRIC] for t, r in scored.items()) / len(scored)}
    names = dict.fromkeys(m for r in scored.values() for m in r if m != "loss")
    for m in names:
        values = [r[m] for r in scored.values() if m in r]
        out[m] = sum(values) / len(values)
    return out
