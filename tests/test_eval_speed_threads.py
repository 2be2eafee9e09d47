"""`dipnet evaluate` makes torch's OpenMP threads sleep instead of spin while they wait
(issue 10 item 7): with torch's default of one thread per core, on a machine whose cores are
busy, the demo run's evaluation took 67 s instead of 4.1 s (2 cores, load 2; measured by hand
with benchmarks' run folders, see docs/evaluation.md)."""

from __future__ import annotations

from dipnet.evaluation.cli import passive_openmp_threads


def test_set_before_torch_is_imported():
    env: dict[str, str] = {}
    assert passive_openmp_threads(modules={}, environ=env) is True
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_the_users_choice_is_kept():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert passive_openmp_threads(modules={}, environ=env) is False
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_too_late_once_torch_is_loaded():
    # The OpenMP runtime read the environment when torch loaded: setting it now would claim
    # an effect it cannot have.
    env: dict[str, str] = {}
    assert passive_openmp_threads(modules={"torch": object()}, environ=env) is False
    assert env == {}


def test_the_evaluate_command_sets_it_first(monkeypatch):
    import argparse

    import pytest

    from dipnet.errors import UserError
    from dipnet.evaluation import cli

    calls = []
    monkeypatch.setattr(cli, "passive_openmp_threads", lambda: calls.append(1))
    args = argparse.Namespace(out="one.json", run_dirs=["a", "b"], threads=None)
    with pytest.raises(UserError, match="--out names one file"):
        cli.run_evaluate_command(args)
    assert calls == [1]
