"""One writer per run: an OS lock on the run directory while a process trains, resumes or evaluates it.

The lock is `fcntl.flock` on the directory itself (opened read-only), so no lock file joins the
run's files, it works on a read-only folder, and it dies with the process that holds it: a
`kill -9` leaves no stale lock. A second process is refused at once, before it loads or writes
anything, with one line naming the holder's pid (read from /proc/locks by the directory's
device and inode; "another process" where that is not available).

    with run_lock(path):           # MtlError when another process holds it
        ...
    lock = try_lock(path)          # a RunLock, or None when another process holds it
    lock.release()

Locks are per open file: a second `run_lock` on the same folder in the same process is refused
as well, until the first is released.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mtl_cli.errors import MtlError

try:
    import fcntl
except ImportError:  # not POSIX: no locking (mtl's runs are not shared between processes there)
    fcntl = None  # type: ignore[assignment]

PROC_LOCKS = Path("/proc/locks")


class RunLock:
    """An exclusive lock on one folder, held until `release()` (or the process ends)."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(path: Path) -> RunLock | None:
    """Lock `path` (a folder) exclusively; None when another process (or open file) holds the lock.

    A folder that cannot be opened (missing, not a folder) gets a lock that holds nothing: the
    caller's own checks then say what is wrong with it.
    """
    path = Path(path)
    if fcntl is None:
        return RunLock(path, None)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return RunLock(path, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        return RunLock(path, None)  # a filesystem without flock support: run unlocked, as before
    return RunLock(path, fd)


def run_lock(path: Path, doing: str = "use") -> RunLock:
    """The lock on `path`, or MtlError naming the process that holds it.

    `doing` says what this process wanted to do with the run ("resume", "evaluate", "train in").
    """
    lock = try_lock(path)
    if lock is None:
        raise MtlError(busy_message(Path(path), doing))
    return lock


def busy_message(path: Path, doing: str) -> str:
    pid = holder_pid(path)
    who = f"another mtl process (pid {pid})" if pid is not None else "another process"
    stop = f" or stop it (kill {pid})" if pid is not None else ""
    return (
        f"cannot {doing} {path}: {who} is training or evaluating it (one writer per run); "
        f"wait for it to finish{stop}, then run this again"
    )


def holder_pid(path: Path) -> int | None:
    """The pid holding a flock on `path`, from /proc/locks (None when unknown or not visible)."""
    try:
        st = os.stat(path)
        lines = PROC_LOCKS.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    # "12: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"; waiters' lines carry "->" after the id.
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == wanted and pid > 0:
            return pid
    return None
