"""Errors the command line reports as one clear line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a bad option, missing data, a corrupt file).

    The message says what is wrong and how to fix it; the CLI prints it as one line.
    """
