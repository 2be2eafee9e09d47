"""The package version: `dipnet.__version__`.

``VERSION`` is the single place the version is written: pyproject.toml reads it at build time
(``[tool.setuptools.dynamic]``). At run time the installed distribution's metadata wins, so an
installed wheel reports what pip installed; a source checkout that is not installed (``src`` on
``sys.path``) falls back to ``VERSION``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Must stay a plain string literal: setuptools reads it without importing the package.
VERSION = "0.1.0"


def installed_version() -> str:
    """The version of the installed ``dipnet`` distribution, or ``VERSION`` if none is installed."""
    try:
        return version("dipnet")
    except PackageNotFoundError:
        return VERSION


__version__ = installed_version()
