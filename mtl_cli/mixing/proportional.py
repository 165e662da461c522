"""Examples-proportional mixing: every training example is equally likely to be seen."""

from __future__ import annotations

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.sampler import normalise


def capped_sizes(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    """Sizes with the seqio/T5 cap applied, so one huge task cannot crowd out the rest."""
    cap = cfg.max_examples
    return {name: float(size if cap is None else min(size, cap)) for name, size in sizes.items()}


def proportional_probabilities(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    return normalise(capped_sizes(cfg, sizes), "training examples")
