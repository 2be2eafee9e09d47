"""Received files must not run code (issue 9, item 11).

A run folder or config file naming ``model: package.module:factory`` would import that module.
That needs the user's say on the command line (``--model`` given as a flag, or
``--allow-code``); a value read from a file alone is refused, and ``python -m dipnet`` does not
import modules from the working folder. The "evil" modules here only write a marker file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.runs import load_run
from dipnet.experiments.run.train import run_training

REPO = Path(__file__).resolve().parents[3]
EVIL = ("from pathlib import Path\n"
        "Path(__file__).with_name('IMPORTED-' + __name__).write_text('ran')\n"
        "from dipnet.experiments.zoo.models import mlp\n"
        "def f(input_shape, num_classes, hidden=(16,)):\n"
        "    return mlp(input_shape, num_classes, hidden)\n")
FAST = dict(dataset="digits", model_params={"hidden": [16]}, epochs=1, batch_size=64,
            num_threads=1, mc_samples=2)


@pytest.fixture(scope="module")
def code_run(tmp_path_factory) -> Path:
    """A finished run whose model is a user factory, ``evilmod:f``, in the folder's parent."""
    root = tmp_path_factory.mktemp("trust")
    (root / "evilmod.py").write_text(EVIL)
    sys.path.insert(0, str(root))
    try:
        run_training(RunConfig(model="evilmod:f", **FAST), root / "run", progress=False)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("evilmod", None)
    (root / "IMPORTED-evilmod").unlink()
    return root / "run"


def _dipnet(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "dipnet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_load_run_refuses_user_code_unless_allowed(code_run, monkeypatch):
    monkeypatch.syspath_prepend(str(code_run.parent))
    with pytest.raises(UserError, match="evilmod:f.*allow_code=True"):
        load_run(code_run, load_data=False)
    assert not (code_run.parent / "IMPORTED-evilmod").exists()
    run = load_run(code_run, load_data=False, allow_code=True)
    assert (code_run.parent / "IMPORTED-evilmod").exists()
    assert run.config.model == "evilmod:f"
    sys.modules.pop("evilmod", None)
    (code_run.parent / "IMPORTED-evilmod").unlink()


def test_python_m_dipnet_evaluate_of_a_received_run_imports_nothing(code_run, tmp_path):
    received = tmp_path / "received"
    shutil.copytree(code_run, received)
    (tmp_path / "evilmod.py").write_text(EVIL)
    res = _dipnet(["evaluate", str(received), "--parts", "clean", "--no-progress"], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "evilmod:f" in line and "--allow-code" in line
    assert not (tmp_path / "IMPORTED-evilmod").exists()


def test_train_config_file_naming_code_needs_the_users_say(code_run, tmp_path):
    (tmp_path / "evilmod.py").write_text(EVIL)
    shutil.copy(code_run / "config.yaml", tmp_path / "received.yaml")
    res = _dipnet(["train", "--config", "received.yaml", "--no-progress", "--out", "x"],
                  tmp_path)
    assert res.returncode == 2 and "--allow-code" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "IMPORTED-evilmod").exists() and not (tmp_path / "x").exists()


@pytest.fixture
def python_m_path(tmp_path, monkeypatch):
    """This process as `python -m dipnet` leaves it: working folder = tmp_path, taken off
    sys.path by dipnet.__main__ (in-process, to spare a second interpreter start)."""
    from dipnet._util import trust

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert trust.strip_working_folder() == [str(tmp_path)]
    yield tmp_path
    trust._removed_path.clear()  # nothing of this test's folder may reach a later test
    for name in ("evilmod", "mymodels"):
        sys.modules.pop(name, None)


def test_allow_code_lets_a_config_file_name_code(code_run, python_m_path):
    from dipnet.cli import main

    (python_m_path / "evilmod.py").write_text(EVIL)
    shutil.copy(code_run / "config.yaml", python_m_path / "received.yaml")
    assert main(["train", "--config", "received.yaml", "--allow-code", "--no-progress",
                 "--out", "x"]) == 0
    assert (python_m_path / "IMPORTED-evilmod").exists()
    assert sys.path[-1] == str(python_m_path)  # back, but last: it shadows nothing


def test_python_m_dipnet_does_not_import_from_the_working_folder(tmp_path):
    # `dipnet train` imports yaml lazily: a yaml.py in the working folder must not shadow it
    (tmp_path / "yaml.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('HIJACKED').write_text('ran')\n"
        "raise SystemExit(7)\n")
    res = _dipnet(["train", "--dataset", "nope", "--out", "x"], tmp_path)
    assert not (tmp_path / "HIJACKED").exists()
    assert res.returncode == 2 and "unknown data set 'nope'" in res.stderr, res.stderr[-2000:]


def test_a_model_flag_is_the_users_say(python_m_path):
    from dipnet.cli import main

    (python_m_path / "mymodels.py").write_text(EVIL)
    assert main(["train", "--dataset", "digits", "--model", "mymodels:f", "--epochs", "1",
                 "--threads", "1", "--mc-samples", "2", "--no-progress", "--out", "x"]) == 0
    assert (python_m_path / "IMPORTED-mymodels").exists()
    assert yaml.safe_load((python_m_path / "x" / "config.yaml").read_text())["model"] == \
        "mymodels:f"


def test_compare_config_file_naming_code_needs_the_users_say(tmp_path, capsys):
    from dipnet.cli import main

    (tmp_path / "evilmod.py").write_text(EVIL)
    sweep = tmp_path / "received.yaml"
    sweep.write_text(yaml.safe_dump({"dataset": "digits", "model": "evilmod:f",
                                     "methods": ["standard"], "seeds": [0],
                                     "run": {"epochs": 1, "num_threads": 1}}))
    sys.path.insert(0, str(tmp_path))
    try:
        code = main(["compare", "--config", str(sweep), "--out", str(tmp_path / "x"),
                     "--quiet"])
    finally:
        sys.path.remove(str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "evilmod:f" in err and "--allow-code" in err
    assert not (tmp_path / "IMPORTED-evilmod").exists() and not (tmp_path / "x").exists()
