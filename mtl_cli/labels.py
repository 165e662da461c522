"""Class labels: map raw label values to names, names to ids, and reject values outside the set.

Shared by the types whose labels come from a fixed set (classification, multi-label, tags).
"""

from __future__ import annotations

from typing import Any

from mtl_cli.config import TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import fingerprint


def encode_class_labels(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, list[str]]:
    """Column `label` (raw values) -> ClassLabel ids, with the label names in id order."""
    for split, ds in raw.items():
        _check_label_values(name, cfg, split, ds)
        _check_float_labels(name, cfg, split, ds)
    labels = _label_names(name, cfg, raw)
    raw = _encode_labels(name, cfg, raw, labels)
    if len(set(raw["train"]["label"])) < 2:
        raise MtlError(
            f"task '{name}': the training split holds a single label; check task.{name}.label_column and the file's labels"
        )
    return raw, labels


def _check_label_values(name: str, cfg: TaskConfig, split: str, ds: Any) -> None:
    """Every example has one label, a name or a number: not a list, a mapping or a mix of kinds
    (JSON `1` next to `"pos"`), and not missing (an empty cell, a JSON null)."""
    import datasets

    feature = ds.features.get("label")
    where = f"task '{name}': the {split} labels (column '{cfg.label_column}')"
    if not isinstance(feature, (datasets.Value, datasets.ClassLabel)):
        kind = getattr(feature, "_type", type(feature).__name__)
        raise MtlError(
            f"{where} hold {kind} values, not one label name or number per example (a mix of numbers and "
            f"names, lists or objects); make every label a name (or for several labels per text use "
            f"task.{name}.type=multilabel)"
        )
    for row, value in enumerate(ds["label"]):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise MtlError(
                f"{where}: {split} row {row + 1} has no label ({'null' if value is None else 'empty'}); "
                "fill it in or drop that row"
            )


def _check_float_labels(name: str, cfg: TaskConfig, split: str, ds: Any) -> None:
    """A label column read as decimal numbers: name the row whose value made it so.

    One value such as `1.5` (or a NaN) turns a column of whole numbers into floats, and the label
    names into `0.0`, `1.0`, ... Whole-number floats throughout (`1.0` in JSON) are kept as they are.
    """
    import math

    feature = ds.features.get("label")
    if getattr(feature, "dtype", None) not in ("float16", "float32", "float64", "double", "float"):
        return
    for row, value in enumerate(ds["label"]):
        if value is None or not math.isfinite(value) or not float(value).is_integer():
            raise MtlError(
                f"task '{name}': the {split} labels (column '{cfg.label_column}') were read as decimal numbers "
                f"because {split} row {row + 1} holds {value}; class labels are names or whole numbers: fix that row "
                f"(or set task.{name}.type=regression for numeric targets)"
            )


def raw_to_name(cfg: TaskConfig, value: Any) -> str:
    key = str(value).strip()
    return cfg.label_map.get(key, key)


def _label_names(name: str, cfg: TaskConfig, raw) -> list[str]:
    if cfg.labels:
        return [str(label) for label in cfg.labels]
    if "train" not in raw:
        raise MtlError(f"task '{name}' has no train split; set task.{name}.files.train")
    return sorted({raw_to_name(cfg, v) for v in raw["train"].unique("label")})


def _encode_labels(name: str, cfg: TaskConfig, raw, labels: list[str]):
    import datasets

    ids = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        unknown = sorted({raw_to_name(cfg, v) for v in ds.unique("label")} - set(ids), key=str)
        if unknown:
            bad = unknown[0]
            row = next(i for i, v in enumerate(ds["label"]) if raw_to_name(cfg, v) == bad)
            raise MtlError(
                f"task '{name}': label '{bad}' ({split} row {row + 1}) is not in the label set {labels}; "
                f"fix the data or set task.{name}.labels / task.{name}.label_map"
            )
        features = ds.features.copy()
        features["label"] = datasets.ClassLabel(names=labels)
        raw[split] = ds.map(
            lambda batch: {"label": [ids[raw_to_name(cfg, v)] for v in batch["label"]]},
            batched=True,
            features=features,
            new_fingerprint=fingerprint(ds, "labels", labels, sorted(cfg.label_map.items())),
        )
    return raw
