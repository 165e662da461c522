"""Typed schemas for every setting the code relies on, and the only place their defaults live.

The YAML files under `conf/` are merged onto these dataclasses (registered with Hydra's
ConfigStore as `mtl_schema`), so a misspelt key, a wrong type or a value outside a closed
choice (an enum below) fails when the config is composed, before any data or weights are
loaded. A group YAML states only what its option changes. Checks that span several fields or
need the plugin registries are in `mtl_cli.validation`; this module imports no other part of
mtl_cli, so the plugins can import their typed configs from here without a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
# The configs live in the top-level `conf/` of the checkout (also what an editable install
# sees); a built wheel installs that folder as `mtl_cli/conf` (pyproject's package-dir).
CONF_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent / "conf"

SPLITS = ("train", "validation", "test")
# Further test splits a task may name in `files` (`test_<name>`, e.g. test_flores): scored at the
# end beside `test`, never used to pick checkpoints.
EXTRA_TEST = re.compile(r"test_[a-z0-9]+")


def is_extra_test(split: str) -> bool:
    return EXTRA_TEST.fullmatch(split) is not None


def held_out(splits: Any) -> list[str]:
    """validation, test and the extra test splits among `splits`, in that order."""
    return ["validation", "test", *sorted(s for s in splits if is_extra_test(s))]


class Choice(str, Enum):
    """A closed choice: OmegaConf rejects any other value, naming the key and the allowed names.

    Members behave as their plain names everywhere else: they compare equal to them
    (`precision == "bf16"`), print and format as them (log lines, messages), JSON-encode as them
    (transfer's cache key) and repr as them (`datasets` fingerprints repr their settings), so
    moving a setting from `str` to a Choice changes no output and no cache key. YAML files and
    overrides use the names; OmegaConf matches members by name, which is why name == value.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


class Source(Choice):
    local = "local"
    hub = "hub"


class DataFormat(Choice):
    csv = "csv"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"
    conll = "conll"
    text = "text"
    # Two line-aligned files per split, `<file>.<source_language>` and `<file>.<target_language>` (seq2seq).
    parallel = "parallel"


# The decoding error handlers `datasets` passes on to Python's codecs. A plain string checked by
# validation, not a Choice: a member named `replace` would hide str.replace on every member.
ENCODING_ERRORS = ("strict", "replace", "ignore")

if TYPE_CHECKING:  # the class mypy checks against; it cannot follow the functional API below

    class Truncation(Choice):
        head = "head"
        tail = "tail"

else:
    # `head+tail` is not a Python identifier, so this one is built with the functional API.
    Truncation = Choice(
        "Truncation",
        [("head", "head"), ("tail", "tail"), ("head+tail", "head+tail")],
        module=__name__,  # so that pickle finds it
        qualname="Truncation",
    )


class TaskMarker(Choice):
    prefix = "prefix"
    embedding = "embedding"


class Pooling(Choice):
    mean = "mean"
    cls = "cls"


class Adapter(Choice):
    lora = "lora"


class Precision(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    # float16 autocast with a gradient scaler: CUDA only (refused on a CPU).
    fp16 = "fp16"


class NonFinite(Choice):
    stop = "stop"
    skip = "skip"


class Logger(Choice):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


@dataclass
class TaskConfig:
    # A name in mtl_cli.task_types.TASK_TYPES (classification, regression, multilabel, ...).
    type: str = "classification"
    # "local": files read with `datasets`; "hub": a dataset name on the Hugging Face Hub.
    source: Source = Source.local
    hub_name: str | None = None
    hub_config: str | None = None
    # A branch, tag or commit of the Hub dataset (e.g. refs/convert/parquet for script-only sets).
    hub_revision: str | None = None
    # Split name -> file: train, validation, test, and any extra test splits `test_<name>`
    # (e.g. an out-of-domain set). Relative paths are read from `data_dir`, else `data_root`,
    # else the current directory.
    files: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None
    format: DataFormat = DataFormat.csv
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
    # The data check warns when a class (a multilabel label, an entity type of a token-classification
    # task) has less than this share of the training labels; null or 0: no warning. 0.02 is below
    # every class of the shared data sets (the rarest: emotion's surprise, 3.6%).
    min_class_share: float | None = 0.02
    # Used only when the split has no file: carved from train with `split_seed`, which stays
    # fixed across training seeds so that runs are compared on the same held-out examples.
    # A value below 1 is a fraction of train, 1 or more a number of examples.
    validation_size: float = 0.1
    test_size: float = 0.1
    split_seed: int = 1234
    max_length: int = 128
    # Which part of an over-long text is kept: head, tail, or head+tail (`head_tokens` from the
    # start, the rest from the end; Sun et al. 2019 found it best for long reviews).
    truncation: Truncation = Truncation.head
    head_tokens: int | None = None
    # null, `prefix` (a [TASK=name] token after [CLS]) or `embedding` (a learned vector per task
    # added to every input embedding).
    task_marker: TaskMarker | None = None
    # MLM: fraction of tokens masked (80% [MASK], 10% random, 10% unchanged).
    mlm_probability: float = 0.15
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # seq2seq (source text -> target text): the target column, its token budget, and generation.
    target_column: str = "target"
    max_target_length: int = 128
    # format: parallel: the suffixes of a split's two line-aligned files (e.g. de, en).
    source_language: str | None = None
    target_language: str | None = None
    label_smoothing: float = 0.0
    # Evaluation and prediction: greedy (1) or beam search, at most this many generated tokens.
    num_beams: int = 1
    max_new_tokens: int = 64
    # seq2seq tasks naming the same decoder share it (one module); null: the task's own decoder.
    decoder: str | None = None


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
    # Train less of the encoder, for speed: the input embeddings stay as loaded (their gradient and
    # optimizer update are skipped), and with `freeze_layers=N` the bottom N layers too, whose
    # backward pass is then skipped altogether. The speed and accuracy cost are in the README (Speed).
    freeze_embeddings: bool = False
    freeze_layers: int = 0


@dataclass
class SharingConfig:
    name: str = "hard"
    pooling: Pooling = Pooling.mean
    head_dropout: float = 0.1
    # partial: the bottom `shared_layers` encoder layers (and the embeddings) are shared, each
    # task gets its own copy of the layers above.
    shared_layers: int = 4
    # adapters: one peft adapter per task on a shared encoder; `train_encoder` also trains it
    # (and saves it in checkpoints).
    adapter: Adapter = Adapter.lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    # Module names the adapters wrap; null lets peft pick the attention projections it knows
    # (BERT/MiniLM: query, value).
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
    # annealed (Stickland & Murray 2019): p ∝ size ** alpha, alpha falling linearly from 1 in the
    # first epoch to this in the last (their schedule: 0.2); 0 ends uniform, 1 stays proportional.
    alpha_floor: float = 0.2
    # schedule: task -> keyframes [[step, weight], ...], steps increasing, linear in between and
    # constant outside; tasks not named keep weight 1; normalised over the tasks at every step.
    # `step` counts the optimizer steps done before the batch (0 for the first).
    # list[list[Any]], not list[list[float]]: OmegaConf 2.3 refuses an int inside a nested float list
    # ([[0, 1], [200, 0.1]]: "Value 0 (int) is incompatible with type hint 'float'"), so
    # mixing.check_config checks that each keyframe is two numbers.
    schedule: dict[str, list[list[Any]]] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    epochs: float = 3.0
    # When set, the run takes exactly this many optimizer steps and `epochs` is ignored.
    max_steps: int | None = None
    batch_size: int = 32
    # Each optimizer step sums the gradients of this many batches of `batch_size` (one forward and
    # backward each): the step sees batch_size x K examples, with the memory of one batch.
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Evaluate every N steps; None means once per epoch (all tasks' examples seen once).
    eval_every: int | None = None
    log_every: int = 20
    # Experiment trackers the run also writes to, every `log_every` steps and at every evaluation:
    # tensorboard (event files in the run's `tensorboard/` folder; `tensorboard --logdir runs` shows
    # every run), mlflow (see mlflow_tracking_uri). [] for none; train_metrics.jsonl is always written.
    loggers: list[Logger] = field(default_factory=lambda: [Logger.tensorboard])
    # mlflow: the tracking URI; null: $MLFLOW_TRACKING_URI when set, else a local store in <runs_root>/mlruns.
    mlflow_tracking_uri: str | None = None
    # mlflow: the experiment the run is logged under; null: the run's task names (yelp+imdb).
    mlflow_experiment: str | None = None
    # Forgetting monitor: a task whose main validation metric falls more than this (in the metric's
    # own units, 0.05 = 5 accuracy points) below its best so far while training goes on is flagged
    # (a warning once per episode, marked in metrics.jsonl and metrics.md); null: off.
    forgetting_threshold: float | None = 0.05
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
    nonfinite: NonFinite = NonFinite.stop
    # Length grouping: each task's shuffled examples are cut into groups of this many batches,
    # sorted by length within a group, and the batches shuffled, so that little of each batch is
    # padding. 0 or 1: plain random batches.
    length_grouping: int = 50
    # bf16: bfloat16 autocast of forward passes; fp32: none. auto: bf16 where the processor has
    # native bfloat16 units (AVX512-BF16 or AMX CPUs, GPUs that support it), else fp32. Measured on
    # FDU-MTL with MiniLM: 1.6x the fp32 training speed, 2.1x evaluation, same test accuracy.
    precision: Precision = Precision.auto
    # torch.compile the encoder (dynamic shapes); compilation takes a while before the first step.
    compile: bool = False
    # Torch intra-op threads (1 to 1024); None: one per physical core.
    threads: int | None = None
    # "auto" uses a GPU when one is visible, else the CPU; cpu, cuda[:N] and mps must exist here.
    device: str = "auto"
    progress: bool = True
    # Data-parallel training (torch.distributed DDP, one process per device): None trains in as many
    # processes as the launcher started (torchrun, accelerate launch; one without a launcher);
    # N > 1 makes `mtl train` start N processes itself through torch's elastic launcher (torchrun's
    # engine). batch_size is per process: a step sees batch_size x gradient_accumulation_steps x N.
    devices: int | None = None
    # Seconds a process waits for the others at a collective (a rank that hangs or died) before it fails.
    distributed_timeout: int = 300


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
    # What `mtl train` returns to a Hydra sweeper (hydra/sweeper=optuna maximises it): the validation
    # average of this metric at the best checkpoint (`main`: each task type's main metric).
    objective: str = "main"


# A run directory is `<time>_<label>` (a sweep job's `<n>_<label>`, `_2` for a second run in the
# same second): the label stays well under the 255 bytes a file name may have.
LABEL_MAX = 120


def task_names_label(task: Any) -> str:
    """`yelp+imdb` for a run directory name; safe as one path component, at most LABEL_MAX bytes.

    Longer (many tasks, or long names): the first names, the number left out and a short hash
    of the whole label, e.g. `a+b+c+27-more-1f2e3d4c`, the same for the same tasks.
    """
    names = "+".join(task.keys()) if task else "no-task"
    label = re.sub(r"[^A-Za-z0-9_.+-]", "_", names).strip(".") or "run"
    if len(label) <= LABEL_MAX:
        return label
    import hashlib

    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    parts = label.split("+")
    kept: list[str] = []
    while parts and len("+".join([*kept, parts[0]])) <= LABEL_MAX - 24:
        kept.append(parts.pop(0))
    if not kept:  # one name longer than the budget on its own
        kept, parts = [parts[0][: LABEL_MAX - 24]], parts[1:]
    more = f"+{len(parts)}-more" if parts else ""
    return f"{'+'.join(kept)}{more}-{digest}"


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="mtl_schema", node=MtlConfig)
    OmegaConf.register_new_resolver("mtl_tasks", task_names_label, replace=True)
    OmegaConf.register_new_resolver("mtl_data", lambda sub: str(PACKAGE_DIR / "data" / sub), replace=True)


_register()
