"""Checked readers for the files of a run directory, which may come from someone else.

Every file mtl reads from a run directory or a checkpoint goes through these: a plain file (no
FIFO or device that blocks or never ends), bounded in size, decoded, parsed, and, for YAML,
refused before any parser expands a "billion laughs" of aliases. A file that cannot be used is
one line (`UnusableFile`, an MtlError) naming it and why.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line

MAX_YAML_BYTES = 1 << 20  # an mtl config.yaml is a few kB
MAX_JSON_BYTES = 64 << 20  # labels, trainer state, manifests, results: kB; metrics.jsonl of long runs: MB
MAX_YAML_ALIASES = 100  # mtl writes none
MAX_YAML_NODES = 100_000  # nodes with every alias expanded; an mtl config has a few hundred


class UnusableFile(MtlError):
    """A file of a run directory that cannot be used; `reason` says why, without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}; the run directory is damaged, or was not written by mtl")
        self.path, self.reason = path, reason


def read_limited(path: Path, limit: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of the plain file `path`, refused when larger than `limit` (or, without
    `follow_symlinks`, when it is a symbolic link)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnusableFile(path, "does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnusableFile(path, "is a symbolic link (or a loop of them), not a plain file") from None
        raise UnusableFile(path, f"cannot be read ({err.strerror or first_line(err)})") from None
    mode = os.fstat(fd).st_mode  # before fdopen, which refuses a directory with its own error
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnusableFile(path, f"is a {'directory' if stat.S_ISDIR(mode) else 'special file'}, not a plain file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnusableFile(path, f"is larger than {limit} bytes, far more than mtl writes there")
    return data


def read_text(path: Path, limit: int, follow_symlinks: bool = True) -> str:
    try:
        return read_limited(path, limit, follow_symlinks).decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnusableFile(path, f"is not UTF-8 text (byte {err.start})") from None


def read_json(path: Path, limit: int = MAX_JSON_BYTES, follow_symlinks: bool = True) -> Any:
    """The JSON value of `path` (checked reader: see above); its type is the caller's to check."""
    text = read_text(path, limit, follow_symlinks)
    try:
        return json.loads(text)
    except ValueError as err:
        raise UnusableFile(path, f"is not valid JSON ({first_line(err)})") from None
    except RecursionError:
        raise UnusableFile(path, "is not valid JSON (nested too deeply)") from None


def read_yaml_text(path: Path, limit: int = MAX_YAML_BYTES) -> str:
    """The text of the YAML file `path`, refused when its aliases would expand it beyond
    MAX_YAML_NODES nodes (or it has more than MAX_YAML_ALIASES), before any parser expands them."""
    text = read_text(path, limit)
    problem = yaml_bomb_problem(text)
    if problem:
        raise UnusableFile(path, problem)
    return text


def read_yaml(path: Path, limit: int = MAX_YAML_BYTES) -> Any:
    """The YAML value of `path` (plain YAML, as `yaml.safe_load` reads it; checked reader: see above)."""
    import yaml

    text = read_yaml_text(path, limit)
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise UnusableFile(path, f"is not valid YAML ({first_line(err)})") from None


def yaml_bomb_problem(text: str) -> str | None:
    """Why `text` would blow up when parsed (too many aliases, or too many nodes once expanded), or None.

    Streams the parser's events (linear in the text, nothing expanded); only a document with
    aliases is composed, and its expanded size is counted per node once (memoised), so a bomb is
    measured in the time it takes to read it, never expanded. A malformed document is left to
    the parser that reads it next, which names its line.
    """
    import yaml

    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    if aliases > MAX_YAML_ALIASES:
        return f"uses {aliases} YAML aliases (at most {MAX_YAML_ALIASES}; mtl writes none): refusing an alias bomb"
    if not aliases:
        return None
    try:
        roots = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return None
    sizes: dict[int, int] = {}

    def expanded(node: Any) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise ValueError("an alias refers to the node that holds it")
            return sizes[key]
        sizes[key] = -1  # in progress: meeting it again is a cycle
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(expanded(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(expanded(k) + expanded(v) for k, v in node.value)
        sizes[key] = total = min(total, MAX_YAML_NODES + 1)
        return total

    try:
        nodes = sum(expanded(root) for root in roots if root is not None)
    except (ValueError, RecursionError) as err:
        return f"cannot be expanded ({first_line(err)}): refusing a possible alias bomb"
    if nodes > MAX_YAML_NODES:
        return f"expands its YAML aliases to more than {MAX_YAML_NODES} nodes: refusing an alias bomb"
    return None


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSONL file (a line cut short by a kill, or one that is not a JSON
    object, is skipped); checked reader: a plain file, bounded in size."""
    if not path.is_file():
        return []
    out = []
    for line in read_text(path, MAX_JSON_BYTES).splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
