"""`mtl predict`: label new data with a trained run's tasks.

Reads csv, tsv, jsonl/json, parquet, plain text or CoNLL (mtl_cli/inputs.py) and writes one record
per input example, in input order: JSON lines to standard output, or to out=FILE.jsonl / FILE.csv.
A record is the example's input columns (plain text: "text"; CoNLL: "tokens", and "tags" when the
file has them) plus one key per task, named after the task:

    classification        {"label": name, "probs": {label: probability, ...}}
    multilabel            {"labels": [each label whose probability > 0.5], "probs": {label: probability, ...}}
    regression            {"value": number}
    token_classification  {"words": [...], "tags": [tag per word], "entities": [{"text", "type", "start", "end"}]}
                          "words" only when the words were split from a text (with the tokenizer's own
                          pre-tokenizer, as transformers' token-classification pipeline splits them);
                          start/end are character offsets into that text, or word indices for an input
                          of words (end exclusive either way). A word past max_length word pieces: tag null.

With logits=true each task's record also has "logits": the head's raw outputs (num_labels floats; one
for regression; for token tasks one list per word, from the word's first piece, null past max_length).

CSV flattens each record: <task>.label, <task>.prob.<label>, <task>.labels ("|"-joined), <task>.value,
<task>.words (JSON), <task>.tags (space-joined, "_" for null), <task>.entities and <task>.logits (JSON);
input cells that are not strings are written as JSON.

MLM tasks are skipped (nothing to predict). When the input has a task's labels (its label_column; for
token tasks the CoNLL tags or its tags_column), the task type's own metrics are printed on standard
error and returned. Logs go to standard error, so `mtl predict latest input=- < in.txt > out.jsonl` works.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_cli import inputs, task_types
from mtl_cli.batches import rows as batch_rows
from mtl_cli.device import autocast, bf16_supported
from mtl_cli.errors import MtlError
from mtl_cli.inputs import STDIN, Input, TaskView, read_input, task_view
from mtl_cli.task_types.token_classification import IGNORE
from mtl_cli.tokenization import marker_token
from mtl_cli.trained import Trained, check_tasks, load_trained
from mtl_cli.writers import check_writable, write_text

OUT_SUFFIXES = (".jsonl", ".csv")
PROGRESS_FROM = 500  # examples; fewer are done before a bar would be worth drawing
TOKEN_TYPE = "token_classification"


def predict_run(
    run: str,
    input_path: str,
    tasks: list[str] | None = None,
    checkpoint: str = "best",
    out: str | None = None,
    overwrite: bool = False,
    input_format: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    logits: bool = False,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
) -> dict:
    """Predict every example of `input_path` with the run's tasks (or `tasks`); returns
    {"rows", "tasks", "out" (None: standard output), "metrics" ({task: {metric: value}} for the tasks
    the input has labels for), "seconds", "examples_per_s"}. Nothing in the run directory is written."""
    if precision not in ("auto", "fp32", "bf16"):
        raise MtlError(f"precision must be auto (as the run trained), fp32 or bf16; got precision={precision}")
    if batch_size is not None and batch_size < 1:
        raise MtlError(f"batch_size must be a positive whole number; got batch_size={batch_size}")
    fmt = inputs.input_format(input_path, input_format)
    out_path = check_out(out, input_path, overwrite)
    data = read_input(input_path, fmt)
    if data.fixed and (text_column or text_pair_column):
        key = "text_column" if text_column else "text_pair_column"
        raise MtlError(f"{key}= names a column of a csv/tsv/jsonl/parquet file; {data.name} is {fmt}, which has none")
    trained = load_trained(run, checkpoint, runs_root, trust_remote_code)
    names, skipped = predicted_tasks(trained.cfg, tasks, data)
    bf16 = use_bf16(precision, trained)
    cfgs, labels, tokenizer = trained.cfg.task, trained.labels, trained.tokenizer
    # Every task's view (and so every check of the input) before any prediction is made.
    views = {n: task_view(data, n, cfgs[n], labels.get(n), tokenizer, text_column, text_pair_column) for n in names}
    if skipped:  # only now: a refused input is one line
        note(f"skipping task(s) {skipped}: masked-LM (auxiliary) tasks predict nothing")
    began = time.perf_counter()
    with progress(len(data.rows) * len(names), len(data.rows) > PROGRESS_FROM) as advance:
        size = batch_size or trained.cfg.trainer.eval_batch_size
        results = {n: predict_task(trained, n, views[n], size, bf16, advance) for n in names}
    seconds = time.perf_counter() - began
    write_predictions(output_records(data.rows, results, logits), out_path, names)
    metrics = {n: r.score() for n, r in results.items() if r.view.labelled}
    report(results, metrics, len(data.rows), seconds, out_path, cfgs)
    return {"rows": len(data.rows), "tasks": names, "out": str(out_path) if out_path else None,
            "metrics": metrics, "seconds": seconds, "examples_per_s": len(data.rows) / max(seconds, 1e-9)}  # fmt: skip


def output_records(rows: list[dict], results: dict[str, TaskResult], logits: bool) -> list[dict]:
    """Each input row with one key per task added, in input order."""
    out = [dict(row) for row in rows]
    for name, result in results.items():
        for record, value in zip(out, result.records(logits), strict=True):
            record[name] = value
    return out


def report(results: dict, metrics: dict, rows: int, seconds: float, out: Path | None, cfgs: Any) -> None:
    """Standard error: words past max_length, each labelled task's metrics, the speed, the file written."""
    for name, result in results.items():
        words, examples = result.truncated()
        if words:
            print(
                f"mtl: warning: task '{name}': {words:,} word(s) in {examples:,} example(s) lie past its max_length "
                f"({cfgs[name].max_length} word pieces) and have no tag (null)",
                file=sys.stderr,
            )
    for name, values in metrics.items():
        note(f"{name} ({rows:,} labelled examples): " + ", ".join(f"{m} {v:.4f}" for m, v in values.items()))
    rate = rows / max(seconds, 1e-9)
    note(f"predicted {rows:,} examples for {len(results)} task(s) in {seconds:.1f} s: {rate:,.0f} examples/s")
    if out is not None:
        note(f"wrote {out}")


def note(message: str) -> None:
    print(f"mtl: {message}", file=sys.stderr)


# --- options --------------------------------------------------------------------------------


def check_out(out: str | None, input_path: str, overwrite: bool) -> Path | None:
    """The predictions file (None: standard output), refused before any work when it cannot be written."""
    if out is None or out == STDIN:
        return None
    path = Path(out)
    if input_path != STDIN and _same_file(path, Path(input_path)):
        raise MtlError(f"out={out} is the input file; write the predictions to another file")
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise MtlError(f"out={out}: predictions are written as .jsonl or .csv; name the file so")
    if path.is_dir():
        raise MtlError(f"out={out} is a directory; name a file (e.g. out={path / 'predictions.jsonl'})")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise MtlError(f"out={out} already exists; pass overwrite=true to replace it, or choose another out=")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise MtlError(f"out={out}: {folder} is a file, not a folder; choose another out=")
    if not folder.is_dir():
        raise MtlError(
            f"out={out}: the folder {folder} does not exist; create it (mkdir -p {folder}) or choose another out="
        )
    check_writable(folder, ", or choose another out=")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link or another spelling of the same path, too
    except OSError:
        return a.resolve() == b.resolve()


def use_bf16(precision: str, trained: Trained) -> bool:
    """auto: as the run trained (bf16 autocast where it did and the device has it); fp32; bf16."""
    if precision == "bf16":
        if not bf16_supported(trained.device):
            raise MtlError(
                f"precision=bf16: this device ({trained.device}) has no bfloat16 support; use precision=fp32"
            )
        return True
    return precision == "auto" and trained.bf16


def predicted_tasks(cfg: Any, tasks: list[str] | None, data: Input) -> tuple[list[str], list[str]]:
    """(the chosen tasks that predict, the MLM ones left out); the run's tasks unless `tasks` chooses."""
    check_tasks(cfg, tasks)
    chosen = list(tasks or cfg.task)
    skipped = [n for n in chosen if cfg.task[n].type not in RECORDS]
    names = [n for n in chosen if n not in skipped]
    if not names:
        raise MtlError(
            f"task(s) {skipped} are masked-LM (auxiliary) tasks, which predict nothing; "
            f"this run's tasks are {list(cfg.task)} (tasks=...)"
        )
    clash = [c for c in data.columns if c in names]
    if clash:
        raise MtlError(
            f"{data.name} has a column named '{clash[0]}', the key that task's predictions go in; rename that column"
        )
    return names, skipped


# --- the model ------------------------------------------------------------------------------


@dataclass
class TaskResult:
    """One task's predictions, in input order, and how its records are written."""

    type: str
    labels: list[str] | None
    view: TaskView
    preds: list  # what the type's predict() gives per example: a class id, multi-hot, a value, tag ids
    golds: list  # the same of the input's labels (dummies when it has none)
    outputs: list[list]  # the head's raw outputs per example (token tasks: per scored word)

    def score(self) -> dict[str, float]:
        # loss=0.0: none is computed here, and only MLM (never predicted) reports it
        return task_types.get(self.type).metrics(self.preds, self.golds, self.labels, 0.0)

    def records(self, with_logits: bool) -> Iterator[dict]:
        build = RECORDS[self.type]
        for i, (pred, raw) in enumerate(zip(self.preds, self.outputs, strict=True)):
            record = build(self, i, pred, raw)
            if with_logits:
                record["logits"] = raw
                if self.type == TOKEN_TYPE:  # a word past max_length has no piece, so no logits
                    record["logits"] = raw + [None] * (len(self.view.batch["tokens"][i]) - len(raw))
            yield record

    def truncated(self) -> tuple[int, int]:
        """(words, examples) past max_length word pieces: tagged null."""
        if self.type != TOKEN_TYPE:
            return 0, 0
        cut = [len(ws) - len(p) for ws, p in zip(self.view.batch["tokens"], self.preds, strict=True)]
        return sum(cut), sum(1 for c in cut if c)


def predict_task(
    trained: Trained, name: str, view: TaskView, batch_size: int, bf16: bool, advance: Callable
) -> TaskResult:
    """Encode every example once (as training does: truncation, max_length, the task marker), then
    run length-sorted batches; the results are put back in input order."""
    cfg = trained.cfg.task[name]
    ttype = task_types.get(cfg.type)
    labels = trained.labels.get(name)
    tokenizer = trained.tokenizer
    marker_id = tokenizer.convert_tokens_to_ids(marker_token(name)) if cfg.task_marker == "prefix" else None
    columns = ttype.encode(view.batch, tokenizer, cfg, labels, marker_id)
    preds, golds, outputs = _infer(trained, name, ttype, columns, batch_size, bf16, advance)
    return TaskResult(cfg.type, labels, view, preds, golds, outputs)


@torch.inference_mode()
def _infer(
    trained: Trained, name: str, ttype: Any, columns: dict, batch_size: int, bf16: bool, advance: Callable
) -> tuple[list, list, list]:
    n = len(columns["input_ids"])
    preds: list = [None] * n
    golds: list = [None] * n
    outputs: list = [None] * n
    # Shortest first, as eval_batches sorts (little padding); the indices put the results back in order.
    order = sorted(range(n), key=lambda i: len(columns["input_ids"][i]))
    rng = np.random.default_rng(0)
    token = "tokens" in ttype.columns(trained.cfg.task[name])
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = ttype.collate(batch_rows(columns, idx), trained.tokenizer.pad_token_id, rng)
        batch = {k: v.to(trained.device) for k, v in batch.items()}
        with autocast(trained.device, bf16):
            output = trained.model(name, batch)
            p, g = ttype.predict(output, batch)
        if isinstance(output, dict):  # generated text (seq2seq): no logits per example
            for j, i in enumerate(idx):
                preds[i], golds[i], outputs[i] = p[j], g[j], []
            advance(len(idx))
            continue
        raw = output.float().cpu()
        if token:  # each word's first piece: where the gold (or dummy) tag sits
            keep = (batch["labels"] != IGNORE).cpu()
            values = [o[k].tolist() for o, k in zip(raw, keep, strict=True)]
        else:
            values = [[v] for v in raw.tolist()] if raw.dim() == 1 else raw.tolist()
        for j, i in enumerate(idx):
            preds[i], golds[i], outputs[i] = p[j], g[j], values[j]
        advance(len(idx))
    return preds, golds, outputs


@contextmanager
def progress(total: int, wanted: bool) -> Iterator[Callable[[int], None]]:
    """A transient bar on standard error, only on a terminal (standard output may be the predictions)."""
    if not (wanted and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("predict", total=total)
        yield lambda n: bar.update(task, advance=n)


# --- records --------------------------------------------------------------------------------


def _classification(result: TaskResult, i: int, pred: int, raw: list[float]) -> dict:
    labels = result.labels or []
    return {"label": labels[pred], "probs": dict(zip(labels, _softmax(raw), strict=True))}


def _multilabel(result: TaskResult, i: int, pred: list[int], raw: list[float]) -> dict:
    labels = result.labels or []
    probs = (1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=np.float64)))).tolist()
    return {
        "labels": [label for label, on in zip(labels, pred, strict=True) if on],
        "probs": dict(zip(labels, probs, strict=True)),
    }


def _regression(result: TaskResult, i: int, pred: float, raw: list[float]) -> dict:
    return {"value": pred}


def _token(result: TaskResult, i: int, pred: list[int], raw: list) -> dict:
    labels = result.labels or []
    view = result.view
    words = view.batch["tokens"][i]
    tags: list[str | None] = [labels[t] for t in pred] + [None] * (len(words) - len(pred))
    offsets = view.offsets[i] if view.offsets else None
    text = view.texts[i] if view.texts else None
    record: dict[str, Any] = {"words": words} if offsets is not None else {}
    record["tags"] = tags
    record["entities"] = entities(tags, words, offsets, text)
    return record


def _softmax(raw: list[float]) -> list[float]:
    x = np.asarray(raw, dtype=np.float64)
    e = np.exp(x - x.max())
    return (e / e.sum()).tolist()


def _seq2seq(result: TaskResult, i: int, pred: tuple[str, str], raw: list) -> dict:
    return {"output": pred[0]}  # the generated text (uncased where the tokenizer is)


RECORDS: dict[str, Callable[..., dict]] = {
    "classification": _classification, "multilabel": _multilabel, "regression": _regression, TOKEN_TYPE: _token,
    "seq2seq": _seq2seq,
}  # fmt: skip


def entities(
    tags: list[str | None], words: list[str], offsets: list[tuple[int, int]] | None = None, text: str | None = None
) -> list[dict]:
    """BIO tags -> entity spans (seqeval's reading): character offsets into `text` when the words were
    split from it (`offsets`), else word indices; `end` is exclusive either way."""
    from seqeval.metrics.sequence_labeling import get_entities

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about tags without a B-/I- prefix
        spans = get_entities(["O" if t is None else t for t in tags])
    out = []
    for kind, first, last in spans:
        if offsets is None or text is None:
            out.append({"text": " ".join(words[first : last + 1]), "type": kind, "start": first, "end": last + 1})
        else:
            start, end = offsets[first][0], offsets[last][1]
            out.append({"text": text[start:end], "type": kind, "start": start, "end": end})
    return out


# --- output ---------------------------------------------------------------------------------


def write_predictions(records: list[dict], out: Path | None, tasks: list[str]) -> None:
    """JSON lines (or csv by out='s suffix), whole: to a temporary file renamed into place, or to
    standard output in one write once every prediction is made."""
    text = _csv(records, tasks) if out is not None and out.suffix.lower() == ".csv" else _jsonl(records)
    if out is not None:
        write_text(out, text)
        return
    try:
        sys.stdout.flush()
        # UTF-8 whatever the locale's encoding: the texts may hold any character.
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            buffer.write(text.encode("utf-8"))
            buffer.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _jsonl(records: list[dict]) -> str:
    # default=str: parquet dates and decimals, which JSON has no type for
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _flatten(task: str, record: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probs":
            out.update({f"{task}.prob.{label}": p for label, p in value.items()})
        elif key == "labels":
            out[f"{task}.labels"] = "|".join(value)
        elif key == "tags":
            out[f"{task}.tags"] = " ".join("_" if t is None else t for t in value)
        elif key in ("label", "value"):
            out[f"{task}.{key}"] = value
        else:  # words, entities, logits
            out[f"{task}.{key}"] = json.dumps(value, ensure_ascii=False)
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return value if plain else json.dumps(value, ensure_ascii=False, default=str)


def _csv(records: list[dict], tasks: list[str]) -> str:
    rows = []
    for record in records:
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key in tasks:
                row.update(_flatten(key, value))
            else:
                row[key] = _cell(value)
        rows.append(row)
    header = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
