"""Per-task metrics (each task type's own), their average over tasks, and a run's final scoring."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mtl_cli import distributed, task_types
from mtl_cli.batches import eval_batches
from mtl_cli.callbacks.forgetting import summary as forgetting_summary
from mtl_cli.checkpoints import load_weights
from mtl_cli.config import held_out
from mtl_cli.device import autocast
from mtl_cli.logs import eval_progress
from mtl_cli.plots import training_curves
from mtl_cli.tables import add_forgetting, average_note, forgetting_note, print_table, table_rows, write_table
from mtl_cli.writers import write_json

log = logging.getLogger("mtl")


@torch.inference_mode()
def evaluate_task(
    model: Any, task: str, ttype: Any, columns: dict, labels: Any, batch_size: int, pad_id: int,
    samples: dict | None = None,
) -> dict:  # fmt: skip
    """In a distributed run each rank scores every world-size-th batch and the batches are gathered
    back into order, so every rank gets exactly the metrics of a 1-process evaluation. A task type
    that generates text puts a few examples into `samples[task]` (for metrics.jsonl) and the log."""
    world = distributed.WORLD
    scored = []  # (batch number, predictions, golds, loss x examples, examples)
    device = next(model.parameters()).device
    mine = len(range(world.rank, math.ceil(len(columns["input_ids"]) / batch_size), world.size))
    with eval_progress(mine, f"eval {task}") as advance:
        for i, batch in enumerate(eval_batches(columns, ttype.collate, batch_size, pad_id)):
            if i % world.size != world.rank:
                continue  # collated all the same: MLM masking draws from one generator in batch order
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model(task, batch)
            n = batch["input_ids"].shape[0]
            p, g = ttype.predict(output, batch)
            scored.append((i, p, g, ttype.loss(output, batch).item() * n, n))
            advance()
    if world.distributed:
        scored = sorted((b for part in distributed.gather(scored) for b in part), key=lambda b: b[0])
    preds, golds = [], []
    total_loss, count = 0.0, 0
    for _, p, g, batch_loss, n in scored:
        preds.extend(p)
        golds.extend(g)
        total_loss += batch_loss
        count += n
    loss = total_loss / max(count, 1)
    if hasattr(ttype, "examples"):  # generated text: a few examples in the log
        shown = ttype.examples(preds, golds)
        for ex in shown:
            log.info("%s example | %s", task, " | ".join(f"{k}: {v}" for k, v in ex.items()))
        if samples is not None:
            samples[task] = shown
    return {**ttype.metrics(preds, golds, labels, loss), "loss": loss}


def evaluate(
    model: Any, data: dict, types: dict[str, str], labels: dict, batch_size: int, pad_id: int,
    samples: dict | None = None,
) -> dict:  # fmt: skip
    """`data`: task -> columns of one split; `types`: task -> type name. Adds an `average` row."""
    was_training = model.training
    model.eval()
    results = {
        task: evaluate_task(model, task, task_types.get(types[task]), cols, labels[task], batch_size, pad_id, samples)
        for task, cols in data.items()
    }
    model.train(was_training)
    results["average"] = average(results, types)
    return results


def average(results: dict, types: dict[str, str]) -> dict[str, float]:
    """Mean over the non-auxiliary tasks of each metric they have, and of their main metrics (`main`)."""
    scored = {t: r for t, r in results.items() if not task_types.get(types[t]).AUXILIARY} or results
    out = {"main": sum(r[task_types.get(types[t]).MAIN_METRIC] for t, r in scored.items()) / len(scored)}
    names = dict.fromkeys(m for r in scored.values() for m in r if m != "loss")
    for m in names:
        values = [r[m] for r in scored.values() if m in r]
        out[m] = sum(values) / len(values)
    return out


def main_metrics(types: dict[str, str]) -> dict[str, str]:
    """Task -> its main metric, for the tasks `average` takes `main` over (the tables' `mains`)."""
    scored = [t for t in types if not task_types.get(types[t]).AUXILIARY] or list(types)
    return {t: task_types.get(types[t]).MAIN_METRIC for t in scored}


class Evaluator:
    """The validation and test passes of a training run, under its precision, timed for timing.json."""

    def __init__(self, model: Any, data: dict, type_names: dict[str, str], labels: dict, batch_size: int,
                 pad_id: int, device: Any, bf16: bool) -> None:  # fmt: skip
        self.model, self.data, self.type_names, self.labels = model, data, type_names, labels
        self.batch_size, self.pad_id, self.device, self.bf16 = batch_size, pad_id, device, bf16
        self.seconds, self.examples = 0.0, 0
        self.samples: dict[str, list[dict]] = {}  # task -> generated examples of the latest pass

    def __call__(self, split: str, tasks: list[str] | None = None) -> dict:
        data = {n: d for n, d in self.data[split].items() if tasks is None or n in tasks}
        began = time.perf_counter()
        self.samples = {}
        with autocast(self.device, self.bf16):
            out = evaluate(self.model, data, self.type_names, self.labels, self.batch_size, self.pad_id, self.samples)
        self.seconds += time.perf_counter() - began
        self.examples += sum(len(d["input_ids"]) for d in data.values())
        return out


@dataclass
class Evaluation:
    """One validation pass during training, as callbacks see it."""

    step: int
    results: dict  # task -> metrics, and "average"
    scores: dict[str, float]  # task -> the score that picks checkpoints (trainer.best_metric)
    records: dict[str, dict] = field(default_factory=dict)  # task -> its metrics.jsonl record


def final_results(parts: Any, state: Any, stopping: Any) -> dict:
    """Evaluate the best checkpoint(s) on validation and test; write the tables, curves and results.json.

    With per-task early stopping (`stopping`) each task is scored with its own best checkpoint
    (`best-<task>`), and the table says which step each task's figures come from.
    """
    run, evaluator = parts.run, parts.evaluator
    load_saved(parts.model, run.checkpoint("best"))
    # Extra test splits (test_<name>, the tasks that have one) are scored beside test, in the tables only.
    results = {split: evaluator(split) for split in held_out(evaluator.data)}
    steps = dict.fromkeys(parts.types, state.best_step)
    if stopping is not None:
        for task, step in stopping.best_points().items():
            load_saved(parts.model, run.checkpoint(f"best-{task}"))
            for split, per_task in results.items():
                if task in per_task:
                    per_task[task] = evaluator(split, [task])[task]
            steps[task] = step
        for per_task in results.values():
            per_task["average"] = average({t: r for t, r in per_task.items() if t != "average"}, evaluator.type_names)
    epochs = {n: state.examples_seen[n] / max(parts.batches[n].size, 1) for n in parts.types}
    extra = {
        n: {
            "train_examples": parts.batches[n].size,
            "examples_seen": state.examples_seen[n],
            "epochs": round(epochs[n], 2),
            "best_step": steps[n],
            **({"stopped_at": stopping.stopped().get(n)} if stopping is not None else {}),
        }
        for n in parts.types
    }
    rows, note = table(parts, state, results, extra)
    what = "each task's own best checkpoint (best_step)" if stopping else f"checkpoints/best (step {state.best_step})"
    test = {task: {m: v for m, v in metrics.items() if m != "loss"} for task, metrics in results["test"].items()}
    if distributed.writes():
        write_table(run.table, rows, f"Per-task metrics of {what}; {state.step} steps trained.\n\n", note=note)
        write_json(run.results, test)
        # The line on each panel: the step of the checkpoint that task's figures come from.
        best = {**steps, "average": state.best_step}
        training_curves(run.metrics, run.curves, {n: tt.MAIN_METRIC for n, tt in parts.types.items()}, best)
        print_table(rows, f"{run} ({what})", list(results))
    log.info("results (test split): %s", test)
    return {"run_dir": str(run), "results": test, "validation": results["validation"], "best_step": state.best_step}


def table(parts: Any, state: Any, results: dict, extra: dict) -> tuple[list[dict], str]:
    """metrics.md's rows, with the forgetting monitor's columns when it ran, and the note under them."""
    mains = main_metrics(parts.evaluator.type_names)
    rows = table_rows(results, extra, mains)
    note = average_note(results, mains)
    threshold = parts.cfg.trainer.forgetting_threshold
    # The monitor's state as the latest checkpoint saved it: that of the last evaluation.
    forgetting = forgetting_summary(state.callbacks.get("forgetting"))
    if threshold is not None and forgetting:
        add_forgetting(rows, forgetting)
        note += forgetting_note(threshold)
    return rows, note


def load_saved(model: Any, ckpt: Any) -> None:
    """A checkpoint of this run into `model`: in a distributed run rank 0 reads it and sends the weights
    to the others (no other rank reads run files; on several machines they may not see them)."""
    distributed.share(lambda: load_weights(model, ckpt))
    distributed.broadcast_weights(model)


def write_interrupted_table(parts: Any, state: Any) -> None:
    """metrics.md of a stopped run: the last validation, until the resumed run writes the final table."""
    if not distributed.writes():
        return
    rows, note = table(parts, state, {"validation": state.validation}, {})
    header = (
        f"Interrupted at step {state.step}: validation metrics of the last evaluation; "
        "the final table replaces this when the resumed run ends.\n\n"
    )
    write_table(parts.run.table, rows, header, note=note)
    best = dict.fromkeys([*parts.types, "average"], state.best_step)  # checkpoints/best so far
    training_curves(parts.run.metrics, parts.run.curves, {n: tt.MAIN_METRIC for n, tt in parts.types.items()}, best)
