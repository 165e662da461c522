"""Tasks: load each task's splits (local files or the Hub), check them, normalise the labels.

Every task comes out as a `datasets.DatasetDict` with splits train/validation/test whose
columns are named by role (`text`, `text_pair`, `label`, `tokens`, `tags`: which ones depends on
the task type, see `mtl_cli/task_types`). `datasets` caches the parsed files, so the next run
with the same files reads Arrow tables instead of re-parsing.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mtl_cli import task_types
from mtl_cli.config import SPLITS, MtlConfig, TaskConfig, held_out
from mtl_cli.conll import load_conll
from mtl_cli.errors import MtlError, first_line
from mtl_cli.fingerprints import content_config_name, file_digest, fingerprint
from mtl_cli.hub import hub_offline_mode, hub_reachable

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "text": "text"}
_TEXT_ROLES = ("text", "text_pair")


@dataclass
class Task:
    name: str
    cfg: TaskConfig
    labels: list[str] | None  # label names in id order; None for regression and MLM
    splits: Any  # datasets.DatasetDict, columns named by role
    ttype: ModuleType  # its task type (mtl_cli/task_types): encode, collate, head, loss, metrics

    def sizes(self) -> dict[str, int]:
        return {split: len(self.splits[split]) for split in self.splits}


def load_tasks(cfg: MtlConfig, tasks: dict[str, TaskConfig] | None = None) -> dict[str, Task]:
    """Every task of the run (or the given subset of its task configs), in order."""
    return {name: load_task(name, tcfg, cfg.data_root) for name, tcfg in (tasks or cfg.task).items()}


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


def load_task(name: str, cfg: TaskConfig, data_root: str | None) -> Task:
    import datasets
    import pyarrow

    datasets.disable_progress_bars()
    # datasets logs a failed parse before raising it; the raised error is reported instead.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    ttype = task_types.get(cfg.type)
    raw = _load_hub(name, cfg) if cfg.source == "hub" else _load_local(name, cfg, data_root)
    if "train" not in raw:
        raise MtlError(f"task '{name}' has no train split; set task.{name}.files.train")
    raw = _select_columns(name, ttype.columns(cfg), raw)
    raw = _clean_texts(name, raw)
    try:
        raw, labels = ttype.prepare(name, cfg, raw)
    except pyarrow.ArrowException as err:  # a column Arrow cannot compute on: values of mixed or nested kinds
        raise MtlError(
            f"task '{name}': its columns {list(ttype.columns(cfg).values())} hold values of mixed or nested kinds "
            f"({first_line(err)}); make each column one kind (texts strings, labels names or numbers)"
        ) from None
    splits = _complete_splits(name, cfg, raw)
    for split in splits:
        if len(splits[split]) == 0:
            raise MtlError(f"task '{name}': the {split} split is empty; add examples or check `task.{name}.files`")
    return Task(name=name, cfg=cfg, labels=labels, splits=splits, ttype=ttype)


def resolve_path(path: str, cfg: TaskConfig, data_root: str | None) -> Path:
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    base = cfg.data_dir or data_root
    return (Path(base) / p) if base else p.resolve()


def _load_local(name: str, cfg: TaskConfig, data_root: str | None):
    import datasets

    if cfg.format == "parallel":
        return _load_parallel(name, cfg, data_root)
    files: dict[str, str] = {}
    for split, rel in cfg.files.items():
        path = resolve_path(rel, cfg, data_root)
        _check_data_file(name, split, path, rel, cfg, data_root)
        if not os.access(path, os.R_OK):
            raise MtlError(f"task '{name}': {split} file is not readable: {path}; fix its permissions")
        if cfg.format != "parquet" and not _has_examples(
            path, skip=1 if cfg.header and cfg.format in ("csv", "tsv") else 0
        ):
            raise MtlError(
                f"task '{name}': the {split} split is empty ({path} has no examples); add examples or drop task.{name}.files.{split}"
            )
        files[split] = str(path.resolve())
    if cfg.format == "conll":
        return load_conll(name, files, encoding=cfg.encoding)
    kwargs: dict[str, Any] = {}
    if cfg.format in ("csv", "tsv", "text"):
        # str(): `datasets` hashes these kwargs into its cache key, and an enum member hashes apart from its name
        kwargs = {"encoding": cfg.encoding, "encoding_errors": cfg.encoding_errors}
    elif cfg.format in ("json", "jsonl"):
        kwargs = {"encoding": cfg.encoding}
    if cfg.format in ("csv", "tsv"):
        kwargs = {
            "delimiter": cfg.delimiter or ("\t" if cfg.format == "tsv" else ","),
            "header": 0 if cfg.header else None,
            "quoting": csv.QUOTE_MINIMAL if cfg.quoting else csv.QUOTE_NONE,
            # Texts such as "NA" or "null" are reviews, not missing values.
            "na_filter": False,
            **kwargs,
        }
        if cfg.column_names:
            kwargs["column_names"] = list(cfg.column_names)
    try:
        # One call per split: column types are inferred per file, so a validation file with 3.5
        # next to an all-integer train file is not forced into integers. `datasets` keys its cache
        # on a file's path, size and modification time; the config name adds the file's content
        # hash, so a file replaced by another of the same size and time is parsed again.
        return datasets.DatasetDict(
            {
                split: datasets.load_dataset(
                    _BUILDERS[cfg.format], content_config_name(file_digest(path)), data_files={split: path}, **kwargs
                )[split]
                for split, path in files.items()
            }
        )
    except Exception as err:  # pandas/pyarrow parse errors come in many types, wrapped by datasets
        root = _root_cause(err)
        if isinstance(root, UnicodeDecodeError) or "invalid utf8" in str(root).lower():
            raise MtlError(
                f"task '{name}': a file is not valid {cfg.encoding.upper()} ({', '.join(files.values())}); re-encode it "
                f"(iconv -t UTF-8), set task.{name}.encoding (e.g. cp1252) or task.{name}.encoding_errors=replace"
            ) from None
        first = first_line(root)
        raise MtlError(
            f"task '{name}': could not read its {cfg.format} files ({first}); check `task.{name}.format`, "
            f"`.delimiter`, `.header` and `.quoting`"
        ) from None


def _load_parallel(name: str, cfg: TaskConfig, data_root: str | None):
    """format: parallel: each split is two line-aligned files, `<file>.<source_language>` (the text)
    and `<file>.<target_language>` (the target), one sentence per line."""
    import datasets

    if not cfg.source_language or not cfg.target_language:
        raise MtlError(
            f"task '{name}': format: parallel reads <file>.<source_language> and <file>.<target_language>; set "
            f"task.{name}.source_language and task.{name}.target_language (e.g. de and en)"
        )
    out = {}
    for split, rel in cfg.files.items():
        sides: dict[str, list[str]] = {}
        for column, language in ((cfg.text_column, cfg.source_language), (cfg.target_column, cfg.target_language)):
            path = resolve_path(f"{rel}.{language}", cfg, data_root)
            _check_data_file(name, split, path, f"{rel}.{language}", cfg, data_root)
            try:
                sides[column] = path.read_text(encoding=cfg.encoding, errors=cfg.encoding_errors).splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise MtlError(
                    f"task '{name}': cannot read {path} ({first_line(err)}); check the file or task.{name}.encoding"
                ) from None
        source, target = sides.values()
        if len(source) != len(target):
            raise MtlError(
                f"task '{name}': the {split} files are not line-aligned ({len(source)} source lines, {len(target)} "
                f"target lines in {rel}.{cfg.source_language} / .{cfg.target_language}); each line must translate the other"
            )
        if not source:
            raise MtlError(f"task '{name}': the {split} split is empty ({rel}.{cfg.source_language} has no lines)")
        out[split] = datasets.Dataset.from_dict(sides)
    return datasets.DatasetDict(out)


def _carve_by_text(train, count: int, seed: int) -> tuple[Any, Any]:
    """(rest, carved): whole groups of examples with the same source text go to one side, so that a
    source with several references never lands in both (a leak for translation)."""
    import numpy as np

    texts = train["text"]
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    order = np.random.default_rng(seed).permutation(len(groups))
    keys = list(groups)
    carved: list[int] = []
    for g in order:
        if len(carved) >= count:
            break
        carved += groups[keys[g]]
    chosen = set(carved)
    return train.select([i for i in range(len(texts)) if i not in chosen]), train.select(sorted(carved))


def _check_data_file(name: str, split: str, path: Path, rel: str, cfg: TaskConfig, data_root: str | None) -> None:
    """A data path that is not a readable regular file, named by what it really is."""
    at = f"task.{name}.files.{split}"
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise MtlError(
                f"task '{name}': {split} file {path} is a symbolic link loop; fix the link or set {at}"
            ) from None
        if err.errno == errno.EACCES:
            raise MtlError(
                f"task '{name}': {split} file {path} cannot be reached (permission denied on a folder above it); "
                "fix the folders' permissions"
            ) from None
        if err.errno == errno.ENOTDIR:
            raise MtlError(
                f"task '{name}': {split} file {path}: a part of that path is a file, not a folder; set {at}"
            ) from None
        if os.path.islink(path):
            raise MtlError(
                f"task '{name}': {split} file {path} is a broken symbolic link (to {os.readlink(path)}); fix it or set {at}"
            ) from None
        hint = (
            "pass data_root=<folder> (or export MTL_DATA_ROOT)"
            if not (cfg.data_dir or data_root or Path(rel).is_absolute())
            else f"check data_root or set {at}"
        )
        raise MtlError(f"task '{name}': {split} file not found: {path}; {hint}") from None
    if stat.S_ISDIR(st.st_mode):
        raise MtlError(f"task '{name}': {split} file {path} is a directory, not a file; set {at} to a file in it")
    if not stat.S_ISREG(st.st_mode):
        raise MtlError(
            f"task '{name}': {split} file {path} is not a regular file (a pipe, socket or device); "
            f"copy the data into a file and set {at}"
        )


def _has_examples(path: Path, skip: int) -> bool:
    """True when the file has a non-blank line after `skip` header lines (reads only that far)."""
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= skip and line.strip():
                return True
    return False


def _root_cause(err: BaseException) -> BaseException:
    nxt = err.__cause__ or err.__context__
    while nxt is not None:
        err, nxt = nxt, nxt.__cause__ or nxt.__context__
    return err


def _load_hub(name: str, cfg: TaskConfig):
    import datasets

    local_hint = {
        "yelp": "task=sentences/yelp data_root=../shared/data",
        "imdb": "task=sentences/imdb data_root=../shared/data",
        "emotion": "task=emotion data_root=../shared/data",
        "wnut17": "task=wnut17 data_root=../shared/data",
    }.get(name, f"task.{name}.source=local task.{name}.files.train=<file>")
    if not hub_offline_mode() and not hub_reachable():
        raise MtlError(
            f"task '{name}' loads '{cfg.hub_name}' from the Hugging Face Hub, which is unreachable; "
            f"use local files instead ({local_hint}) or set HF_DATASETS_OFFLINE=1 to use a cached copy"
        )
    try:
        loaded = datasets.load_dataset(cfg.hub_name, cfg.hub_config, revision=cfg.hub_revision)
        # Hub sets may carry extra splits (imdb's "unsupervised", labelled -1): keep ours only.
        return datasets.DatasetDict({split: loaded[split] for split in SPLITS if split in loaded})
    except Exception as err:
        first = first_line(err)
        raise MtlError(
            f"task '{name}': could not load '{cfg.hub_name}' from the Hub ({first}); use local files instead ({local_hint})"
        ) from None


def _select_columns(name: str, roles: dict[str, str], raw):
    """Keep the columns the task type reads, renamed to their roles."""
    import datasets

    out = {}
    for split, ds in raw.items():
        for role, column in roles.items():
            if column not in ds.column_names:
                glued = [d for d in (",", "\t", ";", "|") if len(ds.column_names) == 1 and d in ds.column_names[0]]
                if glued:  # one column whose name holds a separator: the file uses another delimiter
                    raise MtlError(
                        f"task '{name}': the {split} file has one column {ds.column_names[0]!r}: it looks "
                        f"{glued[0]!r}-separated; set task.{name}.delimiter={glued[0]!r} (or the matching format)"
                    )
                raise MtlError(
                    f"task '{name}': the {split} data has no column '{column}' (columns: {ds.column_names}); "
                    f"set task.{name}.{role}_column=<column> or task.{name}.column_names=[...]"
                )
        for role in ("text", "text_pair", "tokens"):
            if role in roles:
                _check_text_column(name, split, role, roles[role], ds)
        ds = ds.select_columns(list(roles.values()))
        out[split] = (
            ds.rename_columns({c: r for r, c in roles.items() if c != r})
            if any(c != r for r, c in roles.items())
            else ds
        )
    return datasets.DatasetDict(out)


def _check_text_column(name: str, split: str, role: str, column: str, ds) -> None:
    """Texts must be strings (tokens: lists of strings): a parquet or JSON file may hold numbers or lists."""
    import datasets

    feature = ds.features[column]
    if role == "tokens":
        inner = getattr(feature, "feature", None)
        ok = isinstance(feature, datasets.Sequence | datasets.LargeList | list) and _is_text(inner)
        if isinstance(feature, list):
            ok = len(feature) == 1 and _is_text(feature[0])
        wanted, fix = "lists of words (strings)", f"set task.{name}.tokens_column to the column of word lists"
    else:
        ok = _is_text(feature)
        wanted, fix = "strings", f"set task.{name}.{role}_column to the column that holds the texts"
    if not ok:
        raise MtlError(
            f"task '{name}': column '{column}' of the {split} data holds {_describe_feature(feature)}, not {wanted}; "
            f"{fix}, or store the values as strings"
        )


def _is_text(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null")


def _describe_feature(feature) -> str:
    import datasets

    if isinstance(feature, datasets.Value):
        if _is_text(feature):
            return "strings"
        kind = "numbers" if feature.dtype.startswith(("int", "uint", "float", "double", "decimal")) else "values"
        return f"{kind} ({feature.dtype})"
    if isinstance(feature, datasets.ClassLabel):
        return "class ids"
    if isinstance(feature, datasets.Sequence | datasets.LargeList | list):
        inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
        return f"lists of {_describe_feature(inner) if inner is not None else 'values'}"
    if isinstance(feature, dict):
        return "records (nested fields)"
    return type(feature).__name__


def _clean_texts(name: str, raw):
    """Missing texts become empty strings; bytes that are not UTF-8 are reported here, not deep in a map."""
    roles = [r for r in _TEXT_ROLES if r in raw["train"].column_names]
    if not roles:
        return raw
    for split, ds in raw.items():
        try:
            raw[split] = ds.map(
                lambda batch: {r: ["" if t is None else t for t in batch[r]] for r in roles},
                batched=True,
                new_fingerprint=fingerprint(ds, "clean", roles),
            )
        except UnicodeDecodeError:
            raise MtlError(
                f"task '{name}': the {split} data is not valid UTF-8; re-encode the file, e.g. iconv -t UTF-8"
            ) from None
    return raw


def _complete_splits(name: str, cfg: TaskConfig, raw):
    """Carve missing validation/test splits from train, stratified by label and seeded."""
    import datasets

    out = dict(raw)
    train = out["train"]
    n = len(train)
    for split, size in (("test", cfg.test_size), ("validation", cfg.validation_size)):
        if split in out:
            continue
        count = int(size) if size >= 1 else max(1, round(size * n))
        if count >= len(train):
            raise MtlError(
                f"task '{name}': cannot carve {count} {split} examples from {len(train)} training examples; "
                f"lower task.{name}.{split}_size or add a {split} file"
            )
        if getattr(task_types.get(cfg.type), "SPLIT_BY_TEXT", False):
            train, out[split] = _carve_by_text(train, count, cfg.split_seed)
            continue
        parts = None
        if isinstance(train.features.get("label"), datasets.ClassLabel):
            try:
                parts = train.train_test_split(test_size=count, seed=cfg.split_seed, stratify_by_column="label")
            except ValueError:  # a label too rare to stratify: fall back to a plain seeded split
                pass
        if parts is None:
            parts = train.train_test_split(test_size=count, seed=cfg.split_seed)
        train, out[split] = parts["train"], parts["test"]
    # Capped after carving, so capped and uncapped runs are scored on the same held-out examples.
    for key in ("max_train_examples", "max_eval_examples"):
        cap = getattr(cfg, key)
        if cap is not None and cap < 1:
            raise MtlError(
                f"task '{name}': `task.{name}.{key}={cap}` would leave a split empty; set it to 1 or more, or null"
            )
    if cfg.max_train_examples:
        train = train.shuffle(seed=cfg.split_seed).select(range(min(cfg.max_train_examples, len(train))))
    out["train"] = train
    if cfg.max_eval_examples:
        for split in held_out(out):
            ds = out[split]
            out[split] = ds.shuffle(seed=cfg.split_seed).select(range(min(cfg.max_eval_examples, len(ds))))
    return datasets.DatasetDict({split: out[split] for split in ["train", *held_out(out)]})
