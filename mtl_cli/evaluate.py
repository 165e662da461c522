"""Per-task metrics: accuracy and macro-F1 for classification, averaged over tasks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from mtl_cli.batches import eval_batches

METRICS = ("accuracy", "macro_f1")


def classification_metrics(labels: list[int], preds: list[int], num_labels: int) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0)),
    }


@torch.inference_mode()
def evaluate_task(model: Any, task: str, data: Any, batch_size: int, pad_id: int) -> dict[str, float]:
    input_ids, labels = data["input_ids"], data["label"]
    preds = [0] * len(labels)
    total_loss = 0.0
    for idx, batch in eval_batches(input_ids, batch_size, pad_id):
        logits = model(task, **batch)
        gold = torch.tensor([labels[i] for i in idx])
        total_loss += F.cross_entropy(logits, gold, reduction="sum").item()
        for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
            preds[i] = p
    out = classification_metrics(labels, preds, model.heads[task].out.out_features)
    out["loss"] = total_loss / max(len(labels), 1)
    return out


def evaluate(model: Any, data: dict[str, Any], batch_size: int, pad_id: int) -> dict[str, dict[str, float]]:
    """`data` maps task -> {"input_ids": [...], "label": [...]} of one split."""
    was_training = model.training
    model.eval()
    results = {task: evaluate_task(model, task, d, batch_size, pad_id) for task, d in data.items()}
    model.train(was_training)
    results["average"] = {m: sum(r[m] for r in results.values()) / len(data) for m in METRICS}
    return results
