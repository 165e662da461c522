"""Where training stands: the value `trainer_state.json` records in every checkpoint.

With the weights and optimizer.pt it is all a resume needs. The loop owns one `TrainState` and
changes it step by step; each optional feature (mtl_cli/callbacks) keeps its own state under
`callbacks.<name>`; the sharing trunk keeps its running statistics (MMoE's gate sums) under `trunk`.

A checkpoint may come from someone else: `from_json` checks every field's type (and the known
callbacks' and the sampler's states) before anything is restored from it.
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
    # task -> split -> hash of its examples: the splits the run was scored on (`mtl eval` checks them).
    split_fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    config_sha256: str = ""
    # The sharing trunk's running statistics (MMoE: gate sums since the last evaluation); {} for others.
    trunk: dict = field(default_factory=dict)
    # Data-parallel processes that trained it: a resume needs as many (each step's batch depends on it).
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "trainer_state.json") -> TrainState:
        """The state `data` (trainer_state.json, read from `source`), refused with one line when a
        field has the wrong type: nothing is restored from a state that was not written by mtl."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"step", "batches", "active", "callbacks"} <= set(data):
            raise MtlError(f"{source} is not the state of this mtl version's training loop; it cannot be resumed from")
        defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(cls)}
        for name in sorted(names & set(data)):
            check, expected = FIELD_CHECKS.get(name) or _like(defaults[name])
            if not check(data[name]):
                raise MtlError(
                    f"{source}: `{name}` must be {expected}, not {_shown(data[name])}; the checkpoint is damaged "
                    "or was not written by mtl: use another checkpoint, or train again"
                )
        return cls(**{k: v for k, v in data.items() if k in names})


# --- the types trainer_state.json holds -------------------------------------------------------


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _number(v: Any) -> bool:
    return type(v) in (int, float)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _object(v: Any) -> bool:
    return isinstance(v, dict)


def _optional(check):
    return lambda v: v is None or check(v)


def _mapping(of, keys: dict | None = None):
    """A dict whose values pass `of`, or, with `keys`, whose listed keys (when present) pass theirs."""
    if keys is not None:
        return lambda v: isinstance(v, dict) and all(k not in v or c(v[k]) for k, c in keys.items())
    return lambda v: isinstance(v, dict) and all(of(x) for x in v.values())


def _list(of):
    return lambda v: isinstance(v, list) and all(of(x) for x in v)


def _rng_state(v: Any) -> bool:
    """A numpy bit generator's state, as `Generator.bit_generator.state` gives it (and takes it back)."""
    import numpy as np

    if not (isinstance(v, dict) and isinstance(v.get("bit_generator"), str)):
        return False
    kind = getattr(np.random, v["bit_generator"], None)
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        return False
    try:
        kind().state = v
    except Exception:
        return False
    return True


_POSITION = _mapping(None, {"epoch": _count, "batch": _count})  # a TaskBatches position
_CALLBACKS = {  # the state of each optional feature (mtl_cli/callbacks), by its name
    "nonfinite": _mapping(None, {"skipped": _count}),
    "affinity": _mapping(None, {"batches": _mapping(_POSITION)}),
    "early_stopping": _mapping(None, {"tasks": _mapping(_mapping(None, {
        "best": _optional(_number), "best_step": _optional(_count), "bad_evals": _count,
        "stopped_at": _optional(_count), "improved": lambda v: isinstance(v, bool),
    }))}),
}  # fmt: skip

FIELD_CHECKS = {  # field: (check, what it must be)
    "step": (_count, "a step number"),
    "examples_seen": (_mapping(_count), "{task: count}"),
    "epochs": (_mapping(_number), "{task: number}"),
    "validation": (_optional(_mapping(_object)), "null or {task: {metric: value}}"),
    "best_step": (_count, "a step number"),
    "best_score": (_number, "a number"),
    "running_loss": (_mapping(_number), "{task: number}"),
    "batches": (_mapping(_POSITION), '{task: {"epoch": n, "batch": n}}'),
    "sampler": (_mapping(None, {"rng": _rng_state, "index": _count, "draws": _count}), "a mixing sampler's state"),
    "task_weights": (_mapping(_number), "{task: number}"),
    "active": (_list(_text), "a list of task names"),
    "callbacks": (
        lambda v: isinstance(v, dict) and all(_CALLBACKS.get(k, _object)(s) for k, s in v.items()),
        "{callback: its state} as mtl writes it",
    ),
    "data_fingerprint": (_mapping(_text), "{task: hash}"),
    "split_fingerprints": (_mapping(_mapping(_text)), "{task: {split: hash}}"),
    "encoder": (_object, "the encoder's settings"),
    "config_sha256": (_text, "a hash"),
    "trunk": (_mapping(_mapping(lambda v: _count(v) or _list(_number)(v))), "the trunk's statistics"),
    "world_size": (lambda v: _count(v) and v >= 1, "a number of processes"),
}


def _like(default: Any) -> tuple:
    """A field without an entry in FIELD_CHECKS: the type of its default."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, (int, float)):
        return _number, "a number"
    if default is None:
        return (lambda v: True), "anything"
    kind = type(default)
    return (lambda v: isinstance(v, kind)), f"a JSON {'object' if kind is dict else kind.__name__}"


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
