"""Token classification (NER, BIO tags): a tag per word; cross-entropy per word; entity-level F1 (seqeval).

Words come pre-split (`tokens`) with one tag each (`tags`). The first word piece of each word
carries the word's tag; its other pieces, the special tokens and a task marker carry -100,
which the loss and the metrics skip. Words the tokenizer turns into no piece at all (a lone
emoji variation selector, a zero-width space) are fed as the tokenizer's unknown token, so
that every word keeps a prediction. Words past `max_length` pieces are cut off (the head of
the sentence is kept) and are not scored.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl_cli.batches import pad_inputs, pad_sequences
from mtl_cli.config import TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import fingerprint
from mtl_cli.labels import raw_to_name
from mtl_cli.tokenization import insert_marker

MAIN_METRIC = "f1"
AUXILIARY = False
METRICS = ("f1", "precision", "recall", "accuracy")  # what metrics() returns, main first
IGNORE = -100


def columns(cfg: TaskConfig) -> dict[str, str]:
    return {"tokens": cfg.tokens_column, "tags": cfg.tags_column}


# --- labels ---------------------------------------------------------------------------------


def _tag_namer(cfg: TaskConfig, ds: Any):
    """Raw tag value -> tag name: label_map first, then ClassLabel names (Hub data stores ints)."""
    import datasets

    feature = ds.features["tags"]
    inner = getattr(feature, "feature", None)
    names = inner.names if isinstance(inner, datasets.ClassLabel) else None

    def to_name(value: Any) -> str:
        key = str(value).strip()
        if key in cfg.label_map:
            return cfg.label_map[key]
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            return raw_to_name(cfg, names[value])
        return raw_to_name(cfg, value)

    return to_name


def _unique_tags(ds: Any) -> list:
    """The distinct raw tag values of a split, read from the Arrow table (no Python loop)."""
    import pyarrow.compute as pc

    column = ds.with_format("arrow")[:]["tags"]
    return pc.unique(pc.list_flatten(column)).to_pylist()


def _check_lengths(name: str, split: str, ds: Any) -> None:
    """Every sentence needs exactly one tag per word (Hub data can pair the wrong columns)."""
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]
    if table["tokens"].null_count or table["tags"].null_count:
        column = "tokens" if table["tokens"].null_count else "tags"
        row = table[column].to_pylist().index(None)
        raise MtlError(f"task '{name}': {split} sentence {row + 1} has no {column}; fix the data")
    same = pc.equal(pc.list_value_length(table["tokens"]), pc.list_value_length(table["tags"]))
    if not pc.all(same).as_py():
        row = same.to_pylist().index(False)
        raise MtlError(
            f"task '{name}': {split} sentence {row + 1} has {len(table['tokens'][row])} words but "
            f"{len(table['tags'][row])} tags; fix the data or check task.{name}.tokens_column / tags_column"
        )


def _label_names(name: str, cfg: TaskConfig, raw: Any) -> list[str]:
    if cfg.labels:
        return [str(label) for label in cfg.labels]
    to_name = _tag_namer(cfg, raw["train"])
    found = {to_name(v) for v in _unique_tags(raw["train"]) if v is not None}
    if len(found) < 2:
        raise MtlError(
            f"task '{name}': the training split holds {len(found)} distinct tag(s) {sorted(found)}; "
            f"check task.{name}.tags_column and the file's tags"
        )
    # "O" (outside any entity) first, the entity tags sorted after it.
    return (["O"] if "O" in found else []) + sorted(found - {"O"})


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, list[str]]:
    """`tags` (names, or ints with ClassLabel names) -> tag ids; returns the tag names in id order."""
    import datasets

    labels = _label_names(name, cfg, raw)
    ids = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        to_name = _tag_namer(cfg, ds)
        _check_lengths(name, split, ds)
        found = _unique_tags(ds)
        if None in found:
            row = next(i for i, tags in enumerate(ds["tags"]) if None in tags)
            raise MtlError(f"task '{name}': {split} sentence {row + 1} has a missing tag; fix the data")
        unknown = sorted({to_name(v) for v in found} - set(ids), key=str)
        if unknown:
            bad = unknown[0]
            row = next(i for i, tags in enumerate(ds["tags"]) if any(to_name(t) == bad for t in tags))
            raise MtlError(
                f"task '{name}': tag '{bad}' ({split} sentence {row + 1}) is not in the label set {labels}; "
                f"fix the data or set task.{name}.labels / task.{name}.label_map"
            )
        features = ds.features.copy()
        features["tags"] = datasets.Sequence(datasets.ClassLabel(names=labels))
        raw[split] = ds.map(
            lambda batch, to_name=to_name: {"tags": [[ids[to_name(t)] for t in tags] for tags in batch["tags"]]},
            batched=True,
            features=features,
            new_fingerprint=fingerprint(ds, "tags", labels, sorted(cfg.label_map.items())),
        )
    return raw, labels


# --- tokenization ---------------------------------------------------------------------------


def _align(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """The word's tag on its first piece; -100 on its other pieces and on special tokens."""
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == previous else tags[w])
        previous = w
    return out


def _fill_empty_words(tokenizer: Any, words: list[str]) -> list[str]:
    """Words that tokenize to nothing become the unknown token, so that they keep their tag."""
    if tokenizer.unk_token is None or not words:
        return words
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"]
    return [w if p else tokenizer.unk_token for w, p in zip(words, pieces, strict=True)]


def encode(batch: dict[str, list], tokenizer: Any, cfg: TaskConfig, labels: list[str] | None, marker_id=None) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise MtlError(
            f"token classification needs a fast (Rust-backed) tokenizer to align tags with word pieces; "
            f"{type(tokenizer).__name__} is not one: pick another encoder"
        )
    extra = 1 if marker_id is not None else 0
    words = [list(ws) for ws in batch["tokens"]]

    def tokenize(sentences: list[list[str]]) -> Any:
        return tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=cfg.max_length - extra)

    enc = tokenize(words)
    input_ids = list(enc["input_ids"])
    word_ids = [enc.word_ids(i) for i in range(len(words))]
    for i, ws in enumerate(words):
        # A word index missing from the pieces: cut off by max_length, or a word with no piece.
        if len({w for w in word_ids[i] if w is not None}) < len(ws):
            filled = _fill_empty_words(tokenizer, ws)
            if filled != ws:
                again = tokenize([filled])
                input_ids[i], word_ids[i] = again["input_ids"][0], again.word_ids(0)
    out_labels = [_align(wids, tags) for wids, tags in zip(word_ids, batch["tags"], strict=True)]
    if marker_id is not None:
        input_ids = [insert_marker(seq, marker_id) for seq in input_ids]
        out_labels = [insert_marker(seq, IGNORE) for seq in out_labels]
    return {"input_ids": input_ids, "labels": out_labels}


def collate(rows: list[dict], pad_id: int, rng: Any) -> dict[str, torch.Tensor]:
    batch = pad_inputs(rows, pad_id)
    batch["labels"] = pad_sequences([r["labels"] for r in rows], IGNORE, torch.long)
    return batch


# --- model ----------------------------------------------------------------------------------


class TokenHead(nn.Module):
    """Each token's hidden state -> dropout -> linear: [B, T, hidden] -> [B, T, num_tags]."""

    def __init__(self, hidden_size: int, num_tags: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.out(self.dropout(hidden))


def build_head(hidden_size: int, labels: list[str], encoder: Any, sharing: Any) -> nn.Module:
    return TokenHead(hidden_size, len(labels), sharing.head_dropout)


def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    gold = batch["labels"]
    if not (gold != IGNORE).any():  # nothing to score (e.g. only empty sentences): no NaN
        return output.sum() * 0.0
    return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), gold.reshape(-1), ignore_index=IGNORE)


def predict(output: torch.Tensor, batch: dict) -> tuple[list, list]:
    """Per sentence, the predicted and the gold tag ids of its scored words (gold != -100)."""
    gold = batch["labels"]
    keep = (gold != IGNORE).cpu()
    pred = output.argmax(-1).cpu()
    gold = gold.cpu()
    preds = [p[k].tolist() for p, k in zip(pred, keep, strict=True)]
    golds = [g[k].tolist() for g, k in zip(gold, keep, strict=True)]
    return preds, golds


def metrics(preds: list, golds: list, labels: list[str], loss: float) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval, CoNLL-style default mode) and token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    y_pred = [[labels[i] for i in sent] for sent in preds]
    y_true = [[labels[i] for i in sent] for sent in golds]
    tokens = sum(len(s) for s in y_true)
    correct = sum(p == g for ps, gs in zip(y_pred, y_true, strict=True) for p, g in zip(ps, gs, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about non-BIO tags and empty predictions
        return {
            "precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
            "accuracy": correct / tokens if tokens else 0.0,
        }
