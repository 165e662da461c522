"""Single-text or sentence-pair classification: cross-entropy; accuracy and macro-F1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mtl_cli.config import TaskConfig
from mtl_cli.labels import encode_class_labels
from mtl_cli.task_types import sequence
from mtl_cli.task_types.sequence import SequenceHead

MAIN_METRIC = "accuracy"
AUXILIARY = False
METRICS = ("accuracy", "macro_f1")  # what metrics() returns, main first


columns = sequence.columns


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, list[str]]:
    return encode_class_labels(name, cfg, raw)


encode = sequence.encode
collate = sequence.collate_with(torch.long)


def build_head(hidden_size: int, labels: list[str], encoder: Any, sharing: Any) -> torch.nn.Module:
    return SequenceHead(hidden_size, len(labels), sharing.pooling, sharing.head_dropout)


def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(output, batch["labels"])


def predict(output: torch.Tensor, batch: dict) -> tuple[list, list]:
    return output.argmax(-1).tolist(), batch["labels"].tolist()


def metrics(preds: list, golds: list, labels: list[str], loss: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score  # ~0.8 s to import: only when scoring

    return {
        "accuracy": float(accuracy_score(golds, preds)),
        "macro_f1": float(f1_score(golds, preds, average="macro", labels=list(range(len(labels))), zero_division=0)),
    }
