"""Exclusive locks on output folders, and worker processes that die with their parent.

A run folder and a sweep folder each hold a ``.lock`` file while a dipnet process works in
them. The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on that file: the kernel releases it when
the process dies, however it dies (``kill -9`` included), so a stale lock cannot block anyone.
A second process gets one line naming the holder's pid instead of racing the first for the
checkpoint folder. The holder removes the file when it is done; the inode check in `acquire`
makes that removal safe against a process that opened the old file just before.

Sweep workers call `die_with_parent` first: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, and
everywhere a watchdog thread that exits when the parent pid changes, so ``kill -9`` of
``dipnet compare --jobs N`` does not leave N trainers behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
import time
from pathlib import Path

from dipnet.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are then not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive lock on one folder (``folder/.lock``); use `acquire`, then `release`."""

    def __init__(self, folder: Path, fd: int | None, created: list[Path]) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd = fd
        self._created = created  # folders this lock created (removed again if left empty)

    @classmethod
    def acquire(cls, folder: str | os.PathLike, *, wait: bool = False, option: str = "--out",
                waiting_message: str | None = None) -> "FolderLock":
        """Lock ``folder`` (created with its parents if missing) for this process.

        Args:
            folder: the run or sweep folder.
            wait: block until the holder lets go (instead of refusing at once).
            option: the command-line option that chose the folder, for the message.
            waiting_message: printed to stderr once if ``wait`` has to wait.
        Returns:
            The held lock.
        Raises:
            UserError: another process holds it (and ``wait`` is False): names its pid.
            OSError: the folder cannot be created or written.
        """
        folder = Path(folder)
        created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return cls(folder, None, created)
        path = folder / LOCK_NAME
        announced = False
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = _read_pid(fd)
                if not wait:
                    os.close(fd)
                    raise UserError(f"{folder} is in use by another dipnet process (pid "
                                    f"{holder}); wait for it or choose another {option}.") from None
                if waiting_message and not announced:
                    print(f"dipnet: {waiting_message} (pid {holder})", file=sys.stderr)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder may have removed (or replaced) the file between our open and flock:
            # then we hold a lock on a file nobody else will ever open, so start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(folder, fd, created)

    def release(self, tidy: bool = False) -> None:
        """Let go (removing the lock file). ``tidy``: also remove the folders that `acquire`
        created, if they are still empty (a plan refused after locking leaves no trace)."""
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)  # closing the last descriptor drops the flock
                self._fd = None
        if tidy:
            for p in reversed(self._created):
                try:
                    p.rmdir()
                except OSError:
                    break  # not empty (or not ours to remove): leave it and its parents

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


# ---------------------------------------------------------------------- worker processes
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this (worker) process exit when ``parent_pid`` dies.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Everywhere: a
    daemon thread checks ``os.getppid()`` every ``poll_s`` seconds (the parent may also have
    died before this ran, which prctl would not notice).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="dipnet-parent-watch", daemon=True).start()
