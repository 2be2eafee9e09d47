"""Every `dipnet` command bounds how long torch's OpenMP threads spin while they wait (issue
10): with torch's default of one thread per core, on a machine whose cores are busy, spinning
threads made an evaluation 5-16x and a training run 1.5-3x slower (docs/cost.md). A bounded
spin (GOMP_SPINCOUNT=3000) keeps most of what sleeping at once (OMP_WAIT_POLICY=PASSIVE) wins
there, for +3-4 % on an idle machine instead of +18-20 %."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from dipnet import cli
from dipnet.errors import UserError
from dipnet._util.threads import SPINCOUNT, limit_openmp_spinning


def test_set_before_torch_is_imported() -> None:
    env: dict[str, str] = {}
    assert limit_openmp_spinning(modules={}, environ=env) is True
    assert env == {"GOMP_SPINCOUNT": SPINCOUNT} and SPINCOUNT == "3000"


@pytest.mark.parametrize("users", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_the_users_choice_is_kept(users: dict[str, str]) -> None:
    env = dict(users)
    assert limit_openmp_spinning(modules={}, environ=env) is False
    assert env == users


def test_too_late_once_torch_is_loaded() -> None:
    # The OpenMP runtime read the environment when torch loaded: setting it now would claim
    # an effect it cannot have.
    env: dict[str, str] = {}
    assert limit_openmp_spinning(modules={"torch": object()}, environ=env) is False
    assert env == {}


def test_main_sets_it_before_running_a_command(monkeypatch, tmp_path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "limit_openmp_spinning", lambda: calls.append("threads"))
    code = cli.main(["report", str(tmp_path / "missing")])
    assert code == 2  # the command ran (and refused the missing folder) after the call
    assert calls == ["threads"]


def test_the_evaluate_command_sets_it_first(monkeypatch) -> None:
    from dipnet.cli import evaluate as evaluation_cli

    calls: list[int] = []
    monkeypatch.setattr(evaluation_cli, "limit_openmp_spinning", lambda: calls.append(1))
    args = argparse.Namespace(out="one.json", run_dirs=["a", "b"], threads=None)
    with pytest.raises(UserError, match="--out names one file"):
        evaluation_cli.run_evaluate_command(args)
    assert calls == [1]


def test_a_fresh_dipnet_process_sets_it_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # The train command's implementation replaced by one that reports what torch would see.
    probe = ("import os, sys; from dipnet import cli; import dipnet.cli.train as train; "
             "train.run_train_command = lambda args: print(os.environ.get('GOMP_SPINCOUNT'), "
             "os.environ.get('OMP_WAIT_POLICY')) or 0; "
             "sys.exit(cli.main(['train', '--dataset', 'digits']))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["3000", "None"], out.stdout + out.stderr
