"""Content hashes: cache keys for `datasets`, the training data a resume must see again, and the
splits a run was scored on (which `mtl eval` must see again).

    file_digest(path)          sha256 of a data file's bytes: the `datasets` cache key of a parsed
                               file follows its content, not its path, size and modification time
    data_fingerprint(train)    task -> hash of every column of its tokenized training data
    changed_tasks(saved, ...)  the tasks whose training data differs from a checkpoint's record
    split_fingerprints(tasks)  task -> validation/test -> hash of the split's examples (texts, labels, tags)

Hashing is cheap next to parsing: sha256 reads about 1.3 GB/s here (the largest shared data
file, 2.9 MB, in about 2 ms; all 35 MB of /work/shared/data in about 50 ms).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any

from mtl_cli.config import held_out

# Marks the fingerprints that hash every column; a checkpoint without it hashed input_ids only.
_VERSION = "v2:"


def fingerprint(ds: Any, *parts: Any) -> str:
    """A `datasets` fingerprint for a transform of `ds` with these settings (an explicit cache key)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash((ds._fingerprint, *[repr(p) for p in parts]))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes (hex), read every time: no stat-based shortcut, since size and
    modification time are exactly what a replaced file can keep."""
    h = hashlib.sha256()
    with open(path, "rb") as f:  # (hashlib.file_digest is Python 3.11+)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_config_name(digest: str) -> str:
    """A `datasets` builder config name that carries the file's content hash into its cache key."""
    return f"mtl-sha256-{digest[:32]}"


def columns_digest(columns: dict[str, list]) -> str:
    """Hash of a table given as columns of Python values (ints, floats, strings, nested lists)."""
    h = hashlib.sha256()
    for name in sorted(columns):
        h.update(f"\0column {name}\0".encode())
        _update(h, columns[name])
    return h.hexdigest()[:16]


def _update(h: Any, values: Any) -> None:
    """Feed a column into `h`: its nesting as the lengths at each level, then the leaves as one typed
    array. The leaves' type is that of the first one: a column read from Arrow holds one type (or
    None, which falls back to hashing the values' repr)."""
    import numpy as np

    values = values if isinstance(values, list) else list(values)
    h.update(len(values).to_bytes(8, "little"))
    first = next((v for v in values if v is not None), None)
    try:
        if isinstance(first, (list, tuple)):
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            h.update(b"L" + lengths.tobytes())
            leaves = itertools.chain.from_iterable(values)
            inner = next((v for row in values for v in row), None)
            if isinstance(inner, (list, tuple, str)) or inner is None:
                _update(h, list(leaves))
            else:
                _numbers(h, leaves, inner, int(lengths.sum()))
        elif isinstance(first, str):
            encoded = [v.encode("utf-8", "surrogatepass") for v in values]
            h.update(b"s" + np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)).tobytes())
            h.update(b"".join(encoded))
        elif isinstance(first, (int, float)):
            _numbers(h, values, first, len(values))
        else:
            raise TypeError(first)
    except (TypeError, ValueError, AttributeError):  # None among the values, or mixed types: rare, small
        h.update(b"r" + repr(values).encode("utf-8", "surrogatepass"))


def _numbers(h: Any, values: Any, first: Any, count: int) -> None:
    import numpy as np

    dtype = np.float64 if isinstance(first, float) else np.int64
    h.update(b"f" if dtype is np.float64 else b"i")
    h.update(np.fromiter(values, dtype=dtype, count=count).tobytes())


def data_fingerprint(train: dict[str, dict[str, list]]) -> dict[str, str]:
    """task -> hash of every column of its tokenized training examples (inputs, token types, labels,
    tags, MLM settings): what the model learns from, which a resume must see again."""
    return {name: _VERSION + columns_digest(columns) for name, columns in train.items()}


def _ids_fingerprint(columns: dict[str, list]) -> str:
    """The fingerprint of checkpoints written before `_VERSION`: input_ids only."""
    import numpy as np

    ids = columns["input_ids"]
    h = hashlib.sha256(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)).tobytes())
    h.update(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def changed_tasks(saved: dict, current: dict[str, str], train: dict[str, dict[str, list]]) -> list[str]:
    """The tasks whose training data differs from `saved` (a checkpoint's data_fingerprint), in
    either direction; a saved fingerprint of the older input_ids-only kind is compared as such."""
    changed = []
    for task in sorted(set(saved) | set(current)):
        old, new = saved.get(task), current.get(task)
        if isinstance(old, str) and new is not None and not old.startswith(_VERSION):
            new = _ids_fingerprint(train[task])
        if old != new:
            changed.append(task)
    return changed


def split_fingerprints(tasks: dict[str, Any], splits: tuple[str, ...] | None = None) -> dict:
    """task -> split -> hash of the split's examples as loaded and carved (before tokenizing): which
    examples a run picked its checkpoints on and was scored on (by default validation, test and the
    task's extra test splits). (The training split has its own check, `data_fingerprint`, on what
    the model learns from.)"""
    return {
        name: {
            split: columns_digest(task.splits[split].to_dict())
            for split in (splits or held_out(task.splits))
            if split in task.splits
        }
        for name, task in tasks.items()
    }


def changed_splits(recorded: Any, tasks: dict[str, Any], split: str) -> list[str] | None:
    """The tasks whose `split` differs from `recorded` (a checkpoint's split_fingerprints); None when
    the checkpoint recorded none (written before mtl recorded them)."""
    if not isinstance(recorded, dict) or not recorded:
        return None
    now = split_fingerprints(tasks, (split,))
    return [
        name
        for name in tasks
        if split in now[name]
        and (not isinstance(recorded.get(name), dict) or recorded[name].get(split) != now[name][split])
    ]
