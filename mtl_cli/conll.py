"""CoNLL-style files for token classification: one `token<TAB>tag` line per word, a blank line between sentences.

Lines that are empty or whitespace only (WNUT-17's train file separates sentences with a lone TAB;
its dev file ends with a line holding a lone byte-order mark) end a sentence. Lines without a TAB are split on whitespace, so space-separated CoNLL-2003 files
(`token POS chunk tag`) read too: the first field is the token, the last one the tag, and every
line of a file must have as many fields as its first one. `-DOCSTART-` lines are document
separators, not words.

Each split is built with `datasets.Dataset.from_generator`, which caches the parsed Arrow table;
the file's content hash is part of the cache key, so an edited file is re-read (even one whose
size and modification time are as before).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import file_digest

# Zero-width characters and stray byte-order marks: a line holding only these (and whitespace) is blank.
# WNUT-17's dev.conll ends with a line holding a lone BOM.
INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060"))


class ConllFormatError(Exception):
    """Raised inside the generator; `load_conll` turns it into an MtlError naming the task."""

    def __init__(self, message: str, decoding: bool = False):
        super().__init__(message)
        self.decoding = decoding


def read_sentences(path: str, encoding: str = "utf-8") -> Iterator[dict[str, list[str]]]:
    """Yields {"tokens": [...], "tags": [...]} per sentence of one CoNLL file."""
    tokens: list[str] = []
    tags: list[str] = []
    width = None  # the field count of the file's first word line
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise ConllFormatError(
                    f"{path} is not valid {encoding.upper()} (line {lineno}, byte {err.start + 1}); re-encode it, "
                    f"e.g. iconv -f LATIN1 -t UTF-8 {os.path.basename(path)} > fixed.conll",
                    decoding=True,
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if not line.translate(INVISIBLE).strip():
                if tokens:
                    yield {"tokens": tokens, "tags": tags}
                    tokens, tags = [], []
                continue
            fields = [x.strip() for x in line.split("\t")] if "\t" in line else line.split()
            if width is None:
                width = len(fields)
                if width < 2:
                    raise ConllFormatError(
                        f"{path} line {lineno}: expected `token<TAB>tag`, got one field ({line!r}); "
                        "write one token and its tag per line, a blank line between sentences"
                    )
            if len(fields) != width:
                raise ConllFormatError(
                    f"{path} line {lineno}: {len(fields)} field(s) where the file's first line has {width} "
                    f"({line!r}); fix that line: one token and its tag per line, a blank line between sentences"
                )
            if fields[0] == "-DOCSTART-":
                if tokens:
                    yield {"tokens": tokens, "tags": tags}
                    tokens, tags = [], []
                continue
            if not fields[0] or not fields[-1]:
                raise ConllFormatError(
                    f"{path} line {lineno}: empty token or tag ({line!r}); fix that line: one token and its "
                    "tag per line, a blank line between sentences"
                )
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        yield {"tokens": tokens, "tags": tags}


def _generate(path: str, sha256: str, encoding: str) -> Iterator[dict[str, list[str]]]:
    # sha256 is unused here: it is in gen_kwargs only to key the datasets cache on the file's content.
    yield from read_sentences(path, encoding)


def load_conll(name: str, files: dict[str, str], encoding: str = "utf-8"):
    """split -> absolute file path  ->  DatasetDict with columns `tokens` and `tags` (lists of strings)."""
    import datasets

    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("string"))}
    )
    out = {}
    for split, path in files.items():
        try:
            out[split] = datasets.Dataset.from_generator(
                _generate,
                features=features,
                gen_kwargs={"path": path, "sha256": file_digest(path), "encoding": encoding},
            )
        except Exception as err:
            cause = _find_cause(err)
            if cause is None:
                raise
            hint = f" or set task.{name}.encoding (e.g. cp1252)" if getattr(cause, "decoding", False) else ""
            raise MtlError(f"task '{name}': {cause}{hint}") from None
    return datasets.DatasetDict(out)


def _find_cause(err: BaseException) -> BaseException | None:
    """The ConllFormatError that `datasets` wrapped (DatasetGenerationError), if any."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ConllFormatError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
