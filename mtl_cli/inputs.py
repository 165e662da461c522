"""What `mtl predict` reads: the examples of a file or standard input, and each task's view of them.

    csv, tsv       a header line, then one example per line; every cell a string, read as written
                   (no type guessing: `007`, `NA` and `1e5` stay texts)
    jsonl / json   one JSON object per line (json: also a JSON array of objects); values keep their types
    parquet        one example per row; values keep their types (lists of words stay lists)
    text           one example per line: {"text": line}; a blank line is an example with an empty text
    conll          `word<TAB>tag` lines, a blank line between sentences: {"tokens": [...], "tags": [...]};
                   the tags are optional (a one-column file of words); `-DOCSTART-` lines separate documents

The format comes from the file's suffix unless `format=` names it (standard input is text unless
told). A file that cannot be read (missing, a folder, not UTF-8, malformed, no examples) is one
MtlError line naming the file and, where there is one, the line.

`task_view` then picks what one task reads (its text, pair or word columns, or `text_column=`),
checks every value, and reads the task's labels when the input has them (as training reads them:
`label_map`, the label set, tags as BIO), in the form the task type's `encode` takes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtl_cli import task_types
from mtl_cli.config import TaskConfig
from mtl_cli.conll import INVISIBLE  # the training reader's blank-line rule, so both split sentences alike
from mtl_cli.errors import MtlError, first_line
from mtl_cli.labels import raw_to_name
from mtl_cli.task_types.multilabel import split_labels
from mtl_cli.task_types.regression import to_float

STDIN = "-"
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "text", "conll")
_ALIASES = {"txt": "text", "ndjson": "jsonl"}
_SUFFIXES = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".text": "text", ".conll": "conll",
}  # fmt: skip


@dataclass
class Input:
    """The examples of one input, in input order, each with every column it has."""

    rows: list[dict[str, Any]]
    columns: list[str]  # the columns of any row, in the order first seen
    kind: str  # the format it was read as (FORMATS)
    name: str  # the file, or "standard input", for messages
    places: list[str]  # where each row is ("line 7", "row 3", "sentence 2 (line 5)"), for messages

    def at(self, i: int) -> str:
        return f"{self.places[i]} of {self.name}"

    @property
    def fixed(self) -> bool:
        """Plain text and CoNLL: one text per example, under a column name of the format's own."""
        return self.kind in ("text", "conll")


def input_format(path: str, fmt: str | None) -> str:
    """The format to read `path` as: `format=` when given, else the file's suffix (standard input: text).
    A path that is no file is refused first: its suffix would not matter."""
    if path != STDIN and not os.path.exists(path):
        raise MtlError(f"input file not found: {path}")
    if path != STDIN and os.path.isdir(path):
        raise MtlError(f"input={path} is a directory, not a file; point input= at a file in it")
    if fmt is not None:
        fmt = _ALIASES.get(fmt.lower(), fmt.lower())
        if fmt not in FORMATS:
            raise MtlError(f"unknown format={fmt}; use one of {', '.join(FORMATS)}")
        return fmt
    if path == STDIN:
        return "text"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise MtlError(
            f"cannot tell the format of {path} from its suffix ({suffix or 'none'}); pass format={'|'.join(FORMATS)}"
        )
    return _SUFFIXES[suffix]


def read_input(path: str, fmt: str) -> Input:
    name = "standard input" if path == STDIN else path
    data = _read_bytes(path)
    if fmt == "parquet":
        rows, places, columns = _parquet(data, name)
    else:
        text = _decode(data, name, fmt)
        if fmt in ("csv", "tsv"):
            rows, places, columns = _delimited(text, name, "\t" if fmt == "tsv" else ",")
        else:
            rows, places = {"jsonl": _jsonl, "json": _json, "text": _text, "conll": _conll}[fmt](text, name)
            columns = list(dict.fromkeys(key for row in rows for key in row))
    if not rows:
        unit = {"text": "line", "conll": "sentence"}.get(fmt, "row")
        raise MtlError(f"{name} holds no examples (read as {fmt}); give it one example per {unit}")
    return Input(rows, columns, fmt, name, places)


def _read_bytes(path: str) -> bytes:
    if path == STDIN:
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise MtlError("input=-: there is no standard input to read; pass input=FILE")
        if sys.stdin.isatty():  # else it would wait in silence
            print("mtl: reading examples from standard input, one per line (end with Ctrl-D)", file=sys.stderr)
        return stream.read()
    try:
        # A FIFO is fine (input=<(command)): it is read to its end like standard input.
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MtlError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise MtlError(f"input={path} is a directory, not a file; point input= at a file in it") from None
    except OSError as err:
        raise MtlError(f"cannot read input={path} ({err.strerror or first_line(err)})") from None


def _decode(data: bytes, name: str, fmt: str) -> str:
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise MtlError(
            f"{name} is not UTF-8 text (line {line}, byte {err.start + 1}); re-encode it, "
            "e.g. iconv -f LATIN1 -t UTF-8 (or pass format=parquet for a parquet file)"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:  # valid UTF-8, but no text file holds one: a binary file (the csv module would read it)
        line = data.count(b"\n", 0, nul) + 1
        raise MtlError(
            f"{name} holds a NUL byte (line {line}): a binary file, not {fmt} text; check input= and format="
        )
    return text


def _lines(text: str) -> list[str]:
    """The file's lines without their line ends (`\\n` or `\\r\\n`); no empty last line for the final newline.
    Not str.splitlines, which would also split a text at form feeds and Unicode line separators."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _text(text: str, name: str) -> tuple[list[dict], list[str]]:
    lines = _lines(text)
    if not any(line.strip() for line in lines):
        return [], []
    # Blank lines stay examples, so that output line i is input line i.
    return [{"text": line} for line in lines], [f"line {i}" for i in range(1, len(lines) + 1)]


def _delimited(text: str, name: str, delimiter: str) -> tuple[list[dict], list[str], list[str]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # the default 128 kB would refuse a long text
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[dict] = []
    places: list[str] = []
    header: list[str] | None = None
    try:
        while True:
            start = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                break
            if not any(f.strip() for f in fields):
                continue  # a blank line
            if header is None:
                header = _header(fields, name)
                continue
            if len(fields) != len(header):
                raise MtlError(
                    f"{name} line {start} has {len(fields)} field(s) where its header has {len(header)} "
                    f"({header}); quote fields that hold {delimiter!r}, or check format= (csv, tsv)"
                )
            rows.append(dict(zip(header, fields, strict=True)))
            places.append(f"line {start}")
    except csv.Error as err:
        kind = "tsv" if delimiter == "\t" else "csv"
        raise MtlError(
            f"{name} line {reader.line_num} cannot be read as {kind} ({err}); a field that starts with a quote must "
            'be quoted whole, with the quotes inside it doubled ("")'
        ) from None
    return rows, places, header or []


def _header(fields: list[str], name: str) -> list[str]:
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
        raise MtlError(f"{name}: its header names column(s) {repeated} more than once; give every column its own name")
    return fields


def _jsonl(text: str, name: str) -> tuple[list[dict], list[str]]:
    rows, places = [], []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        rows.append(_object(_parse_json(line, f"{name} line {lineno}"), f"{name} line {lineno}"))
        places.append(f"line {lineno}")
    return rows, places


def _json(text: str, name: str) -> tuple[list[dict], list[str]]:
    """A JSON array of objects, or JSON lines (many `.json` files are)."""
    if not text.lstrip().startswith("["):
        return _jsonl(text, name)
    value = _parse_json(text, name)
    rows = [_object(v, f"{name} item {i}") for i, v in enumerate(value, start=1)]
    return rows, [f"item {i}" for i in range(1, len(rows) + 1)]


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise MtlError(f"{where} is not valid JSON ({first_line(err)}); write one JSON object per line") from None


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise MtlError(f"{where} is a JSON {type(value).__name__}, not an object; write one object per example")
    return value


def _parquet(data: bytes, name: str) -> tuple[list[dict], list[str], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
        rows = table.to_pylist()
    except Exception as err:  # a damaged or foreign file: pyarrow raises ArrowInvalid, OSError, and others
        raise MtlError(
            f"{name} cannot be read as parquet ({first_line(err)}); check the file, or pass format="
        ) from None
    return rows, [f"row {i}" for i in range(1, len(rows) + 1)], list(table.column_names)


def _conll(text: str, name: str) -> tuple[list[dict], list[str]]:
    """As `conll.read_sentences` reads training files (a TAB, or whitespace, between fields; the first
    field the word, the last the tag), except that one field per line (words, no tags) is fine too."""
    rows: list[dict] = []
    places: list[str] = []
    tokens: list[str] = []
    tags: list[str] = []
    width = start = 0

    def flush() -> None:
        if tokens:
            rows.append({"tokens": list(tokens), **({"tags": list(tags)} if width > 1 else {})})
            places.append(f"sentence {len(rows)} (line {start})")
            tokens.clear()
            tags.clear()

    for lineno, line in enumerate(_lines(text), start=1):
        if not line.translate(INVISIBLE).strip():
            flush()
            continue
        fields = [x.strip() for x in line.split("\t")] if "\t" in line else line.split()
        width = width or len(fields)
        if len(fields) != width:
            raise MtlError(
                f"{name} line {lineno}: {len(fields)} field(s) where the file's first line has {width} "
                f"({line!r}); write one word (and its tag) per line, a blank line between sentences"
            )
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if not fields[0] or not fields[-1]:
            raise MtlError(f"{name} line {lineno}: empty word or tag ({line!r}); fix that line")
        start = start if tokens else lineno
        tokens.append(fields[0])
        if width > 1:
            tags.append(fields[-1])
    flush()
    return rows, places


# --- each task's view of the input ----------------------------------------------------------


@dataclass
class TaskView:
    """One task's examples: the columns its type's `encode` reads, and what its records need."""

    batch: dict[str, list]  # text/[text_pair]/label, or tokens/tags: encode-ready (labels: gold or dummy)
    labelled: bool
    offsets: list[list[tuple[int, int]] | None] | None = None  # token tasks: split words' character spans
    texts: list[str | None] | None = None  # token tasks: the text the words were split from (None: words given)


def task_view(
    data: Input, name: str, cfg: TaskConfig, labels: list[str] | None, tokenizer: Any,
    text_column: str | None = None, pair_column: str | None = None,
) -> TaskView:  # fmt: skip
    """What task `name` reads from `data`: its texts (or words) and, when the input has them, its labels
    in the form its type's `encode` takes; `text_column`/`pair_column` override the task's own columns."""
    if "tokens" in task_types.get(cfg.type).columns(cfg):
        return _token_view(data, name, cfg, labels, tokenizer, text_column)
    column, values = _source(data, name, cfg, text_column, words=False)
    texts = [_as_text(v, data, i, column) for i, v in enumerate(values)]
    batch: dict[str, list] = {"text": texts}
    pair = pair_column or cfg.text_pair_column
    if pair:
        if data.fixed:
            raise MtlError(
                f"task '{name}' reads sentence pairs (text_pair_column: {pair}); {data.name} has one text per "
                "example: give a csv/tsv/jsonl/parquet file with both columns"
            )
        batch["text_pair"] = [
            _as_text(v, data, i, pair) for i, v in enumerate(_column(data, pair, name, "text_pair_column"))
        ]
    if cfg.type == "seq2seq":  # references, when the input has the target column: then it is scored
        labelled = not data.fixed and cfg.target_column in data.columns
        targets = _column(data, cfg.target_column, name, None) if labelled else [""] * len(texts)
        batch["target"] = (
            [_as_text(v, data, i, cfg.target_column) for i, v in enumerate(targets)] if labelled else targets
        )
        return TaskView(batch, labelled)
    labelled = not data.fixed and cfg.label_column in data.columns
    if labelled:
        batch["label"] = GOLD[cfg.type](name, cfg, labels, _column(data, cfg.label_column, name, None), data)
    else:
        batch["label"] = [[0.0] * len(labels or []) if cfg.type == "multilabel" else 0] * len(texts)
    return TaskView(batch, labelled)


def _source(data: Input, name: str, cfg: TaskConfig, text_column: str | None, words: bool) -> tuple[str, list]:
    """(the column a task reads its input from, every row's value of it): `text_column=` when given, else
    the task's own column (a token task's word lists, another task's texts), or the other kind where
    the input lacks it (texts are split into words, words joined into a text): so a run of NER and
    classification tasks reads one file. Plain text and CoNLL: their one column, for every task."""
    if data.fixed:
        column = "text" if data.kind == "text" else "tokens"
        return column, [row[column] for row in data.rows]
    own, other = (cfg.tokens_column, cfg.text_column) if words else (cfg.text_column, cfg.tokens_column)
    column = text_column or (other if own not in data.columns and other in data.columns else own)
    return column, _column(data, column, name, "text_column")


def _token_view(
    data: Input, name: str, cfg: TaskConfig, labels: Any, tokenizer: Any, text_column: str | None
) -> TaskView:
    column, values = _source(data, name, cfg, text_column, words=True)
    words: list[list[str]] = []
    offsets: list[list[tuple[int, int]] | None] = []
    texts: list[str | None] = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            spans = split_words(tokenizer, value)
            words.append([value[s:e] for s, e in spans])
            offsets.append(spans)
            texts.append(value)
        else:
            words.append(_as_words(value, data, i, column))
            offsets.append(None)
            texts.append(None)
    tags_column = "tags" if data.kind == "conll" else cfg.tags_column
    labelled = data.kind != "text" and tags_column in data.columns
    if labelled:
        tags = gold_tags(name, cfg, labels, _column(data, tags_column, name, None), words, data, tags_column)
    else:
        tags = [[0] * len(ws) for ws in words]
    return TaskView({"tokens": words, "tags": tags}, labelled, offsets, texts)


def _column(data: Input, column: str, task: str, option: str | None) -> list:
    """Every row's value of `column`; a column the input lacks is one line naming the ones it has."""
    if column not in data.columns:
        fix = f"; pass {option}=<column>" if option else ""
        glued = [d for d in (",", "\t", ";", "|") if len(data.columns) == 1 and d in data.columns[0]]
        hint = f" (it looks {glued[0]!r}-separated: check format=)" if glued else ""
        raise MtlError(
            f"{data.name} has no column '{column}', which task '{task}' reads{hint}; its columns are {data.columns}{fix}"
        )
    for i, row in enumerate(data.rows):
        if column not in row:
            raise MtlError(f"{data.at(i)} has no '{column}', which task '{task}' reads; give every example one")
    return [row[column] for row in data.rows]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, (list, tuple)):
        return "a list of non-strings"
    return f"a {type(value).__name__}"


def _as_text(value: Any, data: Input, i: int, column: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
        return " ".join(value)  # words: a sequence task reads them as one text
    raise MtlError(f"{data.at(i)}: column '{column}' holds {_describe(value)}, not a text; store texts as strings")


def _as_words(value: Any, data: Input, i: int, column: str) -> list[str]:
    if isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
        return list(value)
    raise MtlError(f"{data.at(i)}: column '{column}' holds {_describe(value)}, not a text or a list of words (strings)")


def split_words(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """The character spans of the words of `text` as the tokenizer's own pre-tokenizer splits them
    (what transformers' token-classification pipeline sees as words); whitespace without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None:
        return [m.span() for m in re.finditer(r"\S+", text)]
    spans = []
    for _, (start, end) in pre.pre_tokenize_str(text):
        piece = text[start:end]
        lead = len(piece) - len(piece.lstrip())
        word = piece.strip()  # byte-level pre-tokenizers keep the space before a word in its span
        if word:
            spans.append((start + lead, start + lead + len(word)))
    return spans


# --- gold labels (encode-ready) -------------------------------------------------------------


def _check_label(name: str, data: Input, i: int, value: Any, column: str) -> None:
    """A labelled input labels every row (a blank or null label is refused, as training refuses it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MtlError(
            f"{data.at(i)} has no label in column '{column}' (task '{name}'); label every row, or predict only "
            "the tasks the file is labelled for (tasks=...)"
        )


def _unknown(name: str, data: Input, i: int, value: Any, labels: Any, column: str) -> MtlError:
    return MtlError(
        f"{data.at(i)}: label '{value}' (column '{column}') is not in task '{name}''s label set {labels}; "
        "fix the file, or predict only the tasks it is labelled for (tasks=...)"
    )


def _class_ids(name: str, cfg: Any, labels: list[str], values: list, data: Input) -> list[int]:
    ids = {label: i for i, label in enumerate(labels)}
    out = []
    for i, value in enumerate(values):
        _check_label(name, data, i, value, cfg.label_column)
        label = None if isinstance(value, (list, dict)) else raw_to_name(cfg, value)
        if label not in ids:
            raise _unknown(name, data, i, value, labels, cfg.label_column)
        out.append(ids[label])
    return out


def _multi_hot(name: str, cfg: Any, labels: list[str], values: list, data: Input) -> list[list[float]]:
    ids = {label: i for i, label in enumerate(labels)}
    out = []
    for i, value in enumerate(values):
        vec = [0.0] * len(labels)
        for label in split_labels(cfg, value):
            if label not in ids:
                raise _unknown(name, data, i, label, labels, cfg.label_column)
            vec[ids[label]] = 1.0
        out.append(vec)
    return out


def _numbers(name: str, cfg: Any, labels: None, values: list, data: Input) -> list[float]:
    out = []
    for i, value in enumerate(values):
        _check_label(name, data, i, value, cfg.label_column)
        number = to_float(cfg, value)
        if number is None:
            raise MtlError(
                f"{data.at(i)}: label '{value}' (column '{cfg.label_column}') is not a number, which task "
                f"'{name}' (regression) needs; fix the file, or predict only the tasks it is labelled for (tasks=...)"
            )
        out.append(number)
    return out


GOLD: dict[str, Callable[..., list]] = {"classification": _class_ids, "multilabel": _multi_hot, "regression": _numbers}


def gold_tags(
    name: str, cfg: TaskConfig, labels: list[str], values: list, words: list[list[str]], data: Input, column: str
) -> list[list[int]]:
    """Tag ids per word, the tags read as training reads them: `label_map`, then plain, BIOES and
    IOB1 tags as BIO (token_classification.to_bio). A string of tags is split on whitespace (csv)."""
    import datasets

    from mtl_cli.task_types.token_classification import tag_scheme, to_bio

    sentences = []
    for i, (tags, ws) in enumerate(zip(values, words, strict=True)):
        tags = tags.split() if isinstance(tags, str) else tags
        if not (isinstance(tags, (list, tuple)) and all(isinstance(t, (str, int)) for t in tags)):
            raise MtlError(f"{data.at(i)}: column '{column}' holds {_describe(tags)}, not the tags of task '{name}'")
        if len(tags) != len(ws):
            raise MtlError(
                f"{data.at(i)} has {len(ws)} words but {len(tags)} tags (column '{column}'); give one tag per word"
            )
        sentences.append([str(t) for t in tags])

    def to_name(tag: Any) -> str:
        return raw_to_name(cfg, tag)

    if tag_scheme({to_name(t) for tags in sentences for t in tags}) == "mixed":
        raise MtlError(f"{data.name}: column '{column}' mixes tags with and without B-/I- prefixes; write BIO tags")
    features = datasets.Features({"tags": datasets.Sequence(datasets.Value("string"))})
    ds = datasets.Dataset.from_dict({"tags": sentences}, features=features)
    flat, offsets, names, _ = to_bio(name, "input", ds, to_name)
    ids = {label: i for i, label in enumerate(labels)}
    tag_ids = np.array([ids.get(n, -1) for n in names], dtype=np.int64)[flat]
    if (tag_ids < 0).any():
        at = int(np.argmax(tag_ids < 0))
        row = int(np.searchsorted(offsets, at, side="right")) - 1
        raise _unknown(name, data, row, names[flat[at]], labels, column)
    return [tag_ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(sentences))]
