"""No function in src/dipnet runs over 80 lines (issue 21): a longer one is split into phases
that each read alone.

Length is counted as ast's ``end_lineno - lineno`` of the ``def`` (its decorators left out),
nested functions counted inside their parent and on their own. ``ALLOWED`` lists the ones not
split yet with their length today: the list may only shrink, and a listed function may not
grow (delete its line once it is split; lower its number when it shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 80

# "path/under/src::qualified.name": its length today.
ALLOWED: dict[str, int] = {
}


def function_lengths(root: Path = SRC) -> dict[str, int]:
    """``"path::qualified.name"`` -> length of every function under ``root``."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found[f"{where}::{name}"] = child.end_lineno - child.lineno
                visit(child, f"{name}.", where)
            else:
                visit(child, prefix, where)

    for path in sorted(root.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), "",
              path.relative_to(root).as_posix())
    return found


def test_the_counter_names_nested_functions_and_methods(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        def g():\n"
                                   "            pass\n        return g\n\n\ndef h():\n    pass\n")
    assert function_lengths(tmp_path) == {"m.py::A.f": 3, "m.py::A.f.g": 1, "m.py::h": 1}


def test_no_function_runs_over_80_lines() -> None:
    lengths = function_lengths()
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    new = {name: n for name, n in long.items() if name not in ALLOWED}
    grown = {name: (ALLOWED[name], n) for name, n in long.items()
             if name in ALLOWED and n > ALLOWED[name]}
    gone = sorted(name for name in ALLOWED if name not in long)
    assert not new, f"split these into phases that each read alone (<= {MAX_LINES} lines): {new}"
    assert not grown, f"allowed long functions may only shrink (allowed, now): {grown}"
    assert not gone, f"no longer over {MAX_LINES} lines (or renamed): delete from ALLOWED: {gone}"
