"""Input representation: tokenize each task once (cached by `datasets`), truncate, mark.

The cache key is explicit (input fingerprint + tokenizer contents + the task's input settings):
hashing the tokenizer object itself is unstable across calls, which would silently defeat the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtl_cli.config import TaskConfig
from mtl_cli.fingerprints import fingerprint

if TYPE_CHECKING:
    from mtl_cli.tasks import Task


def marker_token(task: str) -> str:
    return f"[TASK={task}]"


def add_task_markers(tokenizer: Any, encoder: Any, tasks: list[str]) -> None:
    """Give each task with `task_marker: prefix` its own special token (and embedding row)."""
    new = [marker_token(t) for t in tasks if marker_token(t) not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
        # An encoder-decoder's whole model: its embeddings are the decoder's too (T5, BART), and its
        # config, which checkpoints keep, learns the new vocabulary size.
        getattr(encoder, "mtl_seq2seq", encoder).resize_token_embeddings(len(tokenizer))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    contents = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return Hasher.hash((type(tokenizer).__name__, contents, tokenizer.truncation_side))


def truncate(ids: list[int], room: int, cfg: TaskConfig) -> list[int]:
    """Keep `room` content tokens: the head, the tail, or head_tokens from the start plus the end."""
    if len(ids) <= room:
        return ids
    if cfg.truncation == "head":
        return ids[:room]
    if cfg.truncation == "tail":
        return ids[len(ids) - room :]
    head = min(cfg.head_tokens or room // 4, room)
    return ids[:head] + ids[len(ids) - (room - head) :]


def special_token_layout(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a single text ([CLS] x [SEP]: 1, 1)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for lead in range(len(full) - len(plain) + 1):
        if full[lead : lead + len(plain)] == plain:
            return lead, len(full) - lead - len(plain)
    return 0, 0


def encode_texts(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, cfg: TaskConfig, marker_id: int | None = None
) -> dict[str, list]:
    """input_ids (and token_type_ids for pairs), special tokens added, at most cfg.max_length long."""
    extra = 1 if marker_id is not None else 0
    if pairs is not None:
        # Pairs: the tokenizer's longest_first strategy trims whichever text is longer.
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length - extra, return_token_type_ids=True)
        out = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
    else:
        lead, trail = special_token_layout(tokenizer)
        room = cfg.max_length - extra - lead - trail
        ids = tokenizer(texts)["input_ids"]
        out = {
            "input_ids": [s[:lead] + truncate(s[lead : len(s) - trail], room, cfg) + s[len(s) - trail :] for s in ids]
        }
    if marker_id is not None:
        out = {
            key: [insert_marker(seq, marker_id if key == "input_ids" else 0) for seq in seqs]
            for key, seqs in out.items()
        }
    return out


def insert_marker(seq: list, value: Any) -> list:
    """The task marker goes right after the first special token ([CLS])."""
    return seq[:1] + [value] + seq[1:]


def tokenize_task(task: Task, tokenizer: Any, tokenizer_fp: str) -> dict[str, Any]:
    """split -> Dataset with input_ids (unpadded), [token_type_ids], labels."""
    ttype = task.ttype
    c = task.cfg
    marker_id = tokenizer.convert_tokens_to_ids(marker_token(task.name)) if task.cfg.task_marker == "prefix" else None
    settings = (c.type, c.max_length, c.truncation, c.head_tokens, c.mlm_probability, marker_id, task.labels)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return ttype.encode(batch, tokenizer, task.cfg, task.labels, marker_id)

    out = {}
    for split, ds in task.splits.items():
        out[split] = ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=ds.column_names,
            new_fingerprint=fingerprint(ds, "tokenize", tokenizer_fp, settings),
            desc=f"tokenizing {task.name}/{split}",
        )
    return out


def tokenize_tasks(tasks: dict[str, Task], tokenizer: Any) -> dict[str, dict[str, dict[str, list]]]:
    """split -> task -> columns ({"input_ids": [...], "labels": [...], ...}), tokenized once, cached by `datasets`."""
    fp = tokenizer_fingerprint(tokenizer)
    data: dict[str, dict[str, dict[str, list]]] = {"train": {}, "validation": {}, "test": {}}
    for name, task in tasks.items():
        for split, ds in tokenize_task(task, tokenizer, fp).items():
            data.setdefault(split, {})[name] = ds.to_dict()  # an extra test split: the tasks that have it
    return data
