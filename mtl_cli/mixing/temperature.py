"""Temperature mixing as in seqio/T5: p_i ∝ min(size_i, max_examples) ** (1 / T).

T=1 is examples-proportional and large T approaches uniform, so T trades the big tasks'
data against the small tasks' share of updates.
"""

from __future__ import annotations

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.proportional import capped_sizes
from mtl_cli.mixing.sampler import normalise


def temperature_probabilities(cfg: MixingConfig, sizes: dict[str, int]) -> dict[str, float]:
    rates = {name: size ** (1.0 / cfg.temperature) for name, size in capped_sizes(cfg, sizes).items()}
    return normalise(rates, "training examples")
