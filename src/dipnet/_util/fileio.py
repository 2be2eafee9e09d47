"""Atomic file writes shared by every part of dipnet that writes results or configs.

Every write goes to a temporary file in the target's folder and is renamed into place once
complete, so a reader never sees half a file and a failed write (a full disk) leaves the old
file and no temporary one. Every failure is an ``OSError`` naming the path: safetensors' and
torch's own write errors (a ``SafetensorError``, torch's ``inline_container`` RuntimeError) are
turned into one, with errno ENOSPC when the disk is full, so the CLI reports it in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` to write, which replaces ``path`` (os.replace) when the
    block ends without an error and is deleted when it raises.

    For writers that take a file name (safetensors, ``torch.save``, ``savefig``)::

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, tmp)

    A reader never sees a half-written file, and a crash leaves the old file in place. Parent
    folders are created; the file is made world-readable (mkstemp makes it 0600).

    Args:
        path: the file to write.
        suffix: the temporary file's ending (``".tmp.png"`` where the writer picks the format
            from it).
    Raises:
        OSError: if the folder cannot be created or written; it always names a path (a failed
            write, e.g. "No space left on device", names ``path``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as err:
        _raise_with_path(err, path.parent)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            _raise_with_path(err, path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same folder, then os.replace.

    A reader never sees a half-written file, and a crash leaves the old file in place.
    Parent folders are created.

    Raises:
        OSError: if the folder cannot be created or written; it always names a path (a failed
            write, e.g. "No space left on device", names ``path``).
    """
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(Path(path), write, "writing text")


def _atomic_write(path: Path, write: Callable[[str], None], what: str) -> None:
    """``write(temp path)`` inside `atomic_path`; a library's own write failure (safetensors'
    IoError, torch's "file write failed") becomes an OSError naming ``path``, ENOSPC when the
    disk is full (`as_os_error`)."""
    try:
        with atomic_path(path) as tmp:
            write(str(tmp))
    except OSError:
        raise
    except Exception as err:
        raise as_os_error(err, path, what) from err


def as_os_error(err: BaseException, path: str | os.PathLike, what: str = "writing") -> OSError:
    """A library's write failure as an OSError naming ``path`` (ENOSPC if the disk is full).

    safetensors reports a full disk as ``IoError(Os { code: 28, kind: StorageFull ... })``,
    torch's writer as "file write failed" with no errno: when its folder has no space left,
    that is ENOSPC too.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err if err.filename is not None else type(err)(err.errno, err.strerror,
                                                               os.fspath(path))
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    full = ("code: 28" in text or "StorageFull" in text or "No space left" in text
            or _disk_full(Path(path).parent))
    if full:
        return OSError(errno.ENOSPC, f"No space left on device ({what})", os.fspath(path))
    return OSError(errno.EIO, f"{what} failed ({text[:200]})", os.fspath(path))


#: errno values that no other run of a sweep could escape (the disk is full or read-only): they
#: stop the whole command instead of failing one run.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_disk_error(err: BaseException) -> bool:
    """Whether ``err`` is an OSError of `DISK_ERRNOS`."""
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_write_safetensors(tensors: dict[str, Any], path: str | os.PathLike,
                             metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file(tensors, path, metadata)``, atomically (see `_atomic_write`).

    Raises:
        OSError: naming ``path``; ENOSPC when the disk is full.
    """
    from safetensors.torch import save_file

    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata),
                  "writing tensors")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (see `_atomic_write`).

    Raises:
        OSError: naming ``path``; ENOSPC when the disk is full.
    """
    import torch

    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp), "writing a torch file")


def _raise_with_path(err: OSError, path: Path) -> None:
    """Re-raise ``err``; if it names no file, as the same error class naming ``path``."""
    if err.filename is not None or err.errno is None:
        raise err
    raise type(err)(err.errno, err.strerror, str(path)) from err


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON (``json.dumps(obj, **dump_kwargs)``, default indent 2) atomically.

    Raises:
        OSError: as `atomic_write_text`; ValueError / TypeError: if ``obj`` is not JSON.
    """
    dump_kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")
