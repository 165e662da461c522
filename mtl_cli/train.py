"""`train(cfg) -> results`: setup, the training loop, evaluation, and the run directory.

One explicit loop: every step the mixing sampler picks a task, that task's next batch goes
through the shared encoder and its own head, and the optimizer steps on that loss.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

import mtl_cli
from mtl_cli.config import MtlConfig, task_names_label, to_typed
from mtl_cli.errors import MtlError, first_line

log = logging.getLogger("mtl")


def load_tasks(cfg: MtlConfig) -> dict:
    from mtl_cli.tasks import load_task

    return {name: load_task(name, tcfg, cfg.data_root) for name, tcfg in cfg.task.items()}


def tokenize_tasks(tasks: dict, tokenizer: Any) -> dict[str, dict[str, dict[str, list]]]:
    """split -> task -> columns ({"input_ids": [...], "labels": [...], ...}), tokenized once, cached by `datasets`."""
    from mtl_cli.tokenization import tokenize_task, tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer)
    data: dict[str, dict[str, dict[str, list]]] = {"train": {}, "validation": {}, "test": {}}
    for name, task in tasks.items():
        for split, ds in tokenize_task(task, tokenizer, fp).items():
            data[split][name] = ds.to_dict()
    return data


def absolute_paths(cfg: MtlConfig) -> MtlConfig:
    """So that the saved config works from any directory (`mtl eval` elsewhere)."""
    if cfg.data_root:
        cfg.data_root = os.path.abspath(os.path.expanduser(cfg.data_root))
    for task in cfg.task.values():
        if task.data_dir:
            task.data_dir = os.path.abspath(os.path.expanduser(task.data_dir))
        elif not cfg.data_root:
            task.files = {s: os.path.abspath(os.path.expanduser(p)) for s, p in task.files.items()}
    return cfg


def setup_torch(cfg: MtlConfig) -> Any:
    import torch

    # One thread per physical core: hyperthread siblings share the matrix units and only add contention.
    torch.set_num_threads(cfg.trainer.threads or physical_cores())
    if cfg.trainer.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(cfg.trainer.device)
    except RuntimeError:
        raise MtlError(f"`trainer.device` must be auto, cpu or cuda[:N]; got {cfg.trainer.device!r}") from None


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (Linux topology; else every CPU counts)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def use_bf16(precision: str, device: Any) -> bool:
    """Whether forward passes run under bfloat16 autocast (trainer.precision)."""
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def bf16_supported(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_logging(run_dir: Path | None) -> None:
    from rich.logging import RichHandler

    log.setLevel(logging.INFO)
    log.propagate = False
    # Hydra reconfigures logging before every job of a sweep, disabling loggers that already exist.
    log.disabled = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.addHandler(RichHandler(show_path=False, show_time=False, markup=False))
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def build_optimizer(model: Any, cfg: MtlConfig, total_steps: int, extra: list = ()) -> tuple[Any, Any]:
    import torch
    from transformers import get_linear_schedule_with_warmup

    # Biases and LayerNorm weights are not decayed (the usual BERT fine-tuning recipe).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    t = cfg.trainer
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if extra:  # learnable loss weights (uncertainty): not decayed, which would pull them to 0
        groups.append({"params": list(extra), "weight_decay": 0.0})
    # fused: one kernel over all parameters, ~5x faster than the per-tensor loop on CPU too.
    opt = torch.optim.AdamW(groups, lr=t.lr, fused=True)
    sched = get_linear_schedule_with_warmup(opt, int(t.warmup_ratio * total_steps), total_steps)
    return opt, sched


def train(cfg: DictConfig | MtlConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Train as configured; returns {"run_dir", "results" (test), "validation", "best_step", "timing"}.

    `run_dir` is where Hydra wants the run; without it one is made under `cfg.runs_root`.
    Nothing is written there until the data and the encoder have loaded without error.
    """
    typed = absolute_paths(to_typed(cfg) if isinstance(cfg, DictConfig) else cfg)
    setup_logging(None)
    prepared = prepare(typed)
    run_dir = claim(run_dir, typed, overrides or [])
    loop = build_loop(prepared, run_dir)
    return run_loop(loop, prepared)


def resume(run_dir: Path, trust_remote_code: bool = False) -> dict:
    """Continue a run from its newest intact `last` checkpoint, in its own directory, with its own config.

    Model, optimizer, scheduler, RNG, sampler and batch positions, loss weighting and early
    stopping all continue from the checkpoint, so on CPU the run ends exactly as an
    uninterrupted one would. A run killed before its first checkpoint starts again from step 0.
    """
    from mtl_cli.rundir import (
        check_checkpoint_origin,
        checkpoint_candidates,
        find_checkpoint,
        load_run_config,
        trim_jsonl,
    )

    cfg = load_run_config(run_dir, trust_remote_code)
    if (run_dir / "results.json").is_file():
        raise MtlError(f"{run_dir} has finished (results.json exists); nothing to resume. Evaluate it with mtl eval")
    has_checkpoint = any(c.exists() for c in checkpoint_candidates(run_dir, "last"))
    ckpt = find_checkpoint(run_dir, "last") if has_checkpoint else None
    if ckpt is not None:
        check_checkpoint_origin(run_dir, ckpt, cfg)
        if not (ckpt / "optimizer.pt").is_file():
            raise MtlError(f"{ckpt} has no optimizer.pt (the training state); it cannot be resumed from")
    setup_logging(None)
    prepared = prepare(cfg)
    if ckpt is not None:  # checked before anything in the run directory is written
        check_same_data(ckpt, prepared.data_fingerprint)
    loop = build_loop(prepared, run_dir, resumed=True)
    if ckpt is None:
        log.info("resume: %s has no checkpoint yet; training starts again from step 0", run_dir)
    else:
        loop.load(ckpt)
        log.info("resumed from %s at step %d of %d", ckpt, loop.step, prepared.total_steps)
    # Records written after the checkpoint are written again, identically, by the resumed run.
    for name in ("metrics.jsonl", "affinity.jsonl"):
        trim_jsonl(run_dir / name, loop.step)
    return run_loop(loop, prepared)


def check_same_data(ckpt: Path, fingerprint: dict[str, str]) -> None:
    from mtl_cli.rundir import read_checkpoint_state

    saved = read_checkpoint_state(ckpt)[1].get("data_fingerprint") or fingerprint
    changed = sorted(t for t in set(saved) | set(fingerprint) if saved.get(t) != fingerprint.get(t))
    if changed:
        raise MtlError(
            f"the training data of task(s) {changed} changed since {ckpt} was saved; a resume needs the same "
            "data and tokenizer: restore the files, or start a new run"
        )


def prepare(typed: MtlConfig) -> SimpleNamespace:
    """Everything before a run directory is needed: data, encoder, tokenized splits, sampler, step counts."""
    import torch

    from mtl_cli import loss_weighting
    from mtl_cli.datacheck import check_tasks
    from mtl_cli.encoders import load_encoder
    from mtl_cli.mixing import build_sampler
    from mtl_cli.tokenization import add_task_markers

    t = typed.trainer
    tasks = load_tasks(typed)  # data mistakes surface before torch and the encoder are loaded
    device = setup_torch(typed)
    data_report = check_tasks(tasks, full=False)  # duplicates and leakage: cheap, hashes only
    torch.manual_seed(typed.seed)  # a random-init encoder draws its weights here
    encoder, tokenizer = load_encoder(typed.encoder)
    add_task_markers(tokenizer, encoder, [n for n, tc in typed.task.items() if tc.task_marker == "prefix"])
    data = tokenize_tasks(tasks, tokenizer)
    sizes = {name: len(d["input_ids"]) for name, d in data["train"].items()}
    sampler = build_sampler(typed.mixing, sizes, typed.seed)
    weighting_module = loss_weighting.get(typed.loss_weighting.name)
    # Gradient methods need every task's loss at the same step: a step then holds one batch of
    # each task, and an epoch (all examples seen once) takes that many fewer steps.
    per_step = len(sizes) if weighting_module.build(typed.loss_weighting, list(sizes), 1).needs_all_tasks else 1
    steps_per_epoch = math.ceil(sum(sizes.values()) / (t.batch_size * per_step))
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    return SimpleNamespace(
        cfg=typed, device=device, tasks=tasks, data_report=data_report, encoder=encoder, tokenizer=tokenizer,
        data=data, sampler=sampler, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        eval_every=min(t.eval_every or steps_per_epoch, total_steps),
        weighting=weighting_module.build(typed.loss_weighting, list(sizes), steps_per_epoch),
        data_fingerprint=data_fingerprint(data["train"]),
    )  # fmt: skip


def data_fingerprint(train: dict[str, dict[str, list]]) -> dict[str, str]:
    """task -> hash of its tokenized training examples: a resume must see the very same data."""
    import hashlib
    import itertools

    import numpy as np

    out = {}
    for name, columns in train.items():
        ids = columns["input_ids"]
        h = hashlib.sha256(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)).tobytes())
        h.update(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64).tobytes())
        out[name] = h.hexdigest()[:16]
    return out


def build_loop(p: SimpleNamespace, run_dir: Path, resumed: bool = False) -> TrainLoop:
    """Logging to the run directory, the model, optimizer and batch streams."""
    import torch

    from mtl_cli import task_types
    from mtl_cli.batches import TaskBatches
    from mtl_cli.datacheck import report_warnings
    from mtl_cli.model import build_model
    from mtl_cli.rundir import write_json

    typed, t = p.cfg, p.cfg.trainer
    setup_logging(run_dir)
    log.info("%s directory: %s", "resuming run" if resumed else "run", run_dir)
    log.info(
        "device: %s, torch threads: %d (%s)", p.device, torch.get_num_threads(),
        "trainer.threads" if typed.trainer.threads else f"one per physical core: {physical_cores()}",
    )  # fmt: skip
    for name, task in p.tasks.items():
        log.info("task %s (%s): %s labels %s", name, task.cfg.type, task.sizes(), task.labels)
    write_json(run_dir / "data_check.json", p.data_report)
    for warning in report_warnings(p.data_report):
        log.warning("data check: %s (details: mtl data check, or data_check.json)", warning)

    labels = {n: tk.labels for n, tk in p.tasks.items()}
    torch.manual_seed(typed.seed)
    model = build_model(p.encoder, typed.task, labels, typed.sharing).to(p.device)
    counts = model.parameter_counts()
    write_json(run_dir / "parameters.json", {"sharing": typed.sharing.name, **counts})
    log.info("sharing=%s parameters: %s", typed.sharing.name, counts)
    if p.weighting.needs_all_tasks:
        log.info(
            "loss_weighting=%s: every step holds one batch of each task; mixing is not used", typed.loss_weighting.name
        )
    else:
        log.info(
            "mixing=%s probabilities %s; loss_weighting=%s",
            typed.mixing.name, {k: round(v, 4) for k, v in p.sampler.probabilities.items()}, typed.loss_weighting.name,
        )  # fmt: skip
    log.info(
        "%d steps (%.2f epochs of %d steps), eval every %d",
        p.total_steps, p.total_steps / p.steps_per_epoch, p.steps_per_epoch, p.eval_every,
    )  # fmt: skip
    opt, sched = build_optimizer(model, typed, p.total_steps, p.weighting.parameters())
    types = {n: tc.type for n, tc in typed.task.items()}
    batches = {
        name: TaskBatches(
            d,
            task_types.get(types[name]).collate,
            t.batch_size,
            p.tokenizer.pad_token_id,
            typed.seed * 1000 + i,
            group=t.length_grouping,
        )  # fmt: skip
        for i, (name, d) in enumerate(p.data["train"].items())
    }
    if t.compile:
        model.trunk.compile(dynamic=True)  # in place: parameter names (and checkpoints) stay as they are
    loop = TrainLoop(
        typed, run_dir, model, p.tokenizer, labels, opt, sched, p.sampler, batches, p.data, p.device, p.weighting
    )
    if t.precision == "bf16" and not bf16_supported(p.device):
        log.warning("trainer.precision=bf16: this %s has no native bfloat16 units, so it may be slower", p.device)
    log.info(
        "precision %s (trainer.precision=%s), length grouping %s, %s",
        "bf16 autocast" if loop.bf16 else "fp32", t.precision,
        f"{t.length_grouping} batches" if t.length_grouping > 1 else "off",
        "torch.compile on (the first steps compile)" if t.compile else "eager",
    )  # fmt: skip
    loop.data_fingerprint = p.data_fingerprint
    return loop


def run_loop(loop: TrainLoop, p: SimpleNamespace) -> dict:
    """Train to the end, then score the best checkpoint(s). SIGINT/SIGTERM save a checkpoint and stop."""
    from mtl_cli.interrupts import StopRequest

    try:
        with StopRequest() as stop:
            loop.stop = stop
            loop.run(p.total_steps, p.eval_every)
        return finish(loop, p.tasks)
    except KeyboardInterrupt:
        log.error("stopped at once at step %d, without saving", loop.step)
        raise MtlError(
            f"stopped at once at step {loop.step} without saving; continue from the last checkpoint with: "
            f"mtl train resume={loop.run_dir}",
            exit_code=130,
        ) from None
    except BaseException as err:
        log.error("run failed at step %d: %s", loop.step, first_line(err))
        raise


def claim(run_dir: Path | None, cfg: MtlConfig, overrides: list[str]) -> Path:
    from mtl_cli.rundir import claim_run_dir, new_run_dir

    base = run_dir or new_run_dir(cfg.runs_root, task_names_label(cfg.task))
    claimed = claim_run_dir(base, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (claimed / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))), encoding="utf-8")
    return claimed


def base_reference(cfg: MtlConfig) -> dict:
    from mtl_cli.encoders import resolve_source

    e = cfg.encoder
    # A random-init base is rebuilt by seeding torch with `seed` before building it, as training does.
    return {"name_or_path": e.name_or_path, "source": resolve_source(e), "revision": e.revision,
            "random_init": e.random_init, "seed": cfg.seed}  # fmt: skip


class TrainLoop:
    """The state of one training run and its step/evaluate/save cycle."""

    def __init__(self, cfg, run_dir, model, tokenizer, labels, opt, sched, sampler, batches, data, device, weighting):
        self.cfg, self.run_dir, self.model, self.tokenizer, self.labels = cfg, run_dir, model, tokenizer, labels
        self.opt, self.sched, self.sampler, self.batches, self.data = opt, sched, sampler, batches, data
        self.device, self.weighting = device, weighting
        self.bf16 = use_bf16(cfg.trainer.precision, device)
        self.shared = model.shared_parameters()
        from mtl_cli import task_types
        from mtl_cli.early_stopping import TaskEarlyStopping

        # Each task's type module, looked up once rather than on every step.
        self.types = {n: task_types.get(tc.type) for n, tc in cfg.task.items()}
        # Auxiliary tasks (MLM) are not early-stopped: they train until every main task has stopped.
        self.aux = [n for n, tt in self.types.items() if tt.AUXILIARY]
        main = [n for n in cfg.task if n not in self.aux]
        t = cfg.trainer
        self.stopping = TaskEarlyStopping(main, t.early_stopping_patience, t.early_stopping_min_delta)
        self.per_task_best = t.early_stopping_patience is not None
        self.setup_affinity()
        # Checkpoints leave frozen parameters out; they name the base encoder to rebuild them from.
        frozen = any(not p.requires_grad for p in model.parameters())
        self.base = base_reference(cfg) if frozen else None
        if self.base is not None and hasattr(model.trunk, "base_fingerprint"):
            self.base["fingerprint"] = model.trunk.base_fingerprint  # `mtl eval` verifies the rebuilt base
        self.step = 0
        self.seen = {name: 0 for name in batches}
        self.best_score, self.best_step = -math.inf, 0
        self.running_loss: dict[str, float] = {}
        self.skipped = 0  # batches dropped for a non-finite loss (trainer.nonfinite=skip)
        self.last_validation: dict | None = None
        self.stop = None  # a StopRequest while `run` is called from `run_loop`
        self.data_fingerprint: dict[str, str] = {}
        from mtl_cli.rundir import config_digest

        self.config_sha256 = config_digest(run_dir)
        # Throughput of this process (not saved in checkpoints: a resumed run counts afresh).
        self.timing = {
            "train_seconds": 0.0, "train_steps": 0, "train_examples": 0, "real_tokens": 0, "processed_tokens": 0,
            "eval_seconds": 0.0, "eval_examples": 0, "first_step_seconds": None,
        }  # fmt: skip

    def setup_affinity(self) -> None:
        """Task-affinity measurements draw from seeded streams over each task's validation set,
        so the training stream (and so training itself) is the same with or without them."""
        from mtl_cli.affinity import AffinityRecorder
        from mtl_cli.batches import TaskBatches

        cfg, every = self.cfg, self.cfg.trainer.affinity_every
        if len(self.batches) < 2 or not any(p.requires_grad for p in self.shared):
            every = 0  # one task, or nothing shared is trained (adapters on a frozen encoder)
        self.affinity = AffinityRecorder(self.run_dir, every)
        self.affinity_batches = {
            name: TaskBatches(
                self.data["validation"][name], self.types[name].collate,
                cfg.trainer.batch_size, self.tokenizer.pad_token_id, cfg.seed * 1000 + 500 + i,
            )
            for i, name in enumerate(self.batches)
        }  # fmt: skip
        self.affinity_losses = {n: self.types[n].loss for n in self.affinity_batches}

    def measure_affinity(self) -> None:
        from mtl_cli.affinity import measure_affinity

        batches = {n: b.next_batch() for n, b in self.affinity_batches.items()}
        lookahead = self.cfg.trainer.affinity_lookahead_lr
        results = measure_affinity(self.model, batches, self.affinity_losses, self.shared, lookahead_lr=lookahead)
        for kind, (tasks, matrix) in results.items():
            self.affinity.record(self.step, tasks, matrix, kind)

    def train_step(self) -> list[str]:
        from torch.nn.utils import clip_grad_norm_

        if self.weighting.needs_all_tasks:
            step_tasks = [t for t in self.batches if t in self.stopping.active() or t in self.aux]
        else:
            step_tasks = [self.sampler.next_task()]
        losses, batches = {}, {}
        for task in step_tasks:
            batch = batches[task] = {k: v.to(self.device) for k, v in self.batches[task].next_batch().items()}
            with self.autocast():
                losses[task] = self.types[task].loss(self.model(task, batch), batch)
            n = batch["input_ids"].shape[0]
            self.seen[task] += n
            self.timing["train_examples"] += n
            self.timing["real_tokens"] += int(batch["attention_mask"].sum())
            self.timing["processed_tokens"] += batch["input_ids"].numel()
        bad = next(
            (f"loss of task '{t}' is {v.item()}" for t, v in losses.items() if not math.isfinite(v.item())), None
        )
        if bad is None:
            self.weighting.backward(losses, self.shared)
            if self.cfg.trainer.max_grad_norm > 0:
                norm = float(clip_grad_norm_(self.model.parameters(), self.cfg.trainer.max_grad_norm))
                if not math.isfinite(norm):
                    bad = f"gradient norm of task(s) {'+'.join(losses)} is {norm}"
        if bad is not None:
            self.opt.zero_grad(set_to_none=True)
            self.nonfinite(bad, batches)
        else:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            for task, loss in losses.items():
                prev = self.running_loss.get(task)
                self.running_loss[task] = loss.item() if prev is None else 0.9 * prev + 0.1 * loss.item()
        self.sched.step()
        self.step += 1
        return step_tasks

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def nonfinite(self, what: str, batches: dict) -> None:
        """A NaN/inf loss or gradient: skip the update (trainer.nonfinite=skip) or save the evidence and stop."""
        step = self.step + 1
        if self.cfg.trainer.nonfinite == "skip":
            self.skipped += 1
            log.warning("step %d: %s; update skipped (%d so far; trainer.nonfinite=skip)", step, what, self.skipped)
            return
        from safetensors.torch import save_file

        from mtl_cli.rundir import checkpoint_state, write_json

        debug = self.run_dir / "debug" / f"step-{step:06d}"
        debug.mkdir(parents=True, exist_ok=True)
        # The weights are those the failing forward pass used: no update was applied.
        save_file(checkpoint_state(self.model), str(debug / "model.safetensors"))
        for task, batch in batches.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in batch.items()}, str(debug / f"batch-{task}.safetensors")
            )
        write_json(debug / "info.json", {"step": step, "problem": what, "lr": self.sched.get_last_lr()})
        raise MtlError(
            f"{what} at step {step}; the batch and weights are in {debug}. Lower trainer.lr, check the task's "
            f"labels, or set trainer.nonfinite=skip; resume from the last checkpoint with mtl train resume={self.run_dir}"
        )

    def diagnostics(self) -> dict:
        """Effective task weights (and MMoE gates); warnings when a weight collapses or loss scales diverge."""
        weights = {t: float(w) for t, w in self.weighting.weights().items()}
        mean = sum(weights.values()) / max(len(weights), 1)
        threshold = self.cfg.loss_weighting.collapse_threshold
        for task, w in weights.items():
            if mean > 0 and w < threshold * mean and getattr(self.weighting, "weights_can_collapse", True):
                log.warning(
                    "loss weighting: task %s's weight %.2g fell below %g of the mean (%.2g): it has stopped training",
                    task, w, threshold, mean,
                )  # fmt: skip
        losses = {t: v for t, v in self.running_loss.items() if v > 0}
        if len(losses) > 1:
            hi, lo = max(losses, key=losses.get), min(losses, key=losses.get)
            if losses[hi] > 100 * losses[lo]:
                log.warning(
                    "loss scales differ: %s's loss (%.3g) is %.0fx %s's (%.3g); consider loss_weighting=uncertainty",
                    hi, losses[hi], losses[hi] / losses[lo], lo, losses[lo],
                )  # fmt: skip
        out = {"weights": weights}
        gates = getattr(self.model.trunk, "gate_summary", None)
        if gates is not None:
            out["gates"] = gates()
        return out

    def run(self, total_steps: int, eval_every: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.model.train()
        start = time.perf_counter()
        columns = [
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
        ]  # fmt: skip
        with Progress(*columns, disable=not self.cfg.trainer.progress, transient=False) as progress:
            bar = progress.add_task("train", total=total_steps, info="")
            while self.step < total_steps:
                began = time.perf_counter()
                self.train_step()
                self.timing["train_seconds"] += time.perf_counter() - began
                self.timing["train_steps"] += 1
                if self.timing["first_step_seconds"] is None:
                    self.timing["first_step_seconds"] = time.time() - mtl_cli.STARTED
                if self.affinity.due(self.step):
                    self.measure_affinity()
                rate = sum(self.seen.values()) / (time.perf_counter() - start)
                losses = " ".join(f"{n}={v:.3f}" for n, v in self.running_loss.items())
                progress.update(bar, advance=1, info=f"loss {losses} | {rate:.0f} ex/s")
                if self.step % self.cfg.trainer.log_every == 0:
                    log.info("step %d loss %s %.1f ex/s", self.step, losses, rate)
                if self.step % eval_every == 0 or self.step == total_steps:
                    self.evaluate_and_save()
                    if self.per_task_best and self.stopping.all_stopped():
                        log.info("every task stopped early; training ends at step %d", self.step)
                        break
                elif self.cfg.trainer.save_every and self.step % self.cfg.trainer.save_every == 0:
                    self.save_last()
                if self.stop is not None and self.stop.requested:
                    self.interrupted()

    def main_metric(self, task: str, metrics: dict) -> float:

        name = self.cfg.trainer.best_metric
        return metrics.get(name, metrics[self.types[task].MAIN_METRIC])

    def epochs_seen(self) -> dict[str, float]:
        return {n: self.seen[n] / max(self.batches[n].size, 1) for n in self.seen}

    def evaluate(self, split: str, tasks: list[str] | None = None) -> dict:
        from mtl_cli.evaluate import evaluate

        types = {n: tc.type for n, tc in self.cfg.task.items()}
        data = {n: d for n, d in self.data[split].items() if tasks is None or n in tasks}
        t = self.cfg.trainer
        began = time.perf_counter()
        with self.autocast():
            results = evaluate(self.model, data, types, self.labels, t.eval_batch_size, self.tokenizer.pad_token_id)
        self.timing["eval_seconds"] += time.perf_counter() - began
        self.timing["eval_examples"] += sum(len(d["input_ids"]) for d in data.values())
        return results

    def throughput(self) -> dict:
        """timing.json: examples and tokens per second of training and evaluation in this process."""
        t = self.timing
        out = dict(t)
        out["train_examples_per_second"] = t["train_examples"] / t["train_seconds"] if t["train_seconds"] else None
        out["real_tokens_per_second"] = t["real_tokens"] / t["train_seconds"] if t["train_seconds"] else None
        out["real_token_fraction"] = t["real_tokens"] / t["processed_tokens"] if t["processed_tokens"] else None
        out["eval_examples_per_second"] = t["eval_examples"] / t["eval_seconds"] if t["eval_seconds"] else None
        return out

    def evaluate_and_save(self) -> None:
        from mtl_cli.rundir import append_jsonl, save_checkpoint

        t = self.cfg.trainer
        results = self.evaluate("validation")
        if t.best_metric not in results["average"]:
            raise MtlError(
                f"`trainer.best_metric={t.best_metric}` is not a metric of these tasks; "
                f"use main or one of {sorted(results['average'])}"
            )
        scores = {task: self.main_metric(task, results[task]) for task in self.stopping.active()}
        newly = self.stopping.update(self.step, scores)
        if self.per_task_best:
            # Each task's own best point gets a full checkpoint, so its figures can be reproduced exactly.
            for task in scores:
                if self.stopping.improved(task):
                    save_checkpoint(
                        self.run_dir / "checkpoints" / f"best-{task}", self.model, self.tokenizer, self.labels,
                        {"step": self.step, "task": task, "score": scores[task]}, None, self.base,
                    )  # fmt: skip
        if newly:
            best = self.stopping.best()
            log.info(
                "early stopping: %s stopped at step %d (best %s); the other tasks go on",
                newly, self.step, {n: {"score": round(best[n][0], 4), "step": best[n][1]} for n in newly},
            )  # fmt: skip
            if not self.stopping.all_stopped():  # otherwise the run ends after this evaluation
                self.sampler.set_active(self.stopping.active() + self.aux)
        epochs = self.epochs_seen()
        diag = self.diagnostics()
        records = []
        for task, metrics in results.items():
            rec = {"step": self.step, "split": "validation", "task": task, **metrics}
            if task in self.seen:
                rec.update(train_loss=self.running_loss.get(task), examples_seen=self.seen[task], epochs=epochs[task])
                rec["weight"] = diag["weights"].get(task)
                rec["stopped"] = task in self.stopping.stopped()
                if "gates" in diag:
                    rec["gates"] = diag["gates"].get(task)
            records.append(rec)
        log.info("task weights: %s", {t: round(w, 4) for t, w in diag["weights"].items()})
        if "gates" in diag:
            log.info(
                "mmoe gates (mean per expert): %s", {t: [round(g, 3) for g in v] for t, v in diag["gates"].items()}
            )
        append_jsonl(self.run_dir / "metrics.jsonl", records)
        score = results["average"][t.best_metric]
        log.info(
            "eval step %d: %s | average %s %.4f",
            self.step,
            " ".join(f"{k}={self.main_metric(k, v):.4f}" for k, v in results.items() if k != "average"),
            t.best_metric,
            score,
        )
        self.last_validation = results
        if score > self.best_score:
            self.best_score, self.best_step = score, self.step
            save_checkpoint(
                self.run_dir / "checkpoints" / "best",
                self.model, self.tokenizer, self.labels, self.state(), None, self.base,
            )  # fmt: skip
        self.save_last()

    def state(self) -> dict:
        """trainer_state.json: where training stands; with optimizer.pt, all a resume needs."""
        return {
            "step": self.step,
            "examples_seen": self.seen,
            "epochs": self.epochs_seen(),
            "validation": self.last_validation,
            "best_step": self.best_step,
            "best_score": self.best_score,
            "batches": {n: b.state_dict() for n, b in self.batches.items()},
            "affinity_batches": {n: b.state_dict() for n, b in self.affinity_batches.items()},
            "sampler": self.sampler.state_dict(),
            "task_weights": {t: float(w) for t, w in self.weighting.weights().items()},
            "early_stopping": self.stopping.state_dict(),
            "running_loss": self.running_loss,
            "skipped_batches": self.skipped,
            "data_fingerprint": self.data_fingerprint,
            "encoder": asdict(self.cfg.encoder),
            "config_sha256": self.config_sha256,
        }

    def save_last(self) -> None:
        import torch

        from mtl_cli.rundir import save_checkpoint

        train_state = {
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "loss_weighting": self.weighting.state_dict(),
        }
        if torch.cuda.is_available():
            train_state["cuda_rng"] = torch.cuda.get_rng_state_all()
        save_checkpoint(
            self.run_dir / "checkpoints" / "last", self.model, self.tokenizer, self.labels, self.state(),
            train_state, self.base, keep=self.cfg.trainer.keep_checkpoints,
        )  # fmt: skip

    def load(self, ckpt: Path) -> None:
        """Continue from `ckpt` (a `last` checkpoint): weights, optimizer, scheduler, RNG, positions."""
        import torch

        from mtl_cli.rundir import load_weights, read_checkpoint_state

        state = read_checkpoint_state(ckpt)[1]
        load_weights(self.model, ckpt)
        try:
            # weights_only: a checkpoint can hold tensors and plain containers, never code to run.
            train_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
            self.opt.load_state_dict(train_state["optimizer"])
            self.sched.load_state_dict(train_state["scheduler"])
            self.weighting.load_state_dict(train_state["loss_weighting"])
        except Exception as err:
            raise MtlError(
                f"cannot restore the training state from {ckpt / 'optimizer.pt'}: {first_line(err)}"
            ) from None
        torch.set_rng_state(train_state["torch_rng"])
        if "cuda_rng" in train_state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(train_state["cuda_rng"])
        self.step = state["step"]
        self.seen = dict(state["examples_seen"])
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        self.last_validation = state.get("validation")
        for name, b in self.batches.items():
            b.load_state_dict(state["batches"][name])
        for name, b in self.affinity_batches.items():
            if name in state.get("affinity_batches", {}):
                b.load_state_dict(state["affinity_batches"][name])
        self.sampler.load_state_dict(state["sampler"])
        self.stopping.load_state_dict(state["early_stopping"])
        if self.stopping.stopped() and not self.stopping.all_stopped():
            self.sampler.set_active(self.stopping.active() + self.aux)
        self.running_loss = dict(state.get("running_loss") or {})
        self.skipped = state.get("skipped_batches", 0)

    def interrupted(self) -> None:
        """Save `last` and the metrics so far, then stop with the command that continues the run."""
        import signal

        from mtl_cli.plots import training_curves

        self.save_last()
        if self.last_validation is not None:
            from mtl_cli.rundir import rows_to_csv, rows_to_markdown, table_rows

            rows = table_rows({"validation": self.last_validation}, {})
            note = (
                f"Interrupted at step {self.step}: validation metrics of the last evaluation; "
                "the final table replaces this when the resumed run ends.\n\n"
            )
            (self.run_dir / "metrics.md").write_text(note + rows_to_markdown(rows), encoding="utf-8")
            (self.run_dir / "metrics.csv").write_text(rows_to_csv(rows), encoding="utf-8")
            mains = {n: tt.MAIN_METRIC for n, tt in self.types.items()}
            training_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", mains)
        name = signal.Signals(self.stop.signum).name
        log.warning("%s: stopped at step %d; checkpoint saved", name, self.step)
        raise MtlError(
            f"{name}: stopped at step {self.step}, checkpoint saved; continue with: mtl train resume={self.run_dir}",
            exit_code=128 + self.stop.signum,
        )


def finish(loop: TrainLoop, tasks: dict) -> dict:
    """Evaluate the best checkpoint(s) on validation and test; write the tables, curves and results.json.

    With per-task early stopping each task is scored with its own best checkpoint (`best-<task>`),
    and the table says which step each task's figures come from.
    """
    from mtl_cli.evaluate import average
    from mtl_cli.plots import training_curves
    from mtl_cli.rundir import load_weights, print_table, rows_to_csv, rows_to_markdown, table_rows, write_json

    run_dir = loop.run_dir
    load_weights(loop.model, run_dir / "checkpoints" / "best")
    results = {split: loop.evaluate(split) for split in ("validation", "test")}
    steps = dict.fromkeys(tasks, loop.best_step)
    if loop.per_task_best:
        types = {n: tc.type for n, tc in loop.cfg.task.items()}
        for task, (_, step) in loop.stopping.best().items():
            load_weights(loop.model, run_dir / "checkpoints" / f"best-{task}")
            for split, per_task in results.items():
                per_task[task] = loop.evaluate(split, [task])[task]
            steps[task] = step
        for per_task in results.values():
            per_task["average"] = average({t: r for t, r in per_task.items() if t != "average"}, types)
    epochs = loop.epochs_seen()
    extra = {
        n: {
            "train_examples": loop.batches[n].size,
            "examples_seen": loop.seen[n],
            "epochs": round(epochs[n], 2),
            "best_step": steps[n],
            **({"stopped_at": loop.stopping.stopped().get(n)} if loop.per_task_best else {}),
        }
        for n in tasks
    }
    rows = table_rows(results, extra)
    what = (
        "each task's own best checkpoint (best_step)"
        if loop.per_task_best
        else f"checkpoints/best (step {loop.best_step})"
    )
    (run_dir / "metrics.md").write_text(
        f"Per-task metrics of {what}; {loop.step} steps trained.\n\n" + rows_to_markdown(rows), encoding="utf-8"
    )
    (run_dir / "metrics.csv").write_text(rows_to_csv(rows), encoding="utf-8")
    test = {task: {m: v for m, v in metrics.items() if m != "loss"} for task, metrics in results["test"].items()}
    write_json(run_dir / "results.json", test)
    timing = loop.throughput()
    write_json(run_dir / "timing.json", timing)
    if timing["train_examples_per_second"]:
        log.info(
            "throughput: %.1f train examples/s, %.0f real tokens/s (%.0f%% of processed tokens are real), "
            "%.1f eval examples/s", timing["train_examples_per_second"], timing["real_tokens_per_second"],
            100 * timing["real_token_fraction"], timing["eval_examples_per_second"] or 0,
        )  # fmt: skip
    mains = {n: tt.MAIN_METRIC for n, tt in loop.types.items()}
    training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", mains)
    if loop.affinity.plot() is not None:
        names, matrix = loop.affinity.summary()
        log.info("task gradient cosines on the shared encoder, mean over the run: %s %s",
                 names, [[round(v, 3) for v in row] for row in matrix])  # fmt: skip
    print_table(rows, f"{run_dir} ({what})")
    log.info("results (test split): %s", test)
    log.info("done: %s", run_dir)
    return {
        "run_dir": str(run_dir), "results": test, "validation": results["validation"], "best_step": loop.best_step,
        "timing": timing,
    }  # fmt: skip
