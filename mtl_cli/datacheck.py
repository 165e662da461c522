"""Data checks: sizes, label balance, empty and over-long texts, duplicates and train/test leakage.

`check_tasks` builds a JSON-serialisable report from loaded tasks; `report_warnings` turns it into
one-line warnings; `print_report` shows it as tables; `run_data_check` does all of it for a config
(`mtl data check`). With `full=False` only the cheap checks run (no tokenizer: sizes, labels,
empties, duplicates, leakage), fast enough for `mtl train` to run at start-up.

Texts are compared after normalisation (strip, lowercase, collapse whitespace); a sentence pair is
compared as the (text, text_pair) tuple, a token-classification example as its joined tokens.
Empty texts are counted as empty, never as duplicates or leaks.

Label balance: a class with less than `task.<name>.min_class_share` of the training labels is
reported (null or 0: never). What a share is of: a classification task's examples; a multilabel
task's examples, per label; a token-classification task's entity mentions, per entity type (B-x
and I-x are one type, and the 'O' tag, most of every sentence, is not a class here).

Report layout:

    {"full": bool, "tokenizer": name | null, "notes": [str], "thresholds": {...}, "seconds": float,
     "tasks": {task: {"type", "max_length", "labels", "min_class_share",
                      "splits": {split: {"examples", "label_distribution", "empty",
                                         "over_length", "max_tokens", "duplicates"}},
                      "leakage": {"validation" | "test": {"count", "examples"}}}},
     "cross_task": [{"train_task", "task", "split", "count", "examples"}]}

`duplicates` is {"count": examples whose text occurs more than once in the split, "distinct":
how many such texts, "conflicting_labels": duplicated texts with more than one label
(classification only, else null), "examples": [{"text", "occurrences"}]}; a leakage `count` is the
number of examples of the held-out split whose text is in the train split.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mtl_cli.config import MtlConfig, held_out
from mtl_cli.encoders import resolve_source
from mtl_cli.errors import MtlError, first_line
from mtl_cli.hub import hub_offline_mode, hub_reachable
from mtl_cli.tables import print_table, rows_to_markdown
from mtl_cli.tasks import Task, load_tasks
from mtl_cli.writers import write_json, writing

MAX_EXAMPLES = 3  # examples kept per duplicate or leakage finding
OVER_LENGTH_SHARE = 0.05  # warn when more of a split than this is longer than max_length
_SHOW_CHARS = 100
_BATCH = 2048


def check_tasks(tasks: dict[str, Task], tokenizer: Any = None, full: bool = True) -> dict:
    """The data report of `tasks` (see the module docstring). Over-long examples are counted only
    when `full` and a tokenizer is given; otherwise `over_length` is null."""
    start = time.perf_counter()
    use_tokenizer = tokenizer if full else None
    report: dict[str, Any] = {
        "full": full,
        "tokenizer": getattr(use_tokenizer, "name_or_path", type(use_tokenizer).__name__) if use_tokenizer else None,
        "notes": [],
        "thresholds": {"over_length_share": OVER_LENGTH_SHARE},  # the class share is per task
        "tasks": {},
        "cross_task": [],
    }
    keyed: dict[str, dict[str, _Split]] = {}
    for name, task in tasks.items():
        splits = {split: _read_split(task, split) for split in ["train", *held_out(task.splits)]}
        keyed[name] = splits
        entry: dict[str, Any] = {
            "type": task.cfg.type,
            "max_length": task.cfg.max_length,
            "labels": list(task.labels) if task.labels is not None else None,
            "min_class_share": _min_class_share(name, task),
            "splits": {},
            "leakage": {},
        }
        for split, data in splits.items():
            over, longest = _over_length(data, task, use_tokenizer) if use_tokenizer is not None else (None, None)
            entry["splits"][split] = {
                "examples": len(data.keys),
                "label_distribution": _label_distribution(task, data),
                "empty": sum(1 for k in data.keys if not k),
                "over_length": over,
                "max_tokens": longest,
                "duplicates": _duplicates(task, data),
            }
        train_keys = set(splits["train"].keys) - {""}
        for split in held_out(splits):
            if split in splits:
                hits = [i for i, k in enumerate(splits[split].keys) if k and k in train_keys]
                entry["leakage"][split] = {
                    "count": len(hits),
                    "examples": [splits[split].show(i) for i in hits[:MAX_EXAMPLES]],
                }
        report["tasks"][name] = entry
    report["cross_task"] = _cross_task(keyed)
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def report_warnings(report: dict) -> list[str]:
    """One line per problem found, naming the task, the split and the count."""
    out: list[str] = []
    for name, entry in report["tasks"].items():
        for split, s in entry["splits"].items():
            n = s["examples"]
            where = f"{name}/{split}"
            if s["empty"]:
                what = "empty token lists" if entry["type"] == "token_classification" else "empty texts"
                out.append(f"{where}: {s['empty']} of {n} examples have {what}")
            dup = s["duplicates"]
            if dup["count"]:
                conflicts = (
                    f", {dup['conflicting_labels']} with conflicting labels" if dup["conflicting_labels"] else ""
                )
                out.append(
                    f"{where}: {dup['count']} examples are duplicates ({_plural(dup['distinct'], 'distinct text')}"
                    f"{conflicts}), e.g. {_quote(dup['examples'][0]['text'])} x{dup['examples'][0]['occurrences']}"
                )
            if s["over_length"] and s["over_length"] / n > OVER_LENGTH_SHARE:
                out.append(
                    f"{where}: {s['over_length']} of {n} examples ({s['over_length'] / n:.1%}) are longer than "
                    f"max_length={entry['max_length']} tokens (longest {s['max_tokens']}) and will be truncated"
                )
        for split, leak in entry["leakage"].items():
            if leak["count"]:
                out.append(
                    f"{name}/{split}: {_plural(leak['count'], 'example')} also in {name}/train, e.g. {_quote(leak['examples'][0])}"
                )
        out += _rare_classes(name, entry)
    for leak in report["cross_task"]:
        out.append(
            f"{leak['task']}/{leak['split']}: {_plural(leak['count'], 'example')} also in {leak['train_task']}/train "
            f"(seen in training by the shared encoder), e.g. {_quote(leak['examples'][0])}"
        )
    return out


def report_rows(report: dict) -> list[dict]:
    """One row per task and split, for `print_table` / `rows_to_markdown`."""
    rows = []
    for name, entry in report["tasks"].items():
        for split, s in entry["splits"].items():
            leak = entry["leakage"].get(split)
            rows.append(
                {
                    "task": name,
                    "split": split,
                    "examples": s["examples"],
                    "labels": _label_summary(s["label_distribution"]),
                    "empty": s["empty"],
                    "over-long": "-" if s["over_length"] is None else f"{s['over_length']} (max {s['max_tokens']})",
                    "duplicates": s["duplicates"]["count"],
                    "in train": "" if leak is None else leak["count"],
                }
            )
    return rows


def leakage_rows(report: dict) -> list[dict]:
    """One row per held-out split that shares texts with a train split (its own task's or another's)."""
    rows = []
    for name, entry in report["tasks"].items():
        for split, leak in entry["leakage"].items():
            if leak["count"]:
                rows.append(_leak_row(name, split, name, leak))
    for leak in report["cross_task"]:
        rows.append(_leak_row(leak["task"], leak["split"], leak["train_task"], leak))
    return rows


def report_markdown(report: dict) -> str:
    """The report as markdown tables plus the warnings (e.g. for a run directory)."""
    parts = ["## Data check\n\n", rows_to_markdown(report_rows(report))]
    leaks = leakage_rows(report)
    leaks = [{**row, "example": row["example"].replace("|", "\\|")} for row in leaks]
    parts += ["\n## Leakage\n\n", rows_to_markdown(leaks) if leaks else "none found\n"]
    warnings = report_warnings(report)
    parts += ["\n## Warnings\n\n", "".join(f"- {w}\n" for w in warnings) if warnings else "none\n"]
    return "".join(parts)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.markup import escape

    mode = "full" if report["full"] else "quick"
    tok = f", tokens counted with {report['tokenizer']}" if report["tokenizer"] else ", over-long not counted"
    print_table(_escaped(report_rows(report)), title=f"Data check ({mode}{escape(tok)})")
    leaks = leakage_rows(report)
    console = Console(highlight=False, soft_wrap=True)
    if leaks:
        print_table(_escaped(leaks), title="Leakage: held-out examples whose text is in a train split")
    else:
        console.print("Leakage: no held-out example appears in any train split.")
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False)
    warnings = report_warnings(report)
    for line in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")
    if not warnings:
        console.print("[green]No data problems found.[/green]")


def load_tokenizer(encoder_cfg: Any) -> Any:
    """The encoder's tokenizer alone (no weights), from the same place `load_encoder` would use."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = resolve_source(encoder_cfg)
    if not Path(source).exists() and not hub_offline_mode() and not hub_reachable():
        raise MtlError(
            f"the tokenizer of '{encoder_cfg.name_or_path}' must come from the Hugging Face Hub, which is unreachable"
        )
    try:
        return AutoTokenizer.from_pretrained(
            source, revision=encoder_cfg.revision, trust_remote_code=encoder_cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise MtlError(f"could not load the tokenizer of '{encoder_cfg.name_or_path}' ({first_line(err)})") from None


def run_data_check(cfg: MtlConfig, out_path: Path | None = None, full: bool = True) -> dict:
    """Load the config's tasks (and, if `full`, the encoder's tokenizer), check, print, write JSON."""
    tasks = load_tasks(cfg)
    tokenizer, note = None, None
    if full:
        try:
            tokenizer = load_tokenizer(cfg.encoder)
        except MtlError as err:
            note = f"over-long examples not counted: {err}"
    report = check_tasks(tasks, tokenizer, full)
    if note:
        report["notes"].append(note)
    print_report(report)
    if out_path is not None:
        out_path = Path(out_path)
        made = [p for p in [out_path.parent, *out_path.parent.parents] if not p.exists()]
        with writing(out_path, *(p.rmdir for p in made)):  # one line for a full disk or read-only folder
            out_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(out_path, report)
    return report


# --- internals ----------------------------------------------------------------------------


class _Split:
    """One split's columns as Python lists, and each example's normalised key ("" when empty)."""

    def __init__(self, columns: dict[str, list], kind: str):
        self.columns = columns
        self.kind = kind  # "tokens", "pair" or "text"
        if kind == "tokens":
            self.keys = [_norm(" ".join(t)) if t else "" for t in columns["tokens"]]
        elif kind == "pair":
            self.keys = [
                f"{a}\t{b}" if a and b else ""
                for a, b in zip(map(_norm, columns["text"]), map(_norm, columns["text_pair"]), strict=True)
            ]
        else:
            self.keys = [_norm(t) for t in columns["text"]]

    def show(self, i: int) -> str:
        if self.kind == "tokens":
            text = " ".join(self.columns["tokens"][i])
        elif self.kind == "pair":
            text = f"{self.columns['text'][i].strip()} || {self.columns['text_pair'][i].strip()}"
        else:
            text = self.columns["text"][i].strip()
        text = text.replace("\r", " ").replace("\n", " ")
        return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _norm(text: str | None) -> str:
    return " ".join(text.lower().split()) if text else ""


def _read_split(task: Task, split: str) -> _Split:
    # Arrow, not `ds[column]`: one C++ conversion per column, with any index mapping (carved splits) applied.
    ds = task.splits[split]
    table = ds.with_format("arrow")[:]
    wanted = [c for c in ("text", "text_pair", "tokens", "tags", "label", "target") if c in ds.column_names]
    columns = {c: table.column(c).to_pylist() for c in wanted}
    kind = "tokens" if "tokens" in columns else "pair" if "text_pair" in columns else "text"
    return _Split(columns, kind)


def _label_distribution(task: Task, data: _Split) -> dict | None:
    cols = data.columns
    names = list(task.labels or [])

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    if "tags" in cols:
        counts: Counter = Counter()
        present: Counter = Counter()
        for tags in cols["tags"]:
            counts.update(tags)
            present.update(set(tags))
        ids = range(len(names)) if names else sorted(counts)
        return {
            "kind": "tags",
            "counts": {name(i): counts.get(i, 0) for i in ids},
            "examples_with": {name(i): present.get(i, 0) for i in ids},
            "entities": _entity_mentions({name(i): counts.get(i, 0) for i in ids}),
        }
    if "label" not in cols:
        return None
    values = [v for v in cols["label"] if v is not None]
    if task.cfg.type == "regression":
        floats = [float(v) for v in values]
        if not floats:
            return {"kind": "regression", "mean": None, "std": None, "min": None, "max": None}
        return {
            "kind": "regression",
            "mean": statistics.fmean(floats),
            "std": statistics.pstdev(floats),
            "min": min(floats),
            "max": max(floats),
        }
    if values and isinstance(values[0], list):  # multi-hot rows
        sums = [0] * max(len(names), len(values[0]))
        for row in values:
            for i, v in enumerate(row):
                if v and v >= 0.5:
                    sums[i] += 1
        return {"kind": "multilabel", "counts": {name(i): c for i, c in enumerate(sums)}}
    counts = Counter(int(v) for v in values)
    ids = range(len(names)) if names else sorted(counts)
    return {"kind": "classes", "counts": {name(i): counts.get(i, 0) for i in ids}}


def _duplicates(task: Task, data: _Split) -> dict:
    keys = data.keys
    if "target" in data.columns:
        # A source repeated with another reference is one more reference (Tatoeba has 826), not a
        # duplicate: text-to-text examples repeat when source and target both do.
        keys = [f"{k}\t{_norm(t)}" if k else "" for k, t in zip(keys, data.columns["target"], strict=True)]
    counts = Counter(k for k in keys if k)
    dup = sorted((k for k, c in counts.items() if c > 1), key=lambda k: -counts[k])
    wanted = set(dup)
    labels = data.columns.get("label") if task.cfg.type == "classification" else None
    first: dict[str, int] = {}
    label_sets: dict[str, set] = defaultdict(set)
    for i, k in enumerate(keys):
        if k in wanted:
            first.setdefault(k, i)
            if labels is not None:
                label_sets[k].add(labels[i])
    return {
        "count": sum(counts[k] for k in dup),
        "distinct": len(dup),
        "conflicting_labels": None if labels is None else sum(len(s) > 1 for s in label_sets.values()),
        "examples": [{"text": data.show(first[k]), "occurrences": counts[k]} for k in dup[:MAX_EXAMPLES]],
    }


def _over_length(data: _Split, task: Task, tokenizer: Any) -> tuple[int, int]:
    """(examples longer than max_length in tokens, special tokens and any task marker included; the longest)."""
    cols = data.columns
    n = len(data.keys)
    extra = 1 if task.cfg.task_marker == "prefix" else 0
    over, longest = 0, 0
    opts = {
        "add_special_tokens": True,
        "return_attention_mask": False,
        "return_token_type_ids": False,
        "verbose": False,
    }
    for start in range(0, n, _BATCH):
        end = min(start + _BATCH, n)
        if data.kind == "tokens":
            enc = tokenizer(cols["tokens"][start:end], is_split_into_words=True, **opts)
        elif data.kind == "pair":
            enc = tokenizer(cols["text"][start:end], cols["text_pair"][start:end], **opts)
        else:
            enc = tokenizer(cols["text"][start:end], **opts)
        for ids in enc["input_ids"]:
            length = len(ids) + extra
            longest = max(longest, length)
            over += length > task.cfg.max_length
    return over, longest


def _cross_task(keyed: dict[str, dict[str, _Split]]) -> list[dict]:
    """Held-out examples of one task whose text is in another task's train split."""
    if len(keyed) < 2:
        return []
    in_train: dict[str, list[str]] = defaultdict(list)
    for name, splits in keyed.items():
        for k in set(splits["train"].keys):
            if k:
                in_train[k].append(name)
    out = []
    for name, splits in keyed.items():
        for split in held_out(splits):
            if split not in splits:
                continue
            hits: dict[str, list[int]] = defaultdict(list)
            for i, k in enumerate(splits[split].keys):
                for other in in_train.get(k, ()) if k else ():
                    if other != name:
                        hits[other].append(i)
            for other, rows in hits.items():
                out.append(
                    {
                        "train_task": other,
                        "task": name,
                        "split": split,
                        "count": len(rows),
                        "examples": [splits[split].show(i) for i in rows[:MAX_EXAMPLES]],
                    }
                )
    return out


def _min_class_share(name: str, task: Task) -> float | None:
    share = task.cfg.min_class_share
    if share is not None and not 0 <= share < 1:
        raise MtlError(
            f"`task.{name}.min_class_share` must be in [0, 1) (0 or null: no warning); got {share:g}: "
            f"set task.{name}.min_class_share=0.02"
        )
    return share or None


def _entity_mentions(tag_counts: dict[str, int]) -> dict[str, int]:
    """Entity type -> mentions, from BIO(ES) tag counts: a mention starts with B-x or S-x (the task
    loader reads an I-x that starts one as B-x); a tag without a prefix counts as its own type."""
    mentions: dict[str, int] = {}
    for tag, count in tag_counts.items():
        if tag == "O":
            continue
        prefix, sep, kind = tag.partition("-")
        if sep and prefix in ("B", "I", "E", "S"):
            mentions[kind] = mentions.get(kind, 0) + (count if prefix in ("B", "S") else 0)
        else:
            mentions[tag] = mentions.get(tag, 0) + count
    return mentions


def _rare_classes(name: str, entry: dict) -> list[str]:
    train = entry["splits"].get("train")
    dist = train and train["label_distribution"]
    threshold = entry.get("min_class_share")
    if not dist or dist["kind"] == "regression" or not threshold:
        return []
    if dist["kind"] == "tags":
        counts, what = dist["entities"], "entity type '{}' has only {} of {} entity mentions"
        total = sum(counts.values())
    else:
        counts, what = dist["counts"], "label '{}' is in only {} of {} examples"
        total = train["examples"]
        if dist["kind"] != "multilabel":
            what = "class" + what.removeprefix("label")
    if not total:
        return []
    under = f"under task.{name}.min_class_share={threshold:g}; set it to 0 to silence this"
    return [
        f"{name}/train: {what.format(label, c, total)} ({c / total:.1%}, {under})"
        for label, c in counts.items()
        if c / total < threshold
    ]


def _label_summary(dist: dict | None) -> str:
    if dist is None:
        return ""
    if dist["kind"] == "regression":
        if dist["mean"] is None:
            return ""
        return f"mean {dist['mean']:.3g} sd {dist['std']:.3g} [{dist['min']:.3g}, {dist['max']:.3g}]"
    ranked = sorted(dist["counts"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v}" for k, v in ranked[:4])
    return shown + (f", +{len(ranked) - 4} more" if len(ranked) > 4 else "")


def _leak_row(task: str, split: str, train_task: str, leak: dict) -> dict:
    return {
        "task": task,
        "split": split,
        "found in": f"{train_task}/train",
        "count": leak["count"],
        "example": leak["examples"][0] if leak["examples"] else "",
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _escaped(rows: list[dict]) -> list[dict]:
    from rich.markup import escape

    return [{k: escape(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
