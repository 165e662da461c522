"""The run directory: one `RunDir` value names every file a run writes; claiming and reading runs.

    <run>/config.yaml            resolved config (written first; claims the directory)
    <run>/overrides.yaml         the command-line overrides
    <run>/train.log              the log
    <run>/data_check.json        the cheap data check at start-up
    <run>/parameters.json        shared / per-task / trainable parameter counts
    <run>/metrics.jsonl          one record per (eval step, task)
    <run>/affinity.jsonl, .png   task-affinity measurements and their heatmaps
    <run>/metrics.md, .csv       the final per-task table
    <run>/results.json           {task: {metric: value}} on the test split, best checkpoint
    <run>/timing.json            training and evaluation throughput of the process
    <run>/curves.png             validation curves
    <run>/checkpoints/<name>/    see mtl_cli/checkpoints.py for what a checkpoint holds
    <run>/eval/<checkpoint>_<split>.{md,csv,json}   mtl eval, never overwritten
    <run>/debug/step-<n>/        the batch and weights of a non-finite loss

Every file is written whole or not at all (a temporary file renamed into place), through
`writing()`: a full disk or a read-only folder is one line (WriteError) that names the file and
the fix, and leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line
from mtl_cli.interrupts import deferred
from mtl_cli.locks import RunLock, try_lock


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml")
    overrides = property(lambda self: self.path / "overrides.yaml")
    log = property(lambda self: self.path / "train.log")
    data_check = property(lambda self: self.path / "data_check.json")
    parameters = property(lambda self: self.path / "parameters.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    affinity = property(lambda self: self.path / "affinity.jsonl")
    affinity_plot = property(lambda self: self.path / "affinity.png")
    table = property(lambda self: self.path / "metrics.md")  # and metrics.csv beside it
    results = property(lambda self: self.path / "results.json")
    timing = property(lambda self: self.path / "timing.json")
    curves = property(lambda self: self.path / "curves.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    eval_dir = property(lambda self: self.path / "eval")

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def debug(self, step: int) -> Path:
        return self.path / "debug" / f"step-{step:06d}"

    def eval_table(self, checkpoint: str, split: str) -> Path:
        """`eval/<checkpoint>_<split>.md`, or `_2`, `_3`... so an earlier evaluation stays."""
        if self.eval_dir.is_symlink():  # a run directory from someone else: its tables stay inside it
            raise MtlError(f"{self.eval_dir} is a symbolic link; mtl writes evaluations inside the run: remove it")
        return unique_path(self.eval_dir / f"{checkpoint}_{split}.md")

    def is_run(self) -> bool:
        return self.config.is_file()


def new_run_dir(runs_root: str, label: str) -> Path:
    now = datetime.now()
    return Path(runs_root) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{label}"


# What marks a folder as an mtl run (or one of its checkpoints) besides its config.yaml: a plain
# project folder with a config.yaml of its own is not a run.
RUN_MARKS = ("overrides.yaml", "train.log", "checkpoints", "manifest.json", "model.safetensors", "trainer_state.json")


def looks_like_run(folder: Path) -> bool:
    try:
        return (folder / "config.yaml").is_file() and any((folder / name).exists() for name in RUN_MARKS)
    except OSError:  # a name too long, a loop: not a run this could be inside
        return False


def enclosing_run(path: Path) -> Path | None:
    """The existing run (or checkpoint) folder that `path` lies inside, if any (not `path` itself)."""
    for folder in Path(os.path.abspath(path)).parents:
        if looks_like_run(folder):
            return folder
    return None


def check_run_dir_path(path: Path) -> None:
    """A new run's folder: a name the filesystem can hold, and not inside another run."""
    existing = Path(os.path.abspath(path))
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
    for part in Path(os.path.abspath(path)).parts:
        size = len(os.fsencode(part))
        if size > name_max - 4:  # room for the `_2`, `_3`... of runs started in the same second
            raise MtlError(
                f"the run directory name {part[:40]}... is {size} bytes, over this filesystem's limit of {name_max}; "
                "set a shorter hydra.run.dir"
            )
    if len(os.fsencode(os.path.abspath(path))) > path_max - 8:
        raise MtlError(f"the run directory path {str(path)[:60]}... is longer than this filesystem's limit of "
                       f"{path_max} bytes; set a shorter hydra.run.dir or runs_root")  # fmt: skip
    inside = enclosing_run(path)
    if inside is not None:
        raise MtlError(
            f"the run directory {path} would be inside the existing run {inside}; a new run needs a folder of its "
            "own: point hydra.run.dir (or runs_root) outside it"
        )


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


@dataclass
class Claim:
    """A run directory this process claimed (config.yaml written exclusively) and holds the lock on.

    `discard()` removes what this process put there (a failure before the first step), never an
    earlier run's files: only the names that were not in the folder before the claim, then the
    folders the claim created, when empty.
    """

    run: RunDir
    lock: RunLock
    before: frozenset[str]
    created: tuple[Path, ...]  # deepest first

    def release(self) -> None:
        self.lock.release()

    def discard(self) -> None:
        import shutil

        path = self.run.path
        for entry in sorted(set(os.listdir(path)) - self.before) if path.is_dir() else []:
            target = path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another run started beside it) or gone: leave it and its parents


def claim(base: Path, config_yaml: str) -> Claim:
    """Create `config.yaml` exclusively and lock the folder, so two runs never share (or overwrite) a directory.

    Runs started in the same second get `_2`, `_3`, ... appended. Refused before any folder is
    made: a directory inside an existing run, a name longer than the filesystem allows.
    """
    check_run_dir_path(base)
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        missing = [p for p in [candidate, *candidate.parents] if not p.exists()]
        candidate.mkdir(parents=True, exist_ok=True)
        lock = try_lock(candidate)
        if lock is None:  # another process trains or evaluates in it
            continue
        before = frozenset(os.listdir(candidate))
        try:
            with open(candidate / "config.yaml", "x", encoding="utf-8") as f:
                f.write(config_yaml)
        except FileExistsError:
            lock.release()
            continue
        except BaseException:
            Claim(RunDir(candidate), lock, before, tuple(missing)).discard()
            lock.release()
            raise
        return Claim(RunDir(candidate), lock, before, tuple(missing))
    raise MtlError(f"could not find a free run directory next to {base}; clean up {base.parent}")


def claim_run_dir(base: Path, config_yaml: str) -> RunDir:
    """`claim` without keeping the lock: the directory is this caller's by its config.yaml."""
    claimed = claim(base, config_yaml)
    claimed.release()
    return claimed.run


def find_latest_run(runs_root: str) -> RunDir:
    runs = [p.parent for p in Path(runs_root).glob("**/config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        raise MtlError(f"no run with checkpoints under {Path(runs_root).resolve()}; train one first (mtl train)")
    return RunDir(max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime))


# `_target_` names a callable for hydra.utils.instantiate. mtl never instantiates anything from
# a run directory's config; a config naming a target outside mtl_cli and this list is refused.
ALLOWED_TARGETS: frozenset[str] = frozenset()


# --- reading a run directory, which may come from someone else ------------------------------
# Every file mtl reads from a run directory or a checkpoint goes through these readers: a plain
# file (no FIFO or device that blocks or never ends), bounded in size, decoded, parsed, and, for
# YAML, refused before any parser expands a "billion laughs" of aliases.

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
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UnusableFile(path, f"is a {'directory' if stat.S_ISDIR(mode) else 'special file'}, not a plain file")
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


# The interpolations a config composed by mtl may hold (an unresolved one: mtl writes run configs
# resolved): mtl's data folder and mtl's own environment variables, each with literal arguments.
# Anything else could read any environment variable, or grow exponentially when resolved
# (`b1: ${b0}${b0}`, `b2: ${b1}${b1}`, ...).
SAFE_INTERPOLATION = re.compile(r"\$\{(?:mtl_data:[^${}]*|oc\.env:MTL_[A-Z_]+(?:,[^${}]*)?)\}")


def _interpolation(node: Any, where: str = "") -> tuple[str, str] | None:
    """The first (key, interpolation) that is not SAFE_INTERPOLATION, or None."""
    if isinstance(node, dict):
        items = ((f"{where}{key}.", value) for key, value in node.items())
    elif isinstance(node, list):
        items = ((f"{where}{i}.", value) for i, value in enumerate(node))
    elif isinstance(node, str) and "${" in SAFE_INTERPOLATION.sub("", node):
        rest = SAFE_INTERPOLATION.sub("", node)
        return where[:-1] or "(the document)", rest[rest.index("${") :][:40]
    else:
        return None
    for key, value in items:
        found = _interpolation(value, key)
        if found:
            return found
    return None


def load_run_config(folder: Path, trust_remote_code: bool = False) -> Any:
    """The typed config of a run directory (or of a checkpoint: each holds a copy), checked before
    anything is built from it."""
    from omegaconf import OmegaConf

    from mtl_cli.validation import to_typed

    folder = Path(folder)
    path = folder / "config.yaml"
    if not folder.is_dir():
        raise MtlError(f"run directory not found: {folder}")
    if not os.path.lexists(path):  # anything else there (a FIFO, a folder) is named by the reader
        raise MtlError(f"{folder} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    text = read_yaml_text(path)  # bounded, and refused before OmegaConf would expand an alias bomb
    try:
        raw = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except Exception as err:
        raise MtlError(
            f"{path} is unreadable ({first_line(err)}); the run directory is damaged or half-written"
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise MtlError(f"{path} is empty or not a mapping; the run directory is damaged or half-written")
    found = _interpolation(raw)
    if found is not None:
        raise MtlError(
            f"{path} holds the interpolation `{found[1]}` at {found[0]}; mtl writes run configs resolved. "
            "Refusing: use a run directory written by mtl train"
        )
    target = next(_targets(raw), None)
    if target is not None and not (target.startswith("mtl_cli.") or target in ALLOWED_TARGETS):
        raise MtlError(
            f"{path} asks to instantiate `_target_: {target}`; mtl runs no code named by a run directory. "
            "Refusing: use a run directory written by mtl train"
        )
    try:
        cfg = to_typed(OmegaConf.create(raw))
    except MtlError as err:
        raise MtlError(f"{path} is not a valid mtl config: {err}") from None
    if cfg.encoder.trust_remote_code and not trust_remote_code:
        raise MtlError(
            f"{path} sets encoder.trust_remote_code=true, which runs code from the model's repository; "
            "if you trust it, pass trust_remote_code=true on this command line"
        )
    cfg.encoder.trust_remote_code = trust_remote_code  # only ever on by this command line's choice
    return cfg


def _targets(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


# --- writing files whole --------------------------------------------------------------------


class WriteError(MtlError):
    """A file or folder mtl writes could not be written: a full disk, a read-only or locked folder.

    One line: `could not <what> <path> (<reason>); <note><fix>`, and `.then(command)` adds the
    command that carries on once the fix is made (a run's resume command).
    """

    def __init__(self, path: Path, reason: str, fix: str, what: str = "write", note: str = "") -> None:
        self.path, self.reason, self.fix, self.what, self.note = Path(path), reason, fix, what, note
        super().__init__(f"could not {what} {path} ({reason}); {note}{fix}")

    def then(self, command: str) -> MtlError:
        return MtlError(f"{self}, then continue with: {command}", self.exit_code)


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_LOCKED = {errno.EROFS, errno.EACCES, errno.EPERM}
_WORDS = {"no space left": errno.ENOSPC, "storagefull": errno.ENOSPC, "quota exceeded": errno.EDQUOT,
          "read-only file system": errno.EROFS, "permission denied": errno.EACCES}  # fmt: skip


def write_fault(err: BaseException, path: Path) -> tuple[str, str] | None:
    """(reason, fix) when `err` is a write to `path` that the disk or the folder refused; None when it is not one
    (a bug, which keeps its traceback).

    Libraries wrap the OSError: safetensors says `I/O error: ... (os error 28)`, torch's zip writer
    only `unexpected pos` or `file write failed`; then the folder's free space decides.
    """
    if isinstance(err, WriteError):
        return err.reason, err.fix
    wrapped = isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError"
    if not (isinstance(err, OSError) or wrapped):
        return None  # a TypeError, a KeyboardInterrupt, an MtlError: not the disk's doing
    folder = Path(path).parent
    text = str(err)
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)|\[Errno (\d+)\]|code: (\d+)", text)
        code = int(next(g for g in found.groups() if g)) if found else None
    if code is None:
        code = next((c for words, c in _WORDS.items() if words in text.lower()), None)
    if code is None and _nearly_full(folder):
        code = errno.ENOSPC
    if code is None and wrapped and not re.search(r"I/O error|unexpected pos|file write failed|StreamWriter", text):
        return None
    reason = os.strerror(code) if code else first_line(err)
    if code in _FULL:
        return reason, "free disk space"
    if code in _LOCKED:
        return reason, f"make {_existing(folder)} writable"
    return reason, f"free disk space and check that {_existing(folder)} is writable"


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(_existing(folder))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _undo(undo: Any) -> None:
    if callable(undo):
        undo()
    elif Path(undo).is_dir() and not Path(undo).is_symlink():
        shutil.rmtree(undo, ignore_errors=True)
    else:
        Path(undo).unlink(missing_ok=True)


@contextmanager
def writing(path: Path, *undo: Any, what: str = "write", note: str = "") -> Iterator[None]:
    """The one way mtl writes into a run: any failure inside becomes one WriteError naming `path`.

    On any exception (a signal's included) `undo` is done first: temporary files and folders
    (paths) are removed, callables are called, so a failed write leaves nothing behind.
    """
    try:
        yield
    except BaseException as err:
        # Classified before the undo frees what the write took; a WriteError from a file inside
        # (one file of several) keeps its own name unless this write says more (a checkpoint).
        fault = None if isinstance(err, WriteError) and what == "write" and not note else write_fault(err, path)
        with deferred():
            for u in undo:
                try:
                    _undo(u)
                except OSError:
                    pass  # the failure itself is the news; a read-only folder cannot be cleaned
        if fault is None:
            raise
        raise WriteError(path, *fault, what=what, note=note) from None


def write_with(path: Path, write: Any) -> None:
    """`write(tmp)` writes the file to a temporary name, which is then renamed to `path`: a reader
    never sees half a file, and a failed write leaves neither (e.g. `fig.savefig(tmp, format=...)`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):
        write(tmp)
        os.replace(tmp, path)


def write_texts(files: dict[Path, str]) -> None:
    """Several files all or nothing (a table's .md and .csv): each is written to a temporary name,
    then all are renamed into place; after a failure none of them has changed."""
    tmps = {Path(p): Path(p).with_name(Path(p).name + ".tmp") for p in files}
    with writing(next(iter(tmps)), *tmps.values()):
        for (path, tmp), text in zip(tmps.items(), files.values(), strict=True):
            with writing(path):
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
        with deferred():  # a signal waits for the renames: no set is left half replaced
            for path, tmp in tmps.items():
                os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write to a temporary file, then rename it into place: a reader never sees half a file."""
    write_texts({path: text})


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append whole lines: a failed write is cut back off, so the file stays as it was."""
    path = Path(path)
    text = "".join(json.dumps(r) + "\n" for r in records)
    size = path.stat().st_size if path.exists() else None

    def cut_back() -> None:
        if size is None:
            path.unlink(missing_ok=True)
        else:
            os.truncate(path, size)

    with writing(path, cut_back):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def check_writable(folder: Path, then: str = "") -> None:
    """Refuse in one line unless a file can really be created, written and removed in `folder`
    (the nearest existing folder above it, when it does not exist yet). `os.access` is no test:
    it trusts the permission bits, and root passes it without CAP_DAC_OVERRIDE. `then` follows
    the fix (", then ...", ", or ...")."""
    folder = _existing(folder)
    probe = folder / f".mtl-write-probe-{os.getpid()}"
    try:
        with writing(probe, probe):
            with open(probe, "xb") as f:
                f.write(b"mtl")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
    except WriteError as err:
        raise MtlError(f"cannot write in {folder} ({err.reason}); {err.fix}{then}") from None


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


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the records of steps after `last_step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    write_text(path, "".join(keep))


def unique_path(path: Path) -> Path:
    """`path`, or `path` with `_2`, `_3`... before the suffix if it exists: earlier files stay."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate
