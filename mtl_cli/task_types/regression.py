"""Single-text or sentence-pair regression (one real-valued target, e.g. a star rating): MSE; Pearson, Spearman, MAE."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtl_cli.config import TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import fingerprint
from mtl_cli.task_types import sequence
from mtl_cli.task_types.sequence import SequenceHead

MAIN_METRIC = "pearson"
AUXILIARY = False
METRICS = ("pearson", "spearman", "mae", "mse")  # what metrics() returns, main first


columns = sequence.columns


def to_float(cfg: TaskConfig, value: Any) -> float | None:
    """A raw label value as a finite float (after `label_map`), or None when it is not a number."""
    if cfg.label_map:
        key = str(value).strip()
        value = cfg.label_map.get(key, value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    elif isinstance(value, (int, float, np.number)):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, None]:
    """Column `label` -> float32; any value that is not a finite number is reported with its split and row."""
    import datasets

    for split, ds in raw.items():
        for row, value in enumerate(ds["label"]):
            if to_float(cfg, value) is None:
                raise MtlError(
                    f"task '{name}': label '{value}' ({split} row {row + 1}) is not a number; "
                    f"regression needs numeric labels: fix the data, check task.{name}.label_column, "
                    f"or map the value with task.{name}.label_map"
                )
        features = ds.features.copy()
        features["label"] = datasets.Value("float32")
        raw[split] = ds.map(
            lambda batch: {"label": [to_float(cfg, v) for v in batch["label"]]},
            batched=True,
            features=features,
            new_fingerprint=fingerprint(ds, "regression", sorted(cfg.label_map.items())),
        )
    if len(set(raw["train"]["label"])) < 2:
        raise MtlError(
            f"task '{name}': every training label is {raw['train'][0]['label']}; a regression target must vary: "
            f"check task.{name}.label_column"
        )
    return raw, None


encode = sequence.encode
collate = sequence.collate_with(torch.float32)


class RegressionHead(SequenceHead):
    """A SequenceHead with one output, squeezed: [batch]."""

    def __init__(self, hidden_size: int, pooling: str, dropout: float):
        super().__init__(hidden_size, 1, pooling, dropout)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return super().forward(hidden, batch).squeeze(-1)


def build_head(hidden_size: int, labels: list[str] | None, encoder: Any, sharing: Any) -> torch.nn.Module:
    return RegressionHead(hidden_size, sharing.pooling, sharing.head_dropout)


def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.mse_loss(output, batch["labels"].to(output.dtype))


def predict(output: torch.Tensor, batch: dict) -> tuple[list, list]:
    return output.float().tolist(), batch["labels"].float().tolist()


def _correlation(kind: str, preds: np.ndarray, golds: np.ndarray) -> float:
    """Pearson/Spearman; 0.0 (not nan) when either side is constant or there are fewer than two examples."""
    from scipy.stats import pearsonr, spearmanr

    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(golds) == 0:
        return 0.0
    value = float((pearsonr if kind == "pearson" else spearmanr)(preds, golds)[0])
    return value if math.isfinite(value) else 0.0


def metrics(preds: list, golds: list, labels: list[str] | None, loss: float) -> dict[str, float]:
    p = np.asarray(preds, dtype=np.float64)
    g = np.asarray(golds, dtype=np.float64)
    err = p - g
    return {
        "pearson": _correlation("pearson", p, g),
        "spearman": _correlation("spearman", p, g),
        "mae": float(np.abs(err).mean()) if len(err) else 0.0,
        "mse": float((err**2).mean()) if len(err) else 0.0,
    }
