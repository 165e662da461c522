"""Multi-label classification (any number of labels per text, single text or pair): one sigmoid per label.

The label column holds a list of label values per example (JSON, parquet), or a string of them
joined by `label_separator` (CSV/TSV: "sports, politics"); an empty string means no labels.
Labels are stored as a multi-hot float vector in label-name order. Loss: binary cross-entropy;
predictions: sigmoid > 0.5; metrics: micro-F1, macro-F1 and exact match (subset accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtl_cli.config import TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import fingerprint
from mtl_cli.labels import raw_to_name
from mtl_cli.task_types import sequence
from mtl_cli.task_types.sequence import SequenceHead

MAIN_METRIC = "micro_f1"
AUXILIARY = False
METRICS = ("micro_f1", "macro_f1", "exact_match")  # what metrics() returns, main first


columns = sequence.columns


def split_labels(cfg: TaskConfig, value: Any) -> list[str]:
    """One example's raw label value -> its label names (after `label_map`), in order, without blanks."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = list(value)
    elif isinstance(value, str):
        parts = value.split(cfg.label_separator)
    else:  # a single number, e.g. a CSV column whose examples each have one label
        parts = [value]
    names = [raw_to_name(cfg, p) for p in parts if p is not None and str(p).strip()]
    return [n for n in names if n]


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, list[str]]:
    """Column `label` -> multi-hot float32 lists, with the label names in index order."""
    import datasets

    if not cfg.label_separator:
        raise MtlError(f"`task.{name}.label_separator` must not be empty; use e.g. ',' or '|'")
    if cfg.labels:
        labels = [str(label) for label in cfg.labels]
    else:
        labels = sorted({n for v in raw["train"]["label"] for n in split_labels(cfg, v)})
        if len(labels) < 2:
            raise MtlError(
                f"task '{name}': the training split holds {len(labels)} distinct label(s) {labels}; "
                f"check task.{name}.label_column and task.{name}.label_separator ({cfg.label_separator!r})"
            )
    index = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        for row, value in enumerate(ds["label"]):
            unknown = [n for n in split_labels(cfg, value) if n not in index]
            if unknown:
                raise MtlError(
                    f"task '{name}': label '{unknown[0]}' ({split} row {row + 1}) is not in the label set {labels}; "
                    f"fix the data or set task.{name}.labels / task.{name}.label_map "
                    f"(labels are split on {cfg.label_separator!r}: task.{name}.label_separator)"
                )

        def multi_hot(batch: dict[str, list]) -> dict[str, list]:
            out = []
            for value in batch["label"]:
                vec = [0.0] * len(labels)
                for n in split_labels(cfg, value):
                    vec[index[n]] = 1.0
                out.append(vec)
            return {"label": out}

        features = ds.features.copy()
        features["label"] = datasets.Sequence(datasets.Value("float32"), length=len(labels))
        raw[split] = ds.map(
            multi_hot,
            batched=True,
            features=features,
            new_fingerprint=fingerprint(ds, "multilabel", labels, cfg.label_separator, sorted(cfg.label_map.items())),
        )
    return raw, labels


encode = sequence.encode
collate = sequence.collate_with(torch.float32)


def build_head(hidden_size: int, labels: list[str], encoder: Any, sharing: Any) -> torch.nn.Module:
    return SequenceHead(hidden_size, len(labels), sharing.pooling, sharing.head_dropout)


def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output, batch["labels"].to(output.dtype))


def predict(output: torch.Tensor, batch: dict) -> tuple[list, list]:
    preds = (torch.sigmoid(output.float()) > 0.5).long().tolist()
    return preds, batch["labels"].round().long().tolist()


def metrics(preds: list, golds: list, labels: list[str], loss: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score  # ~0.8 s to import: only when scoring

    width = len(labels)
    p = np.asarray(preds, dtype=np.int64).reshape(-1, width)
    g = np.asarray(golds, dtype=np.int64).reshape(-1, width)
    return {
        "micro_f1": float(f1_score(g, p, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
        "exact_match": float(accuracy_score(g, p)),
    }
