"""Uniform mixing: every task gets the same share of batches, whatever its size."""

from __future__ import annotations

from mtl_cli.config import MixingConfig


def uniform_probabilities(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    return {name: 1.0 / len(sizes) for name in sizes}
