"""Validation above the plugins: a composed config becomes a typed `MtlConfig`, checked whole.

The schema (`mtl_cli.config`) rejects unknown keys, wrong types and values outside a closed
choice. What is left is checked here, before any data or weights are loaded: ranges, settings
that span several fields, and plugin names and abilities. Plugin names are looked up in each
family's own registry (through its `get()`), and what a plugin can do is read from flags on the
plugin module, so a plugin added by the README's steps is accepted without editing this file.
Every number is checked first, whatever its key (`validate_numbers`: floats finite, integers
within 64 bits, seeds within numpy's 32 bits, a thread count), since a NaN passes every range
check (`nan <= 0` is false); `trainer.device` must name a device this machine has.
Every message is one line naming the override to change.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_cli import loss_weighting, mixing, sharing, task_types
from mtl_cli.config import ENCODING_ERRORS, SPLITS, MtlConfig, Source, is_extra_test
from mtl_cli.device import check_device
from mtl_cli.errors import MtlError, first_line


def to_typed(cfg: DictConfig) -> MtlConfig:
    """Resolve interpolations, check every value against the schema, then `validate`."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(MtlConfig), cfg)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise MtlError(f"`{missing[0]}` has no value (???): set it, e.g. {missing[0]}=<value>")
        typed = OmegaConf.to_object(merged)
    except MtlError:
        raise
    except Exception as err:  # omegaconf raises several types; all are config mistakes here
        raise MtlError(describe_config_error(err)) from None
    assert isinstance(typed, MtlConfig)
    validate(typed)
    return typed


def describe_config_error(err: Exception) -> str:
    """One line from an OmegaConf/Hydra error, naming the key to fix."""
    msg = first_line(err)
    key = getattr(err, "full_key", None)
    if key:
        return f"bad config value at `{key}`: {msg}; fix that override or YAML key"
    return f"{msg}"


def validate(cfg: MtlConfig) -> None:
    """Checks the schema cannot express; each message names the override to change."""
    if not cfg.task:
        raise MtlError("no task selected: pass task=<name>[+<name>...] (list them with `mtl tasks`)")
    validate_numbers(cfg)
    validate_tasks(cfg)
    validate_sharing(cfg)
    validate_freezing(cfg)
    mixing.check_config(cfg.mixing, list(cfg.task))
    validate_loss_weighting(cfg)
    validate_trainer(cfg)


# Seeds reach numpy (datasets' split shuffles, the task sampler), which takes 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1
# Every integer setting ends up in torch or numpy as a 64-bit integer.
INT_MAX = 2**63 - 1
THREADS_MAX = 1024


def validate_numbers(cfg: MtlConfig) -> None:
    """Every number of the typed config, whatever its key: floats finite, integers within 64 bits.

    One walk over the dataclasses (tasks, trainer, mixing, loss_weighting, sharing, encoder and
    their dicts and lists), so a float setting added later is covered too: `nan <= 0` is false,
    so without this a NaN would pass every range check below.
    """
    for key, value in _numbers(cfg, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise MtlError(f"`{key}` must be a finite number; got {value}: set {key}=<number>")
        if isinstance(value, int) and not -INT_MAX <= value <= INT_MAX:
            raise MtlError(f"`{key}` is out of range ({value}); use a value below 2**63")
    seeds = {"seed": cfg.seed, **{f"task.{n}.split_seed": t.split_seed for n, t in cfg.task.items()}}
    for key, seed in seeds.items():
        if not 0 <= seed <= SEED_MAX:
            raise MtlError(f"`{key}` must be between 0 and {SEED_MAX} (2**32 - 1); got {seed}")
    # A fixed bound, not this machine's CPU count: a run's config.yaml is evaluated and resumed elsewhere.
    threads = cfg.trainer.threads
    if threads is not None and not 1 <= threads <= THREADS_MAX:
        raise MtlError(
            f"`trainer.threads` must be between 1 and {THREADS_MAX} or null (one per physical core: "
            f"{os.cpu_count() or 1} CPUs here); got {threads}"
        )


def _numbers(node: Any, at: str) -> Any:
    """(dotted key, value) for every int and float under a config dataclass (bools are not numbers)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _numbers(getattr(node, f.name), f"{at}.{f.name}" if at else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{at}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{at}[{i}]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield at, node


def validate_seq2seq(cfg: MtlConfig, name: str) -> None:
    task, at = cfg.task[name], f"task.{name}"
    if cfg.sharing.name != "hard":
        raise MtlError(
            f"task '{name}' (seq2seq) warm-starts its decoder from the whole encoder, which sharing={cfg.sharing.name} "
            "splits or freezes; use sharing=hard for runs with seq2seq tasks"
        )
    if task.max_target_length < 3 or task.max_new_tokens < 1 or task.num_beams < 1:
        raise MtlError(f"`{at}.max_target_length` must be >= 3, `.max_new_tokens` and `.num_beams` >= 1")
    if not 0 <= task.label_smoothing < 1:
        raise MtlError(f"`{at}.label_smoothing` must be in [0, 1); got {task.label_smoothing}")


def validate_tasks(cfg: MtlConfig) -> None:
    for name, task in cfg.task.items():
        at = f"task.{name}"
        if task.encoding_errors not in ENCODING_ERRORS:
            raise MtlError(
                f"`{at}.encoding_errors` must be one of [{', '.join(ENCODING_ERRORS)}]; got {task.encoding_errors!r}"
            )
        try:
            task_types.get(task.type)
        except MtlError as err:  # the registry's message lists the types; this names the key
            raise MtlError(f"`{at}.type`: {err}") from None
        if task.source == Source.hub and not task.hub_name:
            raise MtlError(f"`{at}.hub_name` is required when `{at}.source=hub`")
        if task.source == Source.local:
            if "train" not in task.files:
                raise MtlError(f"`{at}.files.train` is required: set it to the training file's path")
            unknown = {s for s in task.files if s not in SPLITS and not is_extra_test(s)}
            if unknown:
                raise MtlError(
                    f"`{at}.files` has unknown split(s) {sorted(unknown)}; use {list(SPLITS)} or extra test "
                    "splits named test_<name> (lower-case letters and digits, e.g. test_flores)"
                )
        for key in ("validation_size", "test_size"):
            value = getattr(task, key)
            if value <= 0:
                raise MtlError(f"`{at}.{key}` must be positive (a fraction below 1 or a count); got {value}")
        if task.max_length < 8:
            raise MtlError(f"`{at}.max_length` must be at least 8; got {task.max_length}")
        if task.head_tokens is not None and not 0 < task.head_tokens < task.max_length - 2:
            raise MtlError(f"`{at}.head_tokens` must be between 1 and max_length - 3; got {task.head_tokens}")
        if not 0 < task.mlm_probability < 1:
            raise MtlError(f"`{at}.mlm_probability` must be in (0, 1); got {task.mlm_probability}")
        if task.type == "seq2seq":
            validate_seq2seq(cfg, name)
        for key in ("max_train_examples", "max_eval_examples"):
            value = getattr(task, key)
            if value is not None and value < 1:
                split = "training split" if key == "max_train_examples" else "validation and test splits"
                raise MtlError(
                    f"`{at}.{key}` must be at least 1 or null (no cap); got {value}, which would leave the {split} empty"
                )
        if task.labels is not None and len(set(task.labels)) < 2:
            raise MtlError(f"`{at}.labels` needs at least two distinct labels; got {task.labels}")


def validate_sharing(cfg: MtlConfig) -> None:
    sh = cfg.sharing
    sharing.get(sh.name)
    if not 0 <= sh.head_dropout < 1:
        raise MtlError(f"`sharing.head_dropout` must be in [0, 1); got {sh.head_dropout}")
    if not 0 <= sh.lora_dropout < 1:
        raise MtlError(f"`sharing.lora_dropout` must be in [0, 1); got {sh.lora_dropout}")
    if sh.lora_alpha <= 0:
        raise MtlError(f"`sharing.lora_alpha` must be positive; got {sh.lora_alpha}")
    if sh.shared_layers < 0 or sh.lora_r <= 0 or sh.num_experts <= 0 or sh.expert_hidden <= 0:
        raise MtlError(
            "`sharing.shared_layers` must be >= 0 and `sharing.lora_r`, `.num_experts`, `.expert_hidden` positive"
        )


def validate_freezing(cfg: MtlConfig) -> None:
    e = cfg.encoder
    if e.freeze_layers < 0:
        raise MtlError(f"`encoder.freeze_layers` must be 0 (train every layer) or more; got {e.freeze_layers}")
    if not (e.freeze_embeddings or e.freeze_layers):
        return
    key = "encoder.freeze_layers" if e.freeze_layers else "encoder.freeze_embeddings"
    if cfg.sharing.name == "adapters":
        raise MtlError(
            f"`{key}` with sharing=adapters: the adapters' base is frozen already (sharing.train_encoder=false) "
            f"or trained whole (true); drop `{key}`"
        )
    for name, task in cfg.task.items():
        why = {
            "mlm": "its output layer is tied to the input embeddings",
            "seq2seq": "its decoder shares the input embeddings",
        }.get(task.type)
        if task.task_marker == "prefix":
            why = "its task-marker token's embedding would never train"
        if why:
            raise MtlError(f"`{key}` cannot be used with task '{name}': {why}; drop `{key}`")


def validate_loss_weighting(cfg: MtlConfig) -> None:
    lw, sh = cfg.loss_weighting, cfg.sharing
    method = loss_weighting.get(lw.name)
    if method.ACTS_ON_SHARED_GRADIENTS and sharing.get(sh.name).FREEZES_ENCODER and not sh.train_encoder:
        raise MtlError(
            f"loss_weighting={lw.name} acts on the shared encoder's gradients, and sharing={sh.name} freezes it; "
            "set sharing.train_encoder=true or choose another loss_weighting"
        )
    if not method.SUPPORTS_EARLY_STOPPING and cfg.trainer.early_stopping_patience is not None:
        raise MtlError(
            f"loss_weighting={lw.name} balances every task at every step, so tasks cannot stop early: "
            "drop trainer.early_stopping_patience or choose another loss_weighting"
        )
    if cfg.trainer.gradient_accumulation_steps > 1 and not method.SUPPORTS_ACCUMULATION:
        raise MtlError(
            f"loss_weighting={lw.name} needs each step's whole task losses at once, so it cannot accumulate "
            "gradients over micro-batches: raise trainer.batch_size instead of trainer.gradient_accumulation_steps, "
            "or use loss_weighting=equal|static|dwa"
        )
    unknown = set(lw.weights) - set(cfg.task)
    if unknown:
        raise MtlError(f"`loss_weighting.weights` names unknown task(s) {sorted(unknown)}; tasks: {list(cfg.task)}")
    if any(w < 0 for w in lw.weights.values()) or lw.temperature <= 0 or lw.c < 0 or lw.weight_lr <= 0:
        raise MtlError("`loss_weighting.weights` must be >= 0, `.temperature` and `.weight_lr` > 0, `.c` >= 0")
    if lw.collapse_threshold < 0:
        raise MtlError(f"`loss_weighting.collapse_threshold` must be >= 0; got {lw.collapse_threshold}")


def validate_trainer(cfg: MtlConfig) -> None:
    t = cfg.trainer
    positive = {"lr": t.lr, "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size, "log_every": t.log_every,
                "gradient_accumulation_steps": t.gradient_accumulation_steps}  # fmt: skip
    for key, value in positive.items():
        if value <= 0:
            raise MtlError(f"`trainer.{key}` must be positive; got {value}")
    if t.max_steps is None and t.epochs <= 0:
        raise MtlError(f"`trainer.epochs` must be positive (or set trainer.max_steps); got {t.epochs}")
    if t.max_steps is not None and t.max_steps <= 0:
        raise MtlError(f"`trainer.max_steps` must be positive; got {t.max_steps}")
    if t.eval_every is not None and t.eval_every <= 0:
        raise MtlError(f"`trainer.eval_every` must be positive or null (once per epoch); got {t.eval_every}")
    if not 0 <= t.warmup_ratio <= 1:
        raise MtlError(f"`trainer.warmup_ratio` must be in [0, 1]; got {t.warmup_ratio}")
    if t.weight_decay < 0 or t.max_grad_norm < 0:
        raise MtlError("`trainer.weight_decay` and `trainer.max_grad_norm` must not be negative")
    if t.affinity_every < 0 or (t.affinity_lookahead_lr is not None and t.affinity_lookahead_lr <= 0):
        raise MtlError("`trainer.affinity_every` must be >= 0 (0: off) and `trainer.affinity_lookahead_lr` positive")
    if t.save_every is not None and t.save_every <= 0:
        raise MtlError(f"`trainer.save_every` must be positive or null (at evaluations only); got {t.save_every}")
    if t.keep_checkpoints < 1:
        raise MtlError(f"`trainer.keep_checkpoints` must be at least 1; got {t.keep_checkpoints}")
    if t.length_grouping < 0:
        raise MtlError(f"`trainer.length_grouping` must be >= 0 (0: off); got {t.length_grouping}")
    if t.devices is not None and t.devices < 1:
        raise MtlError(
            f"`trainer.devices` must be at least 1, or null (as many as the launcher started); got {t.devices}"
        )
    if t.distributed_timeout < 1:
        raise MtlError(f"`trainer.distributed_timeout` must be at least 1 (seconds); got {t.distributed_timeout}")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        raise MtlError(f"`trainer.early_stopping_patience` must be >= 1 or null; got {t.early_stopping_patience}")
    if t.early_stopping_min_delta < 0:
        raise MtlError(f"`trainer.early_stopping_min_delta` must be >= 0; got {t.early_stopping_min_delta}")
    if t.forgetting_threshold is not None and t.forgetting_threshold < 0:
        raise MtlError(
            f"`trainer.forgetting_threshold` must be >= 0, or null (no forgetting monitor); got {t.forgetting_threshold}"
        )
    check_device(t.device)
    known = best_metric_names(cfg)
    if t.best_metric != "main" and t.best_metric not in known:
        raise MtlError(
            f"`trainer.best_metric={t.best_metric}` is not a metric of these tasks; use main or one of {known}"
        )


def best_metric_names(cfg: MtlConfig) -> list[str]:
    """The metric names `trainer.best_metric` may take besides `main`.

    The same tasks as evaluate.average: the non-auxiliary ones (all tasks when every one is
    auxiliary); a name counts when at least one of them reports it.
    """
    types = [task_types.get(task.type) for task in cfg.task.values()]
    scored = [t for t in types if not t.AUXILIARY] or types
    return sorted({metric for t in scored for metric in t.METRICS})
