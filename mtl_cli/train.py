"""`train(cfg) -> results`: set-up, the training loop, and `resume`.

    prepare(cfg) -> Setup        data, encoder, tokenized splits, sampler, step counts (no files yet)
    build(setup, run) -> Parts   model, optimizer, batch streams, evaluator, in the claimed run directory
    fit(parts, state, callbacks, stop) -> why it stopped, or None at the end of the budget
    final_results(...)           the best checkpoint(s) scored on validation and test (evaluate.py)

One explicit loop: every step the mixing sampler picks a task, that task's next batch goes
through the shared encoder and its own head, and the optimizer steps on that loss. Optional
features (affinity, early stopping, timing, diagnostics, the non-finite guard, the forgetting
monitor, tracking: train_metrics.jsonl, TensorBoard, MLflow) are callbacks.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from mtl_cli import distributed, loss_weighting, task_types
from mtl_cli.batches import TaskBatches
from mtl_cli.callbacks import Callback, Stop
from mtl_cli.callbacks.affinity import AffinityProbe
from mtl_cli.callbacks.diagnostics import WeightingDiagnostics
from mtl_cli.callbacks.early_stopping import EarlyStopping
from mtl_cli.callbacks.forgetting import Forgetting
from mtl_cli.callbacks.nonfinite import NonfiniteGuard
from mtl_cli.callbacks.timing import Timing
from mtl_cli.callbacks.tracking import Tracking
from mtl_cli.checkpoints import (
    TRAINING_STATE,
    base_reference,
    check_checkpoint_origin,
    checkpoint_step,
    config_digest,
    find_checkpoint,
    has_checkpoint,
    load_training_state,
    load_weights,
    read_checkpoint_state,
    save_checkpoint,
    training_state,
)
from mtl_cli.config import MtlConfig, task_names_label
from mtl_cli.datacheck import check_tasks, report_warnings
from mtl_cli.device import bf16_supported, check_fp16, physical_cores, setup_torch, use_bf16
from mtl_cli.distributed import World
from mtl_cli.encoders import load_encoder
from mtl_cli.errors import MtlError, first_line
from mtl_cli.evaluate import Evaluation, Evaluator, final_results, write_interrupted_table
from mtl_cli.fingerprints import changed_tasks, data_fingerprint, split_fingerprints
from mtl_cli.interrupts import StopRequest, exit_code, signal_name
from mtl_cli.locks import run_lock
from mtl_cli.logs import check_log, progress_bar, setup_logging, show_progress, status
from mtl_cli.mixing import StepCounts, TaskSampler, build_sampler
from mtl_cli.model import MultiTaskModel, build_model
from mtl_cli.optim import build_optimizer
from mtl_cli.rundir import RunDir, check_run_dir_path, claim, load_run_config, new_run_dir
from mtl_cli.state import TrainState
from mtl_cli.steps import train_step
from mtl_cli.tasks import Task, absolute_paths, load_tasks
from mtl_cli.tokenization import add_task_markers, tokenize_tasks
from mtl_cli.validation import to_typed
from mtl_cli.writers import WriteError, append_jsonl, check_writable, trim_jsonl, write_json, write_text

log = logging.getLogger("mtl")


@dataclass
class Setup:
    """Everything before a run directory is needed."""

    cfg: MtlConfig
    device: torch.device
    tasks: dict[str, Task]
    data_report: dict
    encoder: Any
    tokenizer: Any
    data: dict[str, dict[str, dict[str, list]]]  # split -> task -> columns
    sampler: TaskSampler
    weighting: Any
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    data_fingerprint: dict[str, str]
    model: MultiTaskModel  # built here, so that the sharing scheme's limits are checked before any folder
    split_fingerprints: dict[str, dict[str, str]] | None = None  # task -> split -> hash of its examples
    world: World = World()  # this process's rank among the data-parallel processes


@dataclass
class Parts:
    """What the loop trains with; built once, never reassigned."""

    cfg: MtlConfig
    run: RunDir
    model: MultiTaskModel
    tokenizer: Any
    labels: dict[str, list[str] | None]
    types: dict[str, Any]  # task -> its task-type module
    optimizer: Any
    scheduler: Any
    sampler: TaskSampler
    batches: dict[str, TaskBatches]
    data: dict[str, dict[str, dict[str, list]]]
    weighting: Any
    shared: list  # the parameters every task uses
    device: torch.device
    bf16: bool
    evaluator: Evaluator
    base: dict | None  # the frozen base encoder that checkpoints leave out
    total_steps: int
    eval_every: int
    steps_per_epoch: int
    world: World
    ddp: Any  # what training steps call: the model, or its DistributedDataParallel wrapper
    scaler: Any = None  # precision=fp16: the gradient scaler (torch.amp.GradScaler)


def train(cfg: DictConfig | MtlConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Train as configured; returns {"run_dir", "results" (test), "validation", "best_step", "timing"}.

    `run_dir` is where Hydra wants the run; without it one is made under `cfg.runs_root`.
    Nothing is written there until the data and the encoder have loaded without error.
    """
    typed = absolute_paths(to_typed(cfg) if isinstance(cfg, DictConfig) else cfg)
    if run_dir is not None:
        check_run_dir_path(run_dir)  # not inside another run, a name the filesystem takes: before any loading
    t = typed.trainer
    with distributed.session(t.devices, distributed.device_kind(t.device), t.distributed_timeout) as world:
        check_distributed(typed, world)
        setup_logging(None)
        show_progress(t.progress and world.writes)
        setup = prepare(typed, world)
        claimed: Any = None

        def claim_run() -> Path:  # rank 0's; the others train into the directory it claimed
            nonlocal claimed
            base = run_dir or new_run_dir(typed.runs_root, task_names_label(typed.task))
            claimed = claim(base, OmegaConf.to_yaml(OmegaConf.structured(typed)))  # locked while this process runs
            return claimed.run.path

        run = RunDir(distributed.share(claim_run))
        state: TrainState | None = None
        try:
            write_text(run.overrides, OmegaConf.to_yaml(OmegaConf.create(list(overrides or []))))
            parts = build(setup, run)
            state = new_state(parts, setup)
            return run_to_end(parts, setup, state)
        except BaseException as err:
            if state is not None and state.step > 0:
                raise
            # Nothing was trained: the folder this process claimed goes (an earlier run's never).
            setup_logging(None)
            if claimed is not None:
                claimed.discard()
            if isinstance(err, MtlError) and err.exit_code > 128:  # a signal before the first step: nothing to resume
                name = signal_name(err.exit_code - 128)
                raise MtlError(f"{name}: stopped before training started; nothing was saved", err.exit_code) from None
            raise
        finally:
            if claimed is not None:
                claimed.release()


def check_distributed(cfg: MtlConfig, world: World) -> None:
    """What data parallelism cannot do the way one process does, refused in one line."""
    if not world.distributed:
        return
    name = cfg.loss_weighting.name
    if loss_weighting.get(name).NEEDS_ALL_TASKS or name == "dwa":
        raise MtlError(
            f"loss_weighting={name} is not supported on {world.size} processes ("
            + ("it combines per-task gradients that each process would compute on its own shard"
               if name != "dwa" else "its weights follow each process's own losses")
            + "); use loss_weighting=equal, static or uncertainty, or train on one process"
        )  # fmt: skip


def resume(run_dir: Path, trust_remote_code: bool = False) -> dict:
    """Continue a run from its newest intact `last` checkpoint, in its own directory, with its own config.

    Model, optimizer, scheduler, RNG, sampler and batch positions, loss weighting and callbacks
    all continue from the checkpoint, so on CPU the run ends exactly as an uninterrupted one
    would. A run killed before its first checkpoint starts again from step 0.
    """
    cfg = load_run_config(Path(run_dir), trust_remote_code)
    t = cfg.trainer
    with distributed.session(t.devices, distributed.device_kind(t.device), t.distributed_timeout) as world:
        check_distributed(cfg, world)
        if not world.writes:  # rank 0 holds the lock for all of them
            return _resume(RunDir(Path(run_dir)), cfg, world)
        with run_lock(Path(run_dir), "resume"):  # one writer per run: before anything is read or written
            return _resume(RunDir(Path(run_dir)), cfg, world)


def _resume(run: RunDir, cfg: MtlConfig, world: World) -> dict:
    if run.results.is_file():
        raise MtlError(f"{run} has finished (results.json exists); nothing to resume. Evaluate it with mtl eval")
    if run.checkpoints.exists() and not run.checkpoints.is_dir():
        raise MtlError(f"{run.checkpoints} is not a folder; the run directory is damaged: restore it, or train again")
    for folder in (run.path, run.checkpoints):  # a read-only or full disk: refused before anything loads
        if folder.is_dir():
            check_writable(folder, f", then continue with: mtl train resume={run}")
    ckpt = find_checkpoint(run, "last") if has_checkpoint(run, "last") else None
    if ckpt is not None:
        check_checkpoint_origin(run.config, ckpt, cfg)
        if not (ckpt / TRAINING_STATE).is_file():
            raise MtlError(f"{ckpt} has no {TRAINING_STATE} (the training state); it cannot be resumed from")
    setup_logging(None)
    show_progress(cfg.trainer.progress and world.writes)
    setup = prepare(cfg, world)
    state = new_state_from(ckpt, setup) if ckpt is not None else None  # checked before anything is written
    parts = build(setup, run, resumed=True)
    if state is None or ckpt is None:
        log.info("resume: %s has no checkpoint yet; training starts again from step 0", run)
        state = new_state(parts, setup)
    else:
        restore(parts, state, ckpt)
        log.info("resumed from %s at step %d of %d", ckpt, state.step, parts.total_steps)
    # Records written after the checkpoint are written again, identically, by the resumed run.
    for path in (run.metrics, run.affinity, run.train_metrics):
        trim_jsonl(path, state.step)
    return run_to_end(parts, setup, state)


def prepare(cfg: MtlConfig, world: World | None = None) -> Setup:
    t, world = cfg.trainer, world or World()
    with status("loading data"):
        tasks = load_tasks(cfg)  # data mistakes surface before the encoder is loaded
    # The ranks on one machine share its cores; each a device of its own on GPUs.
    threads = t.threads or max(1, physical_cores() // world.local_size)
    device = setup_torch(t.device, threads)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    check_fp16(t.precision, device, cfg.loss_weighting.name)
    data_report = check_tasks(tasks, full=False)  # duplicates and leakage: cheap, hashes only
    torch.manual_seed(cfg.seed)  # a random-init encoder draws its weights here
    with status(f"loading the encoder {cfg.encoder.name_or_path}"):
        encoder, tokenizer = load_encoder(cfg.encoder)
    check_positions(cfg, encoder)
    add_task_markers(tokenizer, encoder, [n for n, tc in cfg.task.items() if tc.task_marker == "prefix"])
    with status("tokenizing " + ", ".join(f"{n} ({sum(tk.sizes().values())} examples)" for n, tk in tasks.items())):
        data = tokenize_tasks(tasks, tokenizer)
    sizes = {name: len(d["input_ids"]) for name, d in data["train"].items()}
    method = loss_weighting.get(cfg.loss_weighting.name)
    # Gradient methods need every task's loss at the same step: a step then holds one batch of
    # each task, and an epoch (all examples seen once) takes that many fewer steps.
    per_step = len(sizes) if method.NEEDS_ALL_TASKS else 1
    step_size = t.batch_size * t.gradient_accumulation_steps * world.size * per_step
    steps_per_epoch = math.ceil(sum(sizes.values()) / step_size)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    # After the step counts: a scheduled sampler (mixing=annealed) measures epochs as the run does.
    sampler = build_sampler(cfg.mixing, sizes, cfg.seed, StepCounts(steps_per_epoch, total_steps))
    return Setup(
        cfg, device, tasks, data_report, encoder, tokenizer, data, sampler,
        method.build(cfg.loss_weighting, list(sizes), steps_per_epoch), steps_per_epoch, total_steps,
        min(t.eval_every or steps_per_epoch, total_steps), data_fingerprint(data["train"]),
        built_model(cfg, encoder, tasks), split_fingerprints=split_fingerprints(tasks), world=world,
    )  # fmt: skip


def built_model(cfg: MtlConfig, encoder: Any, tasks: dict[str, Task]) -> MultiTaskModel:
    """The model, built before any run folder exists: what the sharing scheme refuses (more shared
    layers than the encoder has, adapters with no module to attach to) stops the run here."""
    torch.manual_seed(cfg.seed)  # the heads' (and private layers') initial weights
    return build_model(encoder, cfg.task, {n: tk.labels for n, tk in tasks.items()}, cfg.sharing)


# Encoders whose position ids start after the padding index (RoBERTa's `padding_idx + 1`).
OFFSET_POSITIONS = ("roberta", "camembert", "longformer", "mpnet", "ibert", "data2vec-text", "luke")


def check_positions(cfg: MtlConfig, encoder: Any) -> None:
    """A task's `max_length` within the encoder's learned position embeddings, checked before training
    (a longer example would otherwise fail at the first evaluation)."""
    config = encoder.config
    limit = getattr(config, "max_position_embeddings", None)
    absolute = getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
    if not isinstance(limit, int) or limit <= 0 or not absolute or not getattr(config, "position_biased_input", True):
        return  # relative or rotary positions: no fixed limit
    kind = str(getattr(config, "model_type", "") or "")
    if any(k in kind for k in OFFSET_POSITIONS):
        limit -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    for name, task in cfg.task.items():
        keys = ["max_length", "max_target_length"] if task.type == "seq2seq" else ["max_length"]  # a decoder like it
        for key in keys:
            if getattr(task, key) > limit:
                raise MtlError(
                    f"`task.{name}.{key}={getattr(task, key)}` is more than the {limit} positions the encoder "
                    f"({kind or type(encoder).__name__}) has; set task.{name}.{key}={limit} or less"
                )


def build(s: Setup, run: RunDir, resumed: bool = False) -> Parts:
    """Logging into the run directory, the model, optimizer, batch streams and evaluator."""
    cfg, t, world = s.cfg, s.cfg.trainer, s.world
    setup_logging(run.log if world.writes else None)
    if not world.writes:  # rank 0 logs for the run; the others end with their one-line error
        log.setLevel(logging.CRITICAL)
    log.info("%s directory: %s", "resuming run" if resumed else "run", run)
    log.info(
        "device: %s, torch threads: %d (%s)", s.device, torch.get_num_threads(),
        "trainer.threads" if t.threads else f"one per physical core: {physical_cores()}"
        + (f", shared by {world.local_size} processes" if world.local_size > 1 else ""),
    )  # fmt: skip
    if world.distributed:
        log.info(
            "data parallel: %d processes (%s), each step %d examples per task batch (%d per process)",
            world.size, "nccl" if s.device.type == "cuda" else "gloo",
            t.batch_size * t.gradient_accumulation_steps * world.size, t.batch_size * t.gradient_accumulation_steps,
        )  # fmt: skip
    for name, task in s.tasks.items():
        log.info("task %s (%s): %s labels %s", name, task.cfg.type, task.sizes(), task.labels)
    write_json(run.data_check, s.data_report)
    for warning in report_warnings(s.data_report):
        log.warning("data check: %s (details: mtl data check, or data_check.json)", warning)
    labels = {n: tk.labels for n, tk in s.tasks.items()}
    model = s.model.to(s.device)  # built by prepare, seeded as before
    model.use_tokenizer(s.tokenizer)
    counts = model.parameter_counts()
    write_json(run.parameters, {"sharing": cfg.sharing.name, **counts})
    log.info("sharing=%s parameters: %s", cfg.sharing.name, counts)
    if s.weighting.needs_all_tasks:
        log.info(
            "loss_weighting=%s: every step holds one batch of each task; mixing is not used", cfg.loss_weighting.name
        )
    else:
        log.info(
            "mixing=%s probabilities %s; loss_weighting=%s",
            cfg.mixing.name, {k: round(v, 4) for k, v in s.sampler.probabilities.items()}, cfg.loss_weighting.name,
        )  # fmt: skip
    log.info(
        "%d steps (%.2f epochs of %d steps), eval every %d%s",
        s.total_steps, s.total_steps / s.steps_per_epoch, s.steps_per_epoch, s.eval_every,
        f"; each step {t.gradient_accumulation_steps} accumulated batches of {t.batch_size}"
        if t.gradient_accumulation_steps > 1 else "",
    )  # fmt: skip
    opt, sched = build_optimizer(model, t, s.total_steps, s.weighting.parameters())
    types = {n: task_types.get(tc.type) for n, tc in cfg.task.items()}
    pad = s.tokenizer.pad_token_id
    batches = {
        # Planned at the step's size; steps.accumulated_step cuts each into micro-batches of batch_size.
        name: TaskBatches(
            d,
            types[name].collate,
            t.batch_size * t.gradient_accumulation_steps * world.size,  # every rank takes its slice
            pad,
            cfg.seed * 1000 + i,
            group=t.length_grouping,
        )
        for i, (name, d) in enumerate(s.data["train"].items())
    }
    if t.compile:
        model.trunk.compile(dynamic=True)  # in place: parameter names (and checkpoints) stay as they are
    bf16 = use_bf16(t.precision, s.device)
    if t.precision == "bf16" and not bf16_supported(s.device):
        log.warning("trainer.precision=bf16: this %s has no native bfloat16 units, so it may be slower", s.device)
    log.info(
        "precision %s (trainer.precision=%s), length grouping %s, %s",
        "fp16 autocast, gradient scaler" if t.precision == "fp16" else "bf16 autocast" if bf16 else "fp32", t.precision,
        f"{t.length_grouping} batches" if t.length_grouping > 1 else "off",
        "torch.compile on (the first steps compile)" if t.compile else "eager",
    )  # fmt: skip
    type_names = {n: tc.type for n, tc in cfg.task.items()}
    evaluator = Evaluator(model, s.data, type_names, labels, t.eval_batch_size, pad, s.device, bf16)
    return Parts(
        cfg, run, model, s.tokenizer, labels, types, opt, sched, s.sampler, batches, s.data, s.weighting,
        model.shared_parameters(), s.device, bf16, evaluator, base_reference(cfg, model),
        s.total_steps, s.eval_every, s.steps_per_epoch, world, distributed.wrap(model, s.device),
        torch.amp.GradScaler(s.device.type) if t.precision == "fp16" else None,
    )  # fmt: skip


def build_callbacks(parts: Parts) -> list[Callback]:
    """The loop's optional features, in the order they run after a step or an evaluation."""
    t = parts.cfg.trainer
    callbacks: list[Callback] = [Timing(), NonfiniteGuard(t.nonfinite), AffinityProbe(parts), WeightingDiagnostics()]
    if t.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(parts))
    callbacks.append(Forgetting.of(parts))  # every task, a stopped one too: the shared encoder moves on under its head
    if parts.world.writes:  # last: it logs what the probe and the diagnostics measured; rank 0's only
        callbacks.append(Tracking(parts, callbacks))
    return callbacks


def new_state(parts: Parts, s: Setup) -> TrainState:
    return TrainState(
        examples_seen=dict.fromkeys(parts.batches, 0),
        active=list(parts.batches),
        data_fingerprint=s.data_fingerprint,
        split_fingerprints=s.split_fingerprints or {},
        encoder=asdict(parts.cfg.encoder),
        config_sha256=config_digest(parts.run.config),
        world_size=parts.world.size,
    )


def new_state_from(ckpt: Path, s: Setup) -> TrainState:
    """The checkpoint's state, refused if the training data changed since it was saved."""
    state = TrainState.from_json(read_checkpoint_state(ckpt)[1])
    if state.world_size != s.world.size:
        # The batch each step plans is batch_size x world size: another world size is another run.
        raise MtlError(
            f"{ckpt} was trained on {state.world_size} process(es), this resume has {s.world.size}; resume it on "
            f"{state.world_size}: "
            + (f"torchrun --nproc_per_node {state.world_size} -m mtl_cli train resume=<run>"
               if state.world_size > 1 else "mtl train resume=<run> without a launcher")
        )  # fmt: skip
    # Every column of the tokenized training data: texts, labels, tags (a checkpoint written before
    # labels were hashed is compared on its input_ids).
    changed = changed_tasks(state.data_fingerprint or s.data_fingerprint, s.data_fingerprint, s.data["train"])
    if changed:
        raise MtlError(
            f"the training data of task(s) {changed} changed since {ckpt} was saved; a resume needs the same "
            "data and tokenizer: restore the files, or start a new run"
        )
    now = s.split_fingerprints or {}
    saved = state.split_fingerprints if isinstance(state.split_fingerprints, dict) else {}
    moved = [
        f"{task}/{split}"
        for task, splits in now.items()
        if isinstance(saved.get(task), dict)
        for split in splits
        if saved[task].get(split, splits[split]) != splits[split]
    ]
    if moved:
        log.warning("the %s data changed since %s was saved; the resumed run evaluates on the new data", moved, ckpt)
    # From here on the checkpoints record the data this process trains and evaluates on.
    state.data_fingerprint, state.split_fingerprints = s.data_fingerprint, now
    return state


def restore(parts: Parts, state: TrainState, ckpt: Path) -> None:
    """Weights, optimizer, scheduler, RNG and positions as they were at `ckpt` (a `last` checkpoint)."""
    load_weights(parts.model, ckpt)
    load_training_state(ckpt, parts.optimizer, parts.scheduler, parts.weighting, parts.scaler)
    for name, b in parts.batches.items():
        b.load_state_dict(state.batches[name])
    parts.sampler.load_state_dict(state.sampler)
    if state.active and set(state.active) != set(parts.batches):
        parts.sampler.set_active(state.active)
    if state.trunk and hasattr(parts.model.trunk, "load_running_state"):
        parts.model.trunk.load_running_state(state.trunk)


def run_to_end(parts: Parts, s: Setup, state: TrainState) -> dict:
    """Train to the end of the budget (or an early stop), then score the best checkpoint(s).

    SIGINT/SIGTERM save a checkpoint and stop with the command that continues the run; outside
    the loop (saving after a stop, the final scoring) a signal stops at once. A write that fails
    (a full disk) stops with one line and the same command.
    """
    callbacks = build_callbacks(parts)
    for cb in callbacks:
        if cb.name and cb.name in state.callbacks:
            cb.load_state_dict(state.callbacks[cb.name])
    scoring = False
    try:
        with StopRequest(at_once=True):  # also when train() is called without the CLI
            with StopRequest(grace=2.0 if parts.world.distributed else 0.0) as signals:
                stop = fit(parts, state, callbacks, signals)
            if signals.signum is not None:
                interrupted(parts, state, callbacks, signals.signum)
            if stop is not None and stop.error:
                raise MtlError(stop.reason)
            if stop is not None:
                log.info(stop.reason)
            check_log()
            scoring = True
            stopping = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
            out = final_results(parts, state, stopping)
            for cb in callbacks:
                cb.on_finish(parts, state)
            timing = next(cb for cb in callbacks if isinstance(cb, Timing)).write(parts)
            log.info("done: %s", parts.run)
            return {**out, "timing": timing}
    except WriteError as err:
        log.error("run failed at step %d: %s", state.step, err)
        if parts.run.results.is_file():  # what failed came after the results: nothing to resume
            raise MtlError(f"{err}; the run itself finished ({parts.run.results} is written)") from None
        raise err.then(f"mtl train resume={parts.run}") from None
    except KeyboardInterrupt as err:  # a second signal, or one outside the loop: at once, no save
        name = signal_name(err)
        if scoring:
            log.warning("%s during the final scoring: stopped; results.json not written", name)
            raise MtlError(
                f"{name}: stopped during the final scoring, after training; the checkpoints are saved, results.json "
                f"is not written: finish with: mtl train resume={parts.run}",
                exit_code=exit_code(err),
            ) from None
        log.warning("%s: stopped at once at step %d, without saving", name, state.step)
        raise MtlError(
            f"{name}: stopped at once at step {state.step} without saving; continue from the last checkpoint with: "
            f"mtl train resume={parts.run}",
            exit_code=exit_code(err),
        ) from None
    except BaseException as err:
        if not (isinstance(err, MtlError) and err.exit_code > 128):  # a stop signal is no failure; said above
            log.error("run failed at step %d: %s", state.step, first_line(err))
        if distributed.peer_failure(err):
            raise MtlError(
                f"another process of this run failed or stopped ({distributed.describe_failure(err)}); continue from the last "
                f"checkpoint with: mtl train resume={parts.run}"
            ) from None
        raise
    finally:  # the exception leaving (None at the end): trackers close their files, MLflow marks the run's end
        for cb in callbacks:
            cb.on_close(parts, state, sys.exc_info()[1])


def fit(parts: Parts, state: TrainState, callbacks: list[Callback], signals: StopRequest) -> Stop | None:
    """The loop: step, evaluate, save, stop. Returns why it stopped early, or None at the end of the budget."""
    t = parts.cfg.trainer
    all_tasks = parts.weighting.needs_all_tasks
    parts.model.train()
    with progress_bar(t.progress and parts.world.writes, parts.total_steps, state.step, t.log_every) as bar:
        while state.step < parts.total_steps:
            tasks = [n for n in parts.batches if n in state.active] if all_tasks else [parts.sampler.next_task()]
            if not tasks:  # resumed after every task had stopped early
                return Stop(f"every task stopped early; training ends at step {state.step}")
            step = train_step(parts, tasks)
            state.step += 1
            for task, n in step.examples.items():
                state.examples_seen[task] += n
            if step.problem is None:
                for task, loss in step.losses.items():
                    prev = state.running_loss.get(task)
                    state.running_loss[task] = loss if prev is None else 0.9 * prev + 0.1 * loss
            for cb in callbacks:  # a stop here (a non-finite loss) ends the step's work at once
                stop = cb.on_step(parts, state, step)
                if stop is not None:
                    return stop
            bar.advance(state, step)
            check_log()  # train.log on a full disk: stop here, one line, before a checkpoint is due
            if state.step % parts.eval_every == 0 or state.step == parts.total_steps:
                stop = evaluate_and_save(parts, state, callbacks)
                if stop is not None:
                    return stop
            elif t.save_every and state.step % t.save_every == 0:
                save_last(parts, state, callbacks)
            if parts.world.distributed:  # a signal to any rank stops them all after the same step
                signals.signum = distributed.all_max(signals.signum or 0, parts.device) or None
            if signals.signum is not None:  # said here, not in the handler: a handler's print can cut into other output
                log.warning(
                    "%s received: stopping after step %d and saving a checkpoint (interrupt again to stop at once, "
                    "without saving)", signal_name(signals.signum), state.step,
                )  # fmt: skip
                return Stop("interrupted")
    return None


def first_stop(stops: Any) -> Stop | None:
    # Every callback sees the evaluation (each adds to the records), even after one asks to stop.
    found = [s for s in stops if s is not None]
    return found[0] if found else None


def evaluate_and_save(parts: Parts, state: TrainState, callbacks: list[Callback]) -> Stop | None:
    """Validation metrics to metrics.jsonl; `best` when the average improved; `last` always."""
    t = parts.cfg.trainer
    results = parts.evaluator("validation")
    if t.best_metric not in results["average"]:  # validation checks names; a metric may still be absent
        raise MtlError(f"`trainer.best_metric={t.best_metric}` is not a metric of these tasks; use main or one of "
                       f"{sorted(results['average'])}")  # fmt: skip
    ev = Evaluation(state.step, results, {n: main_score(parts, n, results[n]) for n in parts.types})
    epochs = epochs_seen(parts, state)
    for task, metrics in results.items():
        rec = {"step": state.step, "split": "validation", "task": task, **metrics}
        if task in state.examples_seen:
            rec.update(train_loss=state.running_loss.get(task), examples_seen=state.examples_seen[task],
                       epochs=epochs[task])  # fmt: skip
        if task in parts.evaluator.samples:  # generated text: source / reference / hypothesis
            rec["examples"] = parts.evaluator.samples[task]
        ev.records[task] = rec
    stop = first_stop(cb.on_evaluate(parts, state, ev) for cb in callbacks)
    for task, rec in ev.records.items():
        if task in state.examples_seen:
            rec["stopped"] = task not in state.active
    append_jsonl(parts.run.metrics, list(ev.records.values()))
    score = results["average"][t.best_metric]
    mains = " ".join(f"{k}={ev.scores[k]:.4f}" for k in results if k != "average")
    log.info("eval step %d: %s | average %s %.4f", state.step, mains, t.best_metric, score)
    state.validation = results
    if score > state.best_score:
        state.best_score, state.best_step = score, state.step
        save_model(parts, snapshot(parts, state, callbacks), "best")
    save_last(parts, state, callbacks)
    return stop


def main_score(parts: Parts, task: str, metrics: dict) -> float:
    return metrics.get(parts.cfg.trainer.best_metric, metrics[parts.types[task].MAIN_METRIC])


def epochs_seen(parts: Parts, state: TrainState) -> dict[str, float]:
    return {n: state.examples_seen[n] / max(parts.batches[n].size, 1) for n in state.examples_seen}


def snapshot(parts: Parts, state: TrainState, callbacks: list[Callback]) -> dict:
    """trainer_state.json: the state with the positions of the batch streams and every callback's state."""
    state.epochs = epochs_seen(parts, state)
    state.batches = {n: b.state_dict() for n, b in parts.batches.items()}
    state.sampler = parts.sampler.state_dict()
    state.task_weights = {t: float(w) for t, w in parts.weighting.weights().items()}
    state.callbacks = {cb.name: cb.state_dict() for cb in callbacks if cb.name}
    running = getattr(parts.model.trunk, "running_state", None)  # MMoE's gate sums since the last evaluation
    state.trunk = running() if running is not None else {}
    return state.to_json()


def save_model(parts: Parts, state: dict, name: str, training: dict | None = None, keep: int = 1) -> None:
    save_checkpoint(
        parts.run.checkpoint(name), parts.model, parts.tokenizer, parts.labels, state, parts.run.config,
        training, parts.base, keep,
    )  # fmt: skip


def save_last(parts: Parts, state: TrainState, callbacks: list[Callback]) -> None:
    training = training_state(parts.optimizer, parts.scheduler, parts.weighting, parts.scaler)
    save_model(parts, snapshot(parts, state, callbacks), "last", training, keep=parts.cfg.trainer.keep_checkpoints)


def interrupted(parts: Parts, state: TrainState, callbacks: list[Callback], signum: int) -> NoReturn:
    """Save `last` and the metrics so far, then stop with the command that continues the run."""
    if checkpoint_step(parts.run.checkpoint("last")) != state.step:  # not saved by this step already
        save_last(parts, state, callbacks)
    if state.validation is not None:
        write_interrupted_table(parts, state)
    try:
        distributed.barrier()  # the other ranks end after rank 0 saved: a launcher stops the rest when one exits
    except Exception as err:
        if not distributed.peer_failure(err):
            raise
        # Every rank agreed to stop at this step: one that ended first (rank 0 once it saved, or a
        # rank the launcher stopped) is not a failure of this one; rank 0 says what was saved.
    name = signal_name(signum)
    log.warning("%s: stopped at step %d; checkpoint saved", name, state.step)
    raise MtlError(
        f"{name}: stopped at step {state.step}, checkpoint saved; continue with: mtl train resume={parts.run}",
        exit_code=128 + signum,
    )
