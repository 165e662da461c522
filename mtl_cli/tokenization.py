"""Tokenize each task once, through `datasets.map`, so the next run reuses the cached result.

The cache key is explicit (input fingerprint + tokenizer contents + max length): hashing the
tokenizer object itself is unstable across calls, which would silently defeat the cache.
"""

from __future__ import annotations

from typing import Any

from mtl_cli.tasks import Task, _fingerprint


def tokenizer_fingerprint(tokenizer: Any) -> str:
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    contents = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return Hasher.hash((type(tokenizer).__name__, contents, tokenizer.truncation_side))


def tokenize_task(task: Task, tokenizer: Any, tokenizer_fp: str) -> Any:
    """Returns split -> Dataset with input_ids (unpadded) and label; masks are built when batching."""
    max_length = task.cfg.max_length

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "label": batch["label"]}

    out = {}
    for split, ds in task.splits.items():
        out[split] = ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=ds.column_names,
            new_fingerprint=_fingerprint(ds, "tokenize", tokenizer_fp, max_length),
            desc=f"tokenizing {task.name}/{split}",
        )
    return out
