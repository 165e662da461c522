"""Explicit mixing ratios from `mixing.weights` (check_config makes sure they are usable).

Tasks left out share what the named ones leave of 1, so a sweep can name one task:
`mixing.weights.a=0.1,0.5,0.9` with tasks a+b gives b 0.9, 0.5, 0.1.
"""

from __future__ import annotations

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.sampler import normalise


def completed_weights(weights: dict[str, float], tasks: list[str]) -> dict[str, float]:
    missing = [t for t in tasks if t not in weights]
    rest = (1.0 - sum(weights.values())) / len(missing) if missing else 0.0
    return {t: float(weights[t]) if t in weights else rest for t in tasks}


def weight_probabilities(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    # Task order comes from `sizes`, not from the order the weights were written in.
    return normalise(completed_weights(cfg.weights, list(sizes)), "weight")
