"""Typed schemas for every setting the code relies on.

The YAML files under `conf/` are merged onto these dataclasses (registered with Hydra's
ConfigStore as `mtl_schema`), so a misspelt key or a wrong type fails when the config is
composed, before any data or weights are loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from mtl_cli.errors import MtlError, first_line

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"

TASK_TYPES = ("classification", "regression", "multilabel", "token_classification", "mlm")
TRUNCATIONS = ("head", "tail", "head+tail")
TASK_MARKERS = ("prefix", "embedding")
SOURCES = ("local", "hub")
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "conll", "text")
POOLINGS = ("mean", "cls")
SHARING_SCHEMES = ("hard", "partial", "adapters", "mmoe")
LOSS_WEIGHTINGS = ("equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad")
SPLITS = ("train", "validation", "test")


@dataclass
class TaskConfig:
    # classification | regression | multilabel | token_classification | mlm (mtl_cli/task_types)
    type: str = "classification"
    # "local": files read with `datasets`; "hub": a dataset name on the Hugging Face Hub.
    source: str = "local"
    hub_name: str | None = None
    hub_config: str | None = None
    # A branch, tag or commit of the Hub dataset (e.g. refs/convert/parquet for script-only sets).
    hub_revision: str | None = None
    # Split name -> file. Relative paths are read from `data_dir`, else `data_root`, else the
    # current directory.
    files: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None
    format: str = "csv"
    # Text encoding of local files (FDU-MTL's MR domain is cp1252).
    encoding: str = "utf-8"
    # `replace` reads undecodable bytes as U+FFFD instead of stopping (csv, tsv, text formats).
    encoding_errors: str = "strict"
    delimiter: str | None = None
    header: bool = True
    # False reads `"` as an ordinary character (FDU-MTL and UCI texts contain raw quotes).
    quoting: bool = True
    column_names: list[str] | None = None
    text_column: str = "text"
    # Set for sentence-pair tasks: the second text (tokenized as a pair with `text_column`).
    text_pair_column: str | None = None
    label_column: str = "label"
    # Token classification: a column of word lists and one of tag lists (conll files fill both).
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # Multi-label: a label column holding lists, or strings joined by this separator.
    label_separator: str = ","
    # Label names in id order; inferred (sorted) from the training split when left empty.
    labels: list[str] | None = None
    # Raw value in the file -> label name, e.g. {0: negative, 1: positive}.
    label_map: dict[str, str] = field(default_factory=dict)
    # Used only when the split has no file: carved from train with `split_seed`, which stays
    # fixed across training seeds so that runs are compared on the same held-out examples.
    # A value below 1 is a fraction of train, 1 or more a number of examples.
    validation_size: float = 0.1
    test_size: float = 0.1
    split_seed: int = 1234
    max_length: int = 128
    # Which part of an over-long text is kept: head, tail, or head+tail (`head_tokens` from the
    # start, the rest from the end; Sun et al. 2019 found it best for long reviews).
    truncation: str = "head"
    head_tokens: int | None = None
    # null, `prefix` (a [TASK=name] token after [CLS]) or `embedding` (a learned vector per task
    # added to every input embedding).
    task_marker: str | None = None
    # MLM: fraction of tokens masked (80% [MASK], 10% random, 10% unchanged).
    mlm_probability: float = 0.15
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass
class EncoderConfig:
    # Any transformers AutoModel name on the Hub or a local directory.
    name_or_path: str = MISSING
    # An installed Python package that ships the same weights offline (its `model/` folder);
    # used instead of the Hub when it is installed.
    offline_package: str | None = None
    revision: str | None = None
    # Build the architecture from the model's config with random weights (smoke tests).
    random_init: bool = False
    # Settings of the model's config to change: its size for a random-init encoder, or e.g.
    # dropout for a pretrained one (attention_probs_dropout_prob=0 lets torch use fused attention).
    config_overrides: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False


@dataclass
class SharingConfig:
    name: str = "hard"
    pooling: str = "mean"
    head_dropout: float = 0.1
    # partial: the bottom `shared_layers` encoder layers (and the embeddings) are shared, each
    # task gets its own copy of the layers above.
    shared_layers: int = 4
    # adapters: one peft adapter per task on a shared encoder; `train_encoder` also trains it.
    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    # Module names the adapters wrap; null lets peft pick the attention projections it knows.
    target_modules: list[str] | None = None
    train_encoder: bool = False
    # mmoe (Ma et al. 2018): `num_experts` feed-forward towers on the encoder output, mixed per
    # example by a softmax gate of each task.
    num_experts: int = 4
    expert_hidden: int = 256


@dataclass
class LossWeightingConfig:
    name: str = "equal"
    # static: a weight per task (missing tasks get 1.0).
    weights: dict[str, float] = field(default_factory=dict)
    # dwa (Liu et al. 2019): softmax temperature over the tasks' loss ratios.
    temperature: float = 2.0
    # gradnorm (Chen et al. 2018): asymmetry alpha and the learning rate of the task weights.
    alpha: float = 1.5
    weight_lr: float = 0.025
    # cagrad (Liu et al. 2021): how far the update may move from the average gradient.
    c: float = 0.5
    # Warn when a task's weight falls below this fraction of the mean weight.
    collapse_threshold: float = 0.01


@dataclass
class MixingConfig:
    name: str = "proportional"
    temperature: float = 1.0
    # seqio/T5-style cap: a task's size counts as at most this many examples.
    max_examples: int | None = None
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    epochs: float = 3.0
    # When set, the run takes exactly this many optimizer steps and `epochs` is ignored.
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Evaluate every N steps; None means once per epoch (all tasks' examples seen once).
    eval_every: int | None = None
    log_every: int = 20
    # The average over tasks of this validation metric picks `checkpoints/best`: `main` is each
    # task type's main metric (accuracy, entity F1, Pearson, micro-F1); auxiliary MLM tasks are
    # left out. Any metric name (e.g. macro_f1) averages that metric over the tasks that have it.
    best_metric: str = "main"
    # Per-task early stopping: a task whose main validation metric has not improved for this many
    # evaluations stops being sampled (its head keeps its best weights); null: never.
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    # Task affinity: every N steps, the cosine similarity of the tasks' gradients on the shared
    # parameters (on validation batches; ~2-4% overhead at 50). 0 turns it off. With
    # `affinity_lookahead_lr` also TAG's lookahead loss change (Fifty et al. 2021).
    affinity_every: int = 50
    affinity_lookahead_lr: float | None = None
    # Checkpoints: `last` (the full training state a resume needs) is written at every evaluation
    # and, when set, every `save_every` steps; the newest `keep_checkpoints` of them are kept
    # (older ones as checkpoints/step-<n>), so a damaged one falls back to the one before.
    save_every: int | None = None
    keep_checkpoints: int = 2
    # A NaN or infinite loss or gradient: `stop` saves the batch and weights to debug/ and stops
    # with the step and task named; `skip` drops that batch's update and goes on.
    nonfinite: str = "stop"
    # Length grouping: each task's shuffled examples are cut into groups of this many batches,
    # sorted by length within a group, and the batches shuffled, so that little of each batch is
    # padding. 0 or 1: plain random batches.
    length_grouping: int = 50
    # bf16: bfloat16 autocast of forward passes; fp32: none. auto: bf16 where the processor has
    # native bfloat16 units (AVX512-BF16 or AMX CPUs, GPUs that support it), else fp32. Measured on
    # FDU-MTL with MiniLM: 1.6x the fp32 training speed, 2.1x evaluation, same test accuracy.
    precision: str = "auto"
    # torch.compile the encoder (dynamic shapes); compilation takes a while before the first step.
    compile: bool = False
    # Torch intra-op threads; None: one per physical core.
    threads: int | None = None
    # "auto" uses a GPU when one is visible, else the CPU.
    device: str = "auto"
    progress: bool = True


@dataclass
class MtlConfig:
    task: dict[str, TaskConfig] = field(default_factory=dict)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    loss_weighting: LossWeightingConfig = field(default_factory=LossWeightingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data_root: str | None = None
    runs_root: str = "runs"
    seed: int = 42


def task_names_label(task: Any) -> str:
    """`yelp+imdb` for a run directory name; safe as one path component."""
    names = "+".join(task.keys()) if task else "no-task"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", names).strip(".") or "run"


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="mtl_schema", node=MtlConfig)
    OmegaConf.register_new_resolver("mtl_tasks", task_names_label, replace=True)
    OmegaConf.register_new_resolver("mtl_data", lambda sub: str(PACKAGE_DIR / "data" / sub), replace=True)


_register()


def to_typed(cfg: DictConfig) -> MtlConfig:
    """Resolve interpolations and check every value against the schema."""
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
    from mtl_cli.mixing import check_config as check_mixing

    if not cfg.task:
        raise MtlError("no task selected: pass task=<name>[+<name>...] (list them with `mtl tasks`)")
    for name, task in cfg.task.items():
        at = f"task.{name}"
        if task.type not in TASK_TYPES:
            raise MtlError(f"`{at}.type` must be one of {list(TASK_TYPES)}; got {task.type!r}")
        if task.source not in SOURCES:
            raise MtlError(f"`{at}.source` must be one of {list(SOURCES)}; got {task.source!r}")
        if task.source == "hub" and not task.hub_name:
            raise MtlError(f"`{at}.hub_name` is required when `{at}.source=hub`")
        if task.source == "local":
            if "train" not in task.files:
                raise MtlError(f"`{at}.files.train` is required: set it to the training file's path")
            unknown = set(task.files) - set(SPLITS)
            if unknown:
                raise MtlError(f"`{at}.files` has unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
            if task.format not in FORMATS:
                raise MtlError(f"`{at}.format` must be one of {list(FORMATS)}; got {task.format!r}")
        for key in ("validation_size", "test_size"):
            value = getattr(task, key)
            if value <= 0:
                raise MtlError(f"`{at}.{key}` must be positive (a fraction below 1 or a count); got {value}")
        if task.max_length < 8:
            raise MtlError(f"`{at}.max_length` must be at least 8; got {task.max_length}")
        if task.encoding_errors not in ("strict", "replace", "ignore"):
            raise MtlError(f"`{at}.encoding_errors` must be strict, replace or ignore; got {task.encoding_errors!r}")
        if task.truncation not in TRUNCATIONS:
            raise MtlError(f"`{at}.truncation` must be one of {list(TRUNCATIONS)}; got {task.truncation!r}")
        if task.head_tokens is not None and not 0 < task.head_tokens < task.max_length - 2:
            raise MtlError(f"`{at}.head_tokens` must be between 1 and max_length - 3; got {task.head_tokens}")
        if task.task_marker is not None and task.task_marker not in TASK_MARKERS:
            raise MtlError(f"`{at}.task_marker` must be null or one of {list(TASK_MARKERS)}; got {task.task_marker!r}")
        if not 0 < task.mlm_probability < 1:
            raise MtlError(f"`{at}.mlm_probability` must be in (0, 1); got {task.mlm_probability}")
        if task.labels is not None and len(set(task.labels)) < 2:
            raise MtlError(f"`{at}.labels` needs at least two distinct labels; got {task.labels}")
    if cfg.sharing.name not in SHARING_SCHEMES:
        raise MtlError(f"`sharing` must be one of {list(SHARING_SCHEMES)}; got {cfg.sharing.name!r}")
    if cfg.sharing.pooling not in POOLINGS:
        raise MtlError(f"`sharing.pooling` must be one of {list(POOLINGS)}; got {cfg.sharing.pooling!r}")
    if not 0 <= cfg.sharing.head_dropout < 1:
        raise MtlError(f"`sharing.head_dropout` must be in [0, 1); got {cfg.sharing.head_dropout}")
    check_mixing(cfg.mixing, list(cfg.task))
    sh = cfg.sharing
    if sh.shared_layers < 0 or sh.lora_r <= 0 or sh.num_experts <= 0 or sh.expert_hidden <= 0:
        raise MtlError(
            "`sharing.shared_layers` must be >= 0 and `sharing.lora_r`, `.num_experts`, `.expert_hidden` positive"
        )
    if sh.adapter != "lora":
        raise MtlError(f"`sharing.adapter` must be lora; got {sh.adapter!r}")
    lw = cfg.loss_weighting
    if lw.name not in LOSS_WEIGHTINGS:
        raise MtlError(f"`loss_weighting` must be one of {list(LOSS_WEIGHTINGS)}; got {lw.name!r}")
    if lw.name in ("gradnorm", "pcgrad", "cagrad") and sh.name == "adapters" and not sh.train_encoder:
        raise MtlError(
            f"loss_weighting={lw.name} acts on the shared encoder's gradients, and sharing=adapters freezes it; "
            "set sharing.train_encoder=true or choose another loss_weighting"
        )
    if lw.name == "gradnorm" and cfg.trainer.early_stopping_patience is not None:
        raise MtlError(
            "loss_weighting=gradnorm balances every task at every step, so tasks cannot stop early: "
            "drop trainer.early_stopping_patience or choose another loss_weighting"
        )
    unknown = set(lw.weights) - set(cfg.task)
    if unknown:
        raise MtlError(f"`loss_weighting.weights` names unknown task(s) {sorted(unknown)}; tasks: {list(cfg.task)}")
    if any(w < 0 for w in lw.weights.values()) or lw.temperature <= 0 or lw.c < 0 or lw.weight_lr <= 0:
        raise MtlError("`loss_weighting.weights` must be >= 0, `.temperature` and `.weight_lr` > 0, `.c` >= 0")
    t = cfg.trainer
    positive = {"lr": t.lr, "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size, "log_every": t.log_every}
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
    if t.precision not in ("auto", "fp32", "bf16"):
        raise MtlError(f"`trainer.precision` must be auto, fp32 or bf16; got {t.precision!r}")
    if t.length_grouping < 0:
        raise MtlError(f"`trainer.length_grouping` must be >= 0 (0: off); got {t.length_grouping}")
    if t.nonfinite not in ("stop", "skip"):
        raise MtlError(f"`trainer.nonfinite` must be stop or skip; got {t.nonfinite!r}")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        raise MtlError(f"`trainer.early_stopping_patience` must be >= 1 or null; got {t.early_stopping_patience}")
    if not t.best_metric:
        raise MtlError("`trainer.best_metric` must be `main` (each task's main metric) or a metric name")
