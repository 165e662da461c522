"""Explicit mixing ratios from `mixing.weights`, one per task (check_config makes sure they are usable)."""

from __future__ import annotations

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.sampler import normalise


def weight_probabilities(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    # Task order comes from `sizes`, not from the order the weights were written in.
    return normalise({name: float(cfg.weights[name]) for name in sizes}, "weight")
