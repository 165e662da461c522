"""Content hashes: cache keys for `datasets.map`, and the training data a resume must see again."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any


def fingerprint(ds: Any, *parts: Any) -> str:
    """A `datasets` fingerprint for a transform of `ds` with these settings (an explicit cache key)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash((ds._fingerprint, *[repr(p) for p in parts]))


def data_fingerprint(train: dict[str, dict[str, list]]) -> dict[str, str]:
    """task -> hash of its tokenized training examples: a resume must see the very same data."""
    import numpy as np

    out = {}
    for name, columns in train.items():
        ids = columns["input_ids"]
        h = hashlib.sha256(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)).tobytes())
        h.update(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64).tobytes())
        out[name] = h.hexdigest()[:16]
    return out
