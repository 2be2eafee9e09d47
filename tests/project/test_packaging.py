"""Packaging: declared ranges vs the lock, every import in its extra, the core-only wheel.

The wheel test builds dipnet from a copy of this checkout (no build tools are downloaded: pip and
setuptools come from .venv), installs it into a fresh virtual environment that sees only the
core's declared dependencies (torch, safetensors and what they require, linked from .venv), and
runs the library quickstart there. About 10 s on one core.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
requirements_mod = pytest.importorskip("packaging.requirements")
from packaging.markers import default_environment  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "dipnet"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Which extra(s) each part of src/dipnet belongs to (longest prefix wins); everything else is the
# core, which may use torch and safetensors only. Keep in step with pyproject's comment.
FEATURE_EXTRAS = {
    "evaluation/": ["eval"],
    "certify.py": ["eval"],
    "experiments/": ["experiments"],
    "hf.py": ["hf"],
    "experiments/hf/": ["text", "math"],
    "experiments/hf/text.py": ["text"],
    "experiments/hf/math.py": ["math"],
    "experiments/hf/tokenizers.py": ["math"],
    "experiments/run/tracking.py": ["track"],
    "experiments/sweep/backends.py": ["cluster"],
    "experiments/sweep/tune.py": ["tune"],
}
HEAVY = ("transformers", "scipy", "yaml", "tqdm", "sklearn", "matplotlib", "numpy", "peft",
         "pandas")


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extra: str | None, seen: frozenset[str] = frozenset()) -> dict[str, Requirement]:
    """Requirements of the core (extra=None) or of an extra, self-references resolved."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in (project["dependencies"] if extra is None
                                     else project["optional-dependencies"][extra])]
    out: dict[str, Requirement] = {}
    for req in reqs:
        if norm(req.name) == "dipnet":
            for sub in sorted(req.extras - seen):
                out.update(declared(sub, seen | {sub}))
        else:
            out[norm(req.name)] = req
    if extra is not None:
        out.update(declared(None))
    return out


def extras_of(rel: str) -> list[str | None]:
    best = max((p for p in FEATURE_EXTRAS if rel.startswith(p)), key=len, default=None)
    return FEATURE_EXTRAS[best] if best else [None]


def _optional(handlers: list[ast.ExceptHandler]) -> bool:
    """A try block whose handler catches ImportError: the import is optional by construction."""
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for h in handlers:
        if h.type is None:
            return True
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if any(isinstance(t, ast.Name) and t.id in names for t in types):
            return True
    return False


def third_party_imports(path: Path) -> set[str]:
    """Top-level modules a file imports (anywhere, also inside functions), minus the stdlib,
    dipnet itself and imports guarded by ``except ImportError``."""
    tree = ast.parse(path.read_text(), str(path))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _optional(node.handlers):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "dipnet"}


# ---------------------------------------------------------------------- declarations
def test_every_import_in_src_is_declared_in_the_extra_of_its_feature() -> None:
    dists_of = md.packages_distributions()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for module in sorted(third_party_imports(path)):
            dists = {norm(d) for d in dists_of.get(module, [])}
            if not dists:
                problems.append(f"{rel} imports {module!r}, which is not installed here: add its "
                                "distribution to pyproject and its pin to requirements.txt")
                continue
            for extra in extras_of(rel):
                if not dists & set(declared(extra)):
                    where = f"extra '{extra}'" if extra else "the core dependencies"
                    problems.append(f"{rel} imports {module!r} ({', '.join(sorted(dists))}), "
                                    f"not declared in {where} of pyproject.toml")
    assert not problems, "\n".join(problems)


def test_the_features_named_in_issue_11_have_their_extras() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"experiments", "eval", "hf", "math", "all", "test"} <= set(extras)
    assert {"markdown-it-py", "imagecorruptions-imaug"} <= set(declared("eval"))
    assert "reasoning-gym" in declared("math")
    assert set(declared(None)) == {"torch", "safetensors"}
    everything = set(declared("all"))
    for name in extras:
        if name not in ("all", "test"):
            assert set(declared(name)) <= everything, name


def test_ranges_in_pyproject_and_exact_pins_in_requirements_agree() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {line}"
            pins[norm(req.name)] = spec[0].version
    # torch must never be resolved freely on these machines (a CUDA build would be pulled).
    assert pins["torch"] == "2.13.0"
    project = PYPROJECT["project"]
    raw = list(project["dependencies"]) + [r for reqs in project["optional-dependencies"].values()
                                           for r in reqs]
    for text in raw:
        req = Requirement(text)
        if norm(req.name) == "dipnet":
            continue
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and not ops & {"==", "==="}, f"{text}: a range with a lower bound"
        # A direct dependency that the lock leaves to the resolver (tokenizers comes with
        # transformers) is checked at the version installed here.
        version = pins.get(norm(req.name)) or md.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (
            f"{req.name} {version} (requirements.txt / .venv) is outside pyproject's "
            f"{req.specifier}")


def test_version_comes_from_the_package_metadata(monkeypatch) -> None:
    import dipnet
    from dipnet._util import version as _version

    assert dipnet.__version__ == md.version("dipnet") == _version.VERSION, (
        "the installed metadata is stale: reinstall with .venv/bin/pip install --no-deps -e .")

    def not_installed(name: str) -> str:
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(_version, "version", not_installed)
    assert _version.installed_version() == _version.VERSION


def test_import_dipnet_loads_no_optional_dependency() -> None:
    # In .venv every extra is installed, so this catches an import that would pull one in.
    # torch itself imports numpy and tqdm when they are installed: only what dipnet adds counts.
    code = ("import sys, json, torch; before = set(sys.modules); import dipnet; "
            "print(json.dumps(sorted(m for m in set(sys.modules) - before "
            f"if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------- the core-only wheel
QUICKSTART = r"""
import json, sys, tempfile
import torch
from torch import nn
before = set(sys.modules)
import dipnet
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in %r)

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
config = dipnet.DIPConfig(m=2, gamma=0.05)
dipnet.project(model, config)
loss_fn = dipnet.DIPLoss(config, num_train=len(x))
opt = torch.optim.Adam(dipnet.parameter_groups(model, variance_lr=1e-2), lr=3e-3)
first = None
for step in range(30):
    parts = loss_fn(model, x, y)
    opt.zero_grad(); parts.total.backward(); opt.step()
    first = first if first is not None else float(parts.nll)
det = dipnet.predict(model, x, k=0)
mc = dipnet.predict(model, x, k=4)
folder = tempfile.mkdtemp()
dipnet.save_pretrained(model, folder)
again = dipnet.from_pretrained(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), folder)
print(json.dumps({
    "version": dipnet.__version__,
    "dipnet_file": dipnet.__file__,
    "nll_first": first, "nll_last": float(parts.nll),
    "det_shape": list(det.probs.shape), "mc_shape": list(mc.probs.shape),
    "summary": dipnet.summary(again).splitlines()[0],
    "heavy": heavy,
}))
""" % (HEAVY,)


def _requirement_closure(wheel: Path) -> set[str]:
    """The core requirements in the wheel's METADATA and everything they require, as installed
    in this interpreter (markers evaluated here, extras not taken)."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    todo = [(Requirement(line.split(":", 1)[1].strip()), "") for line in meta.splitlines()
            if line.startswith("Requires-Dist:")]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        env = {**default_environment(), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        for wanted in {""} | set(req.extras):  # the distribution itself, then each extra asked
            if (norm(req.name), wanted) not in seen:
                seen.add((norm(req.name), wanted))
                todo += [(Requirement(r), wanted)
                         for r in (md.distribution(req.name).requires or [])]
    return {name for name, _ in seen}


def _link_distributions(names: set[str], target: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, dist-info) into target."""
    target.mkdir()
    for name in names:
        dist = md.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            if top.startswith("..") or top == "__pycache__" or top.endswith(".pth"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and not (target / top).exists():
                (target / top).symlink_to(src)


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> Path:
    """A fresh venv with the built dipnet wheel and only its core dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    shutil.copytree(SRC, tree / "src" / "dipnet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                          str(tree), "-w", str(tmp / "dist")], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("dipnet-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(pip + ["--python", str(python), "install", "--no-deps", "--no-index", "-q",
                          str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True)
    deps = tmp / "core-deps"
    _link_distributions(_requirement_closure(wheel), deps)
    # After the venv's own site-packages: the installed wheel is found first.
    (Path(purelib.stdout.strip()) / "zz_core_deps.pth").write_text(f"{deps}\n")
    return venv


def test_the_wheel_installs_with_the_core_only_and_runs_the_quickstart(core_env: Path) -> None:
    python = core_env / "bin" / "python"
    for module in ("transformers", "yaml", "scipy", "sklearn", "tqdm"):  # really absent there
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the core-only venv"
    run = subprocess.run([str(python), "-c", QUICKSTART], capture_output=True, text=True,
                         cwd=core_env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["dipnet_file"].startswith(str(core_env))  # the wheel, not the checkout
    assert out["version"] == PYPROJECT_VERSION()
    assert out["nll_last"] < out["nll_first"]  # it trains
    assert out["det_shape"] == out["mc_shape"] == [256, 3]
    assert out["summary"].startswith("DIPNet: 2 projections")
    assert out["heavy"] == []
    assert (core_env / "bin" / "dipnet").exists()  # the console script was installed


def test_the_readme_library_example_runs_after_a_core_only_install(core_env: Path,
                                                                    tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    code = "import torch; torch.set_num_threads(1)\n" + blocks[0].replace(
        "/tmp/dipnet_quickstart", str(tmp_path / "saved"))
    run = subprocess.run([str(core_env / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, cwd=core_env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "saved" / "model.safetensors").exists()


def PYPROJECT_VERSION() -> str:  # noqa: N802 (reads like the constant it stands for)
    from dipnet._util.version import VERSION

    return VERSION


def test_the_core_only_command_line_answers_help(core_env: Path) -> None:
    run = subprocess.run([str(core_env / "bin" / "dipnet"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "train" in run.stdout


def test_the_command_line_reports_the_package_version(core_env: Path) -> None:
    run = subprocess.run([str(core_env / "bin" / "dipnet"), "--version"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and PYPROJECT_VERSION() in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("argv, extra", [
    (["train"], "experiments"), (["compare", "--dataset", "digits", "--methods", "standard"],
                                 "experiments"),
    (["report", "x"], "experiments"), (["demo"], "experiments"), (["evaluate", "x"], "eval"),
    (["text-classify"], "text"), (["math"], "math"),
])
def test_the_core_only_command_line_names_the_extra_a_command_needs(core_env: Path, argv,
                                                                    extra) -> None:
    run = subprocess.run([str(core_env / "bin" / "dipnet"), *argv], capture_output=True,
                         text=True, timeout=120, cwd=core_env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert f"pip install 'dipnet[{extra}]'" in lines[0]
