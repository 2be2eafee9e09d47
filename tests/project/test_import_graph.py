"""The import graph of src/dipnet: no new cycles, no new imports against the layers.

The graph is read with `ast` (no module is imported), from every ``import`` statement in a
module, function-local ones included (they still tie the two modules together; they only hide
the cycle from the interpreter). Imports under ``if TYPE_CHECKING:`` are left out: they never
run.

Layers, lowest first: the core (``dipnet.*`` modules at the top level, and ``dipnet._util``),
``evaluation`` (a library: it never imports the harness or the CLI), the harness
(``dipnet.experiments`` and its subpackages), the CLI (``dipnet.cli``, one module per command,
and ``dipnet.__main__``). A module may import its own layer and the layers below it.

The harness's old module paths (alias modules, ``_MOVED`` forwards) were removed when the
harness took its subpackages (issue 21); `test_no_module_is_an_alias_of_another` keeps it so.

Violations would be listed in ``ALLOWED_CYCLE_EDGES`` and ``ALLOWED_LAYER_EDGES``; both are
empty now and may only stay so: a new violation fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "dipnet"

# Edges (importer, imported) that lie on an import cycle today: none (objective <-> trajectories
# and objective <-> monitor went with dipnet.batching, fixed <-> train with experiments.rng and
# train.fixed_training_set, issue 21).
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()

# Edges (importer, imported) from a lower layer into a higher one today: none (issue 21 moved the
# shared pieces down: `_util`, the row budget to `batching`, DEFAULT_RADII to
# `evaluation.settings`; and the run-folder pieces up: `experiments.evaluate`,
# `experiments.certified`, `experiments.report.eval_tables`, `experiments.tune_cli`).
ALLOWED_LAYER_EDGES: set[tuple[str, str]] = set()

LAYERS = ("core", "evaluation", "harness", "cli")


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is named by its __init__)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    # ids of the import nodes under `if TYPE_CHECKING:` (they never run)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skipped.update(id(n) for n in ast.walk(stmt))
    return skipped


def _from_target(node: ast.ImportFrom, name: str, is_package: bool) -> str | None:
    # the dotted module a `from ... import` reads (relative ones resolved), None outside dipnet
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    if node.module and node.module.split(".")[0] == PACKAGE:
        return node.module
    return None


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that module ``name`` (file ``path``) imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        # `import dipnet.a.b` imports dipnet.a.b (and its parents, which are not edges here)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(node, name, is_package)
            if target is None:
                continue
            for alias in node.names:
                # `from . import noise` imports the module dipnet.noise
                sub = f"{target}.{alias.name}"
                add(sub if sub in modules else target)
    return found


def alias_target(path: Path) -> str | None:
    """The module that the alias module at ``path`` names (see the module docstring), or None
    when it is an ordinary module. An alias holds a docstring, ``import sys``, one
    ``from X import Y as _moved`` and ``sys.modules[__name__] = _moved``, nothing else."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    kinds = [type(stmt) for stmt in body]
    if kinds != [ast.Import, ast.ImportFrom, ast.Assign]:
        return None
    sys_import, moved, assign = body
    if [a.name for a in sys_import.names] != ["sys"] or len(moved.names) != 1 \
            or ast.unparse(assign) != f"sys.modules[__name__] = {moved.names[0].asname}":
        return None
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return f"{_from_target(moved, name, False)}.{moved.names[0].name}"


def moved_names(path: Path) -> dict[str, str]:
    """A module's ``_MOVED`` table (name -> the module it moved to), {} when it has none."""
    for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.Assign) and [ast.unparse(t) for t in stmt.targets] == ["_MOVED"]:
            return ast.literal_eval(stmt.value)
    return {}


def from_imports(name: str, path: Path) -> set[tuple[str, str]]:
    """(module, name) of every ``from module import name`` in module ``name``, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _from_target(node, name, path.name == "__init__.py")
            if target is not None:
                found.update((target, alias.name) for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports. Alias modules are left out (their one import
    is the alias itself, checked by `test_old_import_paths_are_only_for_code_outside`)."""
    files = module_files()
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()
            if alias_target(path) is None}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def cycle_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The edges that lie on some cycle: both ends in one strongly connected component."""
    component_of = {m: i for i, c in enumerate(strongly_connected(graph)) for m in c}
    return {(a, b) for a, targets in graph.items() for b in targets
            if component_of[a] == component_of[b]}


def layer(module: str) -> str:
    """The layer of a module (see the module docstring)."""
    parts = module.split(".")
    if module == "dipnet.__main__" or (len(parts) > 1 and parts[1] == "cli"):
        return "cli"
    if len(parts) > 1 and parts[1] == "experiments":
        return "harness"
    if len(parts) > 1 and parts[1] == "evaluation":
        return "evaluation"
    return "core"


def layer_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The edges from a lower layer into a higher one. The package itself (``dipnet``, the
    public API) may import any layer lazily, so it is left out."""
    return {(a, b) for a, targets in graph.items() for b in targets
            if a != PACKAGE and LAYERS.index(layer(a)) < LAYERS.index(layer(b))}


def _show(edges: set[tuple[str, str]]) -> str:
    return "\n".join(f"    ({a!r}, {b!r})," for a, b in sorted(edges))


def _compare(found: set[tuple[str, str]], allowed: set[tuple[str, str]], what: str) -> None:
    new, gone = found - allowed, allowed - found
    message = []
    if new:
        message.append(f"new {what} (break them instead of listing them):\n{_show(new)}")
    if gone:
        message.append(f"{what} no longer present: delete them from the allow-list:\n"
                       f"{_show(gone)}")
    assert not message, "\n".join(message)


def test_the_graph_reader_sees_relative_local_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "dipnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("import dipnet.sub.c\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .a import y\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\nfrom .. import b\n")
    (pkg / "sub" / "c.py").write_text("from ..a import x\nfrom .. import sub\n")
    names = {"dipnet", "dipnet.a", "dipnet.b", "dipnet.sub", "dipnet.sub.c"}
    got = {n: imports_of(n, p, names) for n, p in {
        "dipnet": pkg / "__init__.py", "dipnet.a": pkg / "a.py", "dipnet.b": pkg / "b.py",
        "dipnet.sub": pkg / "sub" / "__init__.py", "dipnet.sub.c": pkg / "sub" / "c.py"}.items()}
    assert got == {"dipnet": {"dipnet.a"}, "dipnet.a": {"dipnet.sub.c", "dipnet.b"},
                   "dipnet.b": set(), "dipnet.sub": {"dipnet.sub.c", "dipnet.b"},
                   "dipnet.sub.c": {"dipnet.a", "dipnet.sub"}}
    # a -> sub.c -> a is a cycle (through a function-local import); b is on none.
    assert cycle_edges(got) == {("dipnet.a", "dipnet.sub.c"), ("dipnet.sub.c", "dipnet.a"),
                                ("dipnet.sub.c", "dipnet.sub"), ("dipnet.sub", "dipnet.sub.c")}


def test_the_layers_are_named_by_folder() -> None:
    assert layer("dipnet.objective") == "core"
    assert layer("dipnet._util.nested") == "core"
    assert layer("dipnet.evaluation.suite") == "evaluation"
    assert layer("dipnet.experiments.hf.text") == "harness"
    assert layer("dipnet.experiments.run.train") == "harness"
    assert [layer(m) for m in ("dipnet.cli", "dipnet.cli.train", "dipnet.__main__",
                               "dipnet.cli.evaluate", "dipnet.cli.sweep")] \
        == ["cli"] * 5


def test_no_module_is_an_alias_of_another() -> None:
    """No ``sys.modules[__name__] = ...`` module and no ``_MOVED`` forward table: every module
    is reached by one path (the reader itself is checked on a synthetic alias)."""
    files = module_files()
    assert not {n for n, p in files.items() if alias_target(p) is not None}
    assert not {n for n, p in files.items() if moved_names(p)}


def test_the_alias_reader_recognises_an_alias(tmp_path: Path) -> None:
    pkg = tmp_path / "dipnet"
    pkg.mkdir()
    (pkg / "old.py").write_text("import sys\nfrom dipnet import new as _new\n"
                                "sys.modules[__name__] = _new\n")
    (pkg / "table.py").write_text("_MOVED = {'f': 'dipnet.new'}\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert alias_target(pkg / "old.py") == "dipnet.new"
    finally:
        SRC = saved
    assert moved_names(pkg / "table.py") == {"f": "dipnet.new"}


def test_no_new_import_cycles() -> None:
    _compare(cycle_edges(import_graph()), ALLOWED_CYCLE_EDGES, "import-cycle edges")


def test_no_new_imports_against_the_layers() -> None:
    _compare(layer_edges(import_graph()), ALLOWED_LAYER_EDGES,
             "imports from a lower layer into a higher one")


#: The most modules (``.py`` files besides ``__init__`` / ``__main__``) one folder may hold; the
#: core at src/dipnet itself may hold more, one idea per file (issue 21).
MAX_MODULES, MAX_CORE_MODULES = 12, 20


def test_every_folder_is_small_enough_to_read() -> None:
    counts: dict[Path, int] = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            counts[path.parent] = counts.get(path.parent, 0) + 1
    core = counts.pop(SRC / PACKAGE)
    assert core <= MAX_CORE_MODULES, f"src/dipnet holds {core} modules; move helpers to _util/"
    big = {str(p.relative_to(SRC)): n for p, n in counts.items() if n > MAX_MODULES}
    assert not big, f"folders over {MAX_MODULES} modules (split them into subpackages): {big}"
