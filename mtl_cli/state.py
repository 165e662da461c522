"""Where training stands: the value `trainer_state.json` records in every checkpoint.

With the weights and optimizer.pt it is all a resume needs. The loop owns one `TrainState` and
changes it step by step; each optional feature (mtl_cli/callbacks) keeps its own state under
`callbacks.<name>`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mtl_cli.errors import MtlError


@dataclass
class TrainState:
    step: int = 0
    examples_seen: dict[str, int] = field(default_factory=dict)
    # Epochs of each task seen (examples_seen / training size), for people reading the file.
    epochs: dict[str, float] = field(default_factory=dict)
    # The validation results of the latest evaluation.
    validation: dict | None = None
    best_step: int = 0
    best_score: float = -math.inf
    # An exponential moving average of each task's training loss.
    running_loss: dict[str, float] = field(default_factory=dict)
    # Positions in each task's batch stream and the mixing sampler's random state.
    batches: dict[str, dict] = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)
    # The tasks still trained (per-task early stopping removes tasks from it).
    active: list[str] = field(default_factory=list)
    callbacks: dict[str, dict] = field(default_factory=dict)
    # What the state belongs to: the data, the encoder and the run's config.yaml (resume checks them).
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    config_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"step", "batches", "active", "callbacks"} <= set(data):
            raise MtlError(
                "trainer_state.json is not the state of this mtl version's training loop; it cannot be resumed from"
            )
        return cls(**{k: v for k, v in data.items() if k in names})
