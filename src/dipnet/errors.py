"""Errors the command line reports as one clear line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a bad option, missing data, a corrupt file).

    The message says what is wrong and how to fix it; the CLI prints it as one line.
    """


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: the path(s), the errno text, and what to check.

    ``PermissionError(13, "Permission denied", "/x")`` -> ``"/x: Permission denied (errno 13,
    EACCES); check the path, its permissions and free space"``.
    """
    import errno as _errno

    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    text = err.strerror or str(err) or type(err).__name__
    code = f" (errno {err.errno}, {_errno.errorcode.get(err.errno, '?')})" if err.errno else ""
    head = f"{where}: {text}" if where else text
    return f"{head}{code}; check the path, its permissions and free space."
