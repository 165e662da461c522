"""Writing files whole: every file and folder mtl writes into a run goes through `writing()`.

A file is written to a temporary name and renamed into place, so a reader never sees half of
it; a full disk or a read-only folder is one line (`WriteError`, an MtlError) naming the file
and the fix, and leaves no temporary file behind. In a distributed run only rank 0 writes: on
the other ranks every function here returns without touching the disk (`distributed.writes()`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtl_cli.distributed import writes
from mtl_cli.errors import MtlError, first_line
from mtl_cli.interrupts import deferred


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
    if not writes():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):
        write(tmp)
        os.replace(tmp, path)


def write_texts(files: dict[Path, str]) -> None:
    """Several files all or nothing (a table's .md and .csv): each is written to a temporary name,
    then all are renamed into place; after a failure none of them has changed."""
    if not writes():
        return
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
    if not writes():
        return
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
    if not writes():
        return
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


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the records of steps after `last_step` (a resumed run writes them again)."""
    if not writes():
        return
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
