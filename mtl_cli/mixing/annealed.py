"""Annealed mixing (Stickland & Murray 2019, "BERT and PALs", section 4): p_i ∝ N_i ** alpha with

    alpha = 1 - (1 - alpha_floor) * (e - 1) / (E - 1)

at epoch e of E (1-based): examples-proportional in the first epoch, closer to uniform in each
later one, so the small tasks get more of the updates towards the end (their 0.8 decay is
`mixing.alpha_floor=0.2`). N_i is the training size, capped at `mixing.max_examples` as in the
other strategies. Epochs are the run's (`steps_per_epoch` optimizer steps); with
`trainer.max_steps`, E = max_steps / steps_per_epoch, and a last, partial epoch (E = 2.5 has a
third) is clamped at the floor. E <= 1 keeps alpha = 1 throughout.

The probabilities change at epoch boundaries, not smoothly per step: that is the paper's
schedule, each epoch's share of every task can be checked against it (trainer_state.json's
examples_seen), and `sampler.probabilities` stays constant between two boundaries.
"""

from __future__ import annotations

from mtl_cli.config import MixingConfig
from mtl_cli.mixing.proportional import capped_sizes
from mtl_cli.mixing.sampler import ScheduledSampler, StepCounts, normalise


def annealed_alpha(epoch: int, epochs: float, floor: float) -> float:
    """alpha at 1-based `epoch` of `epochs` (a float when max_steps cuts the last epoch short)."""
    if epochs <= 1:
        return 1.0
    progress = min(max((epoch - 1) / (epochs - 1), 0.0), 1.0)
    return 1.0 - (1.0 - floor) * progress


def annealed_probabilities(cfg: MixingConfig, sizes: dict[str, int], alpha: float) -> dict[str, float]:
    # A task with no examples stays at 0 even at alpha = 0 (Python's 0.0 ** 0 is 1).
    rates = {name: size**alpha if size > 0 else 0.0 for name, size in capped_sizes(cfg, sizes).items()}
    return normalise(rates, "training examples")


def annealed_sampler(cfg: MixingConfig, sizes: dict[str, int], seed: int, steps: StepCounts | None) -> ScheduledSampler:
    if steps is None:
        raise ValueError("mixing=annealed needs the run's step counts (steps_per_epoch, total_steps)")
    per_epoch, epochs = max(steps.steps_per_epoch, 1), steps.epochs
    by_epoch: dict[int, dict[str, float]] = {}

    def weights_at(draws: int) -> dict[str, float]:
        epoch = draws // per_epoch + 1
        if epoch not in by_epoch:  # the same dict for the whole epoch: the sampler then keeps its table
            by_epoch.clear()
            by_epoch[epoch] = annealed_probabilities(cfg, sizes, annealed_alpha(epoch, epochs, cfg.alpha_floor))
        return by_epoch[epoch]

    annealed_probabilities(cfg, sizes, 1.0)  # every task empty: the same one-line error as proportional
    return ScheduledSampler(weights_at, list(sizes), seed)
