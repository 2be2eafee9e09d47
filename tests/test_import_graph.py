"""The import graph of src/dipnet: no new cycles, no new imports against the layers.

The graph is read with `ast` (no module is imported), from every ``import`` statement in a
module, function-local ones included (they still tie the two modules together; they only hide
the cycle from the interpreter). Imports under ``if TYPE_CHECKING:`` are left out: they never
run.

Layers, lowest first: the core (``dipnet.*`` modules at the top level), ``evaluation`` (a
library: it never imports the harness or a CLI), the harness (``experiments``,
``hf_experiments``), the CLI (``dipnet.cli``, ``dipnet.__main__``, ``commands``, and each
package's ``cli`` module). A module may import its own layer and the layers below it.

Today's violations are listed in ``ALLOWED_CYCLE_EDGES`` and ``ALLOWED_LAYER_EDGES``. The lists
may only shrink: a new violation fails, and so does a listed one that is gone (delete its line).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "dipnet"

# Edges (importer, imported) that lie on an import cycle today (issue 21 step 3 breaks them;
# objective <-> trajectories and objective <-> monitor went with dipnet.batching). fixed needs
# train_run to train its reference model, and train needs the fixed training set.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = {
    ("dipnet.experiments.fixed", "dipnet.experiments.train"),
    ("dipnet.experiments.train", "dipnet.experiments.fixed"),
}

# Edges (importer, imported) from a lower layer into a higher one today.
ALLOWED_LAYER_EDGES: set[tuple[str, str]] = {
    # evaluation -> harness
    ("dipnet.evaluation.corruptions", "dipnet.experiments.data"),
    ("dipnet.evaluation.report", "dipnet.experiments.stats"),
    ("dipnet.evaluation.shift", "dipnet.experiments.data"),
    ("dipnet.evaluation.suite", "dipnet.experiments.data"),
    ("dipnet.evaluation.suite", "dipnet.experiments.runs"),
    # certification (issue 20, merged while this guard was written): the core's certify reads
    # the evaluation's predictor, and the evaluation's certified runs the CLI and the harness
    ("dipnet.certify", "dipnet.evaluation.predictors"),
    ("dipnet.evaluation.certified", "dipnet.commands.certify"),
    ("dipnet.evaluation.certified", "dipnet.experiments.locks"),
    ("dipnet.evaluation.certified", "dipnet.experiments.runs"),
    # harness -> CLI
    ("dipnet.experiments.backends", "dipnet.commands"),
    ("dipnet.experiments.sweep", "dipnet.commands.overrides"),
    ("dipnet.experiments.sweep_cli", "dipnet.commands.overrides"),
    ("dipnet.experiments.sweep_cli", "dipnet.commands.sweep"),
    ("dipnet.experiments.tracking", "dipnet.commands"),
    ("dipnet.experiments.tune", "dipnet.commands.overrides"),
}

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
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module
            else:
                continue
            for alias in node.names:
                # `from . import noise` imports the module dipnet.noise
                sub = f"{target}.{alias.name}"
                add(sub if sub in modules else target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = module_files()
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()}


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
    if module in ("dipnet.cli", "dipnet.__main__") or (len(parts) > 1 and parts[1] == "commands") \
            or (len(parts) > 2 and parts[-1] == "cli"):
        return "cli"
    if len(parts) > 1 and parts[1] in ("experiments", "hf_experiments"):
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
    assert layer("dipnet.evaluation.suite") == "evaluation"
    assert layer("dipnet.hf_experiments.text") == "harness"
    assert [layer(m) for m in ("dipnet.cli", "dipnet.commands.train", "dipnet.experiments.cli",
                               "dipnet.evaluation.cli")] == ["cli"] * 4


def test_no_new_import_cycles() -> None:
    _compare(cycle_edges(import_graph()), ALLOWED_CYCLE_EDGES, "import-cycle edges")


def test_no_new_imports_against_the_layers() -> None:
    _compare(layer_edges(import_graph()), ALLOWED_LAYER_EDGES,
             "imports from a lower layer into a higher one")
