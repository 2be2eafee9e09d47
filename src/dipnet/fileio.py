"""Atomic file writes shared by every part of dipnet that writes results or configs."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


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
