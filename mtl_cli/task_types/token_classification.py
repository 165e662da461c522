"""Token classification (NER, BIO tags): a tag per word; cross-entropy per word; entity-level F1 (seqeval).

Words come pre-split (`tokens`) with one tag each (`tags`). The first word piece of each word
carries the word's tag; its other pieces, the special tokens and a task marker carry -100,
which the loss and the metrics skip. Words the tokenizer turns into no piece at all (a lone
emoji variation selector, a zero-width space) are fed as the tokenizer's unknown token, so
that every word keeps a prediction. Words past `max_length` pieces are cut off (the head of
the sentence is kept) and are not scored.

Tags are scored as BIO (IOB2) entities, so tags in another scheme are converted when read, each
conversion logged once per task (a warning line naming what changed and how many tags):

- plain tags (`PERSON`, `LOC` and `O`, no prefix): a run of the same tag is one entity, so
  `PERSON PERSON O LOC` becomes `B-PERSON I-PERSON O B-LOC` (two adjacent entities of the same
  type merge: a plain scheme cannot tell them apart);
- BIOES / BILOU (`S-`, `E-`, `U-`, `L-`): `S-`/`U-` become `B-`, `E-`/`L-` become `I-`;
- an `I-X` that starts an entity (after `O`, after another type, after an `E-`/`S-`, or first in
  its sentence; IOB1 data such as the original CoNLL-2003 files) becomes `B-X`: the same reading
  as seqeval's default mode, now also what the model is trained on.

Prefixed and plain entity tags mixed in one task (`B-PER` next to `MISC`) cannot be read either
way and are refused, naming a tag of each kind and where the plain one is. With `labels` set,
the list is converted the same way (plain `X` becomes `B-X`, `I-X`; a `B-X` is added before an
`I-X` that has none). BIO data without a dangling `I-` is read unchanged.
"""

from __future__ import annotations

import re
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
from mtl_cli.logs import log
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


_PREFIXED = re.compile(r"([BIESLU])-(.+)")
_BEGINS, _CLOSES = frozenset("BSU"), frozenset("ESLU")  # prefixes that start / end an entity by themselves


def _parse(tag: str) -> tuple[str | None, str | None]:
    """(prefix or None for a plain tag, entity type); (None, None) for O."""
    if tag == "O":
        return None, None
    m = _PREFIXED.fullmatch(tag)
    return (m.group(1), m.group(2)) if m else (None, tag)


def tag_scheme(tags: set[str]) -> str:
    """`bio`, `bioes` (also BILOU) or `plain` for these tag names; `mixed` when plain and prefixed meet."""
    prefixes = {_parse(t)[0] for t in tags if t != "O"}
    plain, prefixed = None in prefixes, prefixes - {None}
    if plain and prefixed:
        return "mixed"
    if plain:
        return "plain"
    return "bioes" if prefixed & _CLOSES else "bio"


def _bio_labels(labels: list[str]) -> list[str]:
    """A `labels` list in another scheme, as BIO names in the same order."""
    out: list[str] = []
    for tag in labels:
        prefix, kind = _parse(tag)
        if kind is None:
            names = ["O"]
        elif prefix is None:
            names = [f"B-{kind}", f"I-{kind}"]
        else:
            names = [f"{'B' if prefix in _BEGINS else 'I'}-{kind}"]
        for n in names:
            if n.startswith("I-") and f"B-{n[2:]}" not in out:
                out.append(f"B-{n[2:]}")
            if n not in out:
                out.append(n)
    return out


def to_bio(name: str, split: str, ds: Any, to_name: Any) -> tuple[Any, Any, list[str], dict]:
    """Every tag of a split as its BIO name: (flat names as an index into `names`, sentence offsets, names, changes).

    Vectorised over the flattened tags: whether a tag starts an entity depends only on the tag
    before it in the same sentence.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.with_format("arrow")[:]["tags"]
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = pc.list_flatten(column)
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    encoded = flat.dictionary_encode()
    raw_names = [to_name(v) for v in encoded.dictionary.to_pylist()]
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    parsed = [_parse(t) for t in raw_names]
    kinds = sorted({k for _, k in parsed if k is not None})
    kind_id = {k: i + 1 for i, k in enumerate(kinds)}  # 0: O
    kind = np.array([kind_id.get(k, 0) if k else 0 for _, k in parsed], dtype=np.int64)[codes]
    begins = np.array([p in _BEGINS for p, _ in parsed], dtype=bool)[codes]
    # Whether the tag leaves its entity open for an I- after it (B-, I- and plain tags do).
    opens = np.array([k is not None and p not in _CLOSES for p, k in parsed], dtype=bool)[codes]
    first = np.zeros(len(codes), dtype=bool)
    first[offsets[:-1][lengths > 0]] = True
    continues = np.zeros(len(codes), dtype=bool)
    continues[1:] = ~first[1:] & opens[:-1] & (kind[:-1] == kind[1:])
    start = (kind > 0) & (begins | ~continues)
    # names: O, then B-/I- of each type; index 0 is O, 2k-1 is B-type k, 2k is I-type k.
    names = ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]
    out = np.where(kind == 0, 0, np.where(start, 2 * kind - 1, 2 * kind))
    original = np.array([names.index(t) if t in names else -1 for t in raw_names], dtype=np.int64)
    changed = original[codes] != out
    changes = {}
    if changed.any():
        at = int(np.argmax(changed))
        sentence = int(np.searchsorted(offsets, at, side="right")) - 1
        changes = {
            "count": int(changed.sum()),
            "first": (split, sentence + 1, raw_names[codes[at]], names[out[at]]),
        }
    return out, offsets, names, changes


def _label_names(name: str, cfg: TaskConfig, found: set[str]) -> list[str]:
    if cfg.labels:
        return _bio_labels([str(label) for label in cfg.labels])
    if len(found) < 2:
        raise MtlError(
            f"task '{name}': the training split holds {len(found)} distinct tag(s) {sorted(found)}; "
            f"check task.{name}.tags_column and the file's tags"
        )
    # "O" (outside any entity) first, the entity tags sorted after it.
    return (["O"] if "O" in found else []) + sorted(found - {"O"})


def _check_scheme(name: str, cfg: TaskConfig, raw: Any, namers: dict) -> str:
    """The task's tag scheme over every split (and `labels`); mixed plain and prefixed tags are refused."""
    seen: dict[str, str] = {}  # tag -> the first split (or `labels`) it is in
    for split, ds in raw.items():
        for tag in {namers[split](v) for v in _unique_tags(ds)}:
            seen.setdefault(tag, split)
    for label in cfg.labels or []:
        seen.setdefault(str(label), "labels")
    scheme = tag_scheme(set(seen))
    if scheme == "mixed":
        plain = sorted(t for t in seen if t != "O" and _parse(t)[0] is None)[0]
        prefixed = sorted(t for t in seen if _parse(t)[0] is not None)[0]
        split = seen[plain]
        where = f"task.{name}.labels"
        if split != "labels":
            to_name = namers[split]
            row = next(i for i, tags in enumerate(raw[split]["tags"]) if any(to_name(t) == plain for t in tags))
            where = f"{split} sentence {row + 1}"
        raise MtlError(
            f"task '{name}': tag '{plain}' ({where}) has no B-/I- prefix while others do ('{prefixed}'), so its "
            f"entities cannot be read; write every entity tag as B-<type>/I-<type> (or map it with task.{name}.label_map)"
        )
    return scheme


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, list[str]]:
    """`tags` (names, or ints with ClassLabel names) -> BIO tag ids; returns the tag names in id order."""
    import datasets
    import numpy as np

    namers = {}
    for split, ds in raw.items():
        _check_lengths(name, split, ds)
        namers[split] = _tag_namer(cfg, ds)
        if None in _unique_tags(ds):
            row = next(i for i, tags in enumerate(ds["tags"]) if None in tags)
            raise MtlError(f"task '{name}': {split} sentence {row + 1} has a missing tag; fix the data")
    scheme = _check_scheme(name, cfg, raw, namers)
    converted = {split: to_bio(name, split, ds, namers[split]) for split, ds in raw.items()}
    _log_conversion(name, scheme, [c[3] for c in converted.values() if c[3]])
    flat, _, names, _ = converted["train"] if "train" in converted else next(iter(converted.values()))
    labels = _label_names(name, cfg, {names[i] for i in np.unique(flat)})
    ids = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        flat, offsets, names, _ = converted[split]
        present = np.unique(flat)
        unknown = sorted({names[i] for i in present} - set(ids), key=str)
        if unknown:
            bad = unknown[0]
            at = int(np.argmax(flat == names.index(bad)))
            row = int(np.searchsorted(offsets, at, side="right")) - 1
            raise MtlError(
                f"task '{name}': tag '{bad}' ({split} sentence {row + 1}) is not in the label set {labels}; "
                f"fix the data or set task.{name}.labels / task.{name}.label_map"
            )
        table = np.array([ids.get(n, -1) for n in names], dtype=np.int64)
        tag_ids = table[flat] if len(flat) else flat
        features = ds.features.copy()
        features["tags"] = datasets.Sequence(datasets.ClassLabel(names=labels))
        raw[split] = ds.map(
            lambda batch, rows, tag_ids=tag_ids, offsets=offsets: {
                "tags": [tag_ids[offsets[i] : offsets[i + 1]].tolist() for i in rows]
            },
            batched=True,
            with_indices=True,
            features=features,
            new_fingerprint=fingerprint(ds, "tags-bio", labels, sorted(cfg.label_map.items())),
        )
    return raw, labels


def _log_conversion(name: str, scheme: str, changes: list[dict]) -> None:
    if not changes:
        return
    count = sum(c["count"] for c in changes)
    split, sentence, before, after = changes[0]["first"]
    first = f"first: {split} sentence {sentence}, {before} -> {after}"
    if scheme == "plain":
        what = "tags without B-/I- prefixes read as BIO (a run of the same tag is one entity)"
    elif scheme == "bioes":
        what = "BIOES tags read as BIO (S-/U- -> B-, E-/L- -> I-, an I- that starts an entity -> B-)"
    else:
        what = "I- tags that start an entity (no B- before them) read as B-, as seqeval scores them"
    log.warning("task '%s': %s; %d tag(s) changed (%s)", name, what, count, first)


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
