"""Task types: how one kind of task reads its labels, is tokenized, batched, scored and evaluated.

Each type is one module with the same functions, so a run can mix kinds freely:

    MAIN_METRIC                 metric that picks checkpoints/best (higher is better)
    METRICS                     every metric name metrics() returns, MAIN_METRIC first
                                (validation checks trainer.best_metric against them)
    AUXILIARY                   True: left out of the average that picks checkpoints/best
    columns(cfg)                {role: column in the data}, e.g. {"text": ..., "label": ...}
    prepare(name, cfg, raw)     -> (raw, labels): labels normalised in place; label names or None
    encode(batch, tokenizer, cfg, labels)       -> {"input_ids", ["token_type_ids"], "labels"} (datasets.map)
    collate(rows, pad_id, rng)  -> dict of tensors (rng: for random masking, seeded by the caller)
    build_head(hidden_size, labels, encoder, sharing) -> nn.Module, called as head(hidden, batch)
    loss(output, batch)         -> scalar tensor
    predict(output, batch)      -> (predictions, gold values), one python value per example
    metrics(preds, golds, labels, loss)         -> {metric: value}

Adding a type: one module here, its name in TASK_TYPES, and `type: <name>` in a task YAML.
TASK_TYPES is the one list of names: validation (mtl_cli.validation) reads it through `get`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mtl_cli.errors import MtlError

TASK_TYPES = ("classification", "regression", "multilabel", "token_classification", "mlm", "seq2seq")


def get(name: str) -> ModuleType:
    if name not in TASK_TYPES:
        raise MtlError(f"unknown task type {name!r}; use one of {list(TASK_TYPES)}")
    return importlib.import_module(f"mtl_cli.task_types.{name}")
