"""Every `dipnet` command makes torch's OpenMP threads wait passively (issue 10): on a busy
machine spinning threads made `dipnet train` 3x and `dipnet evaluate` up to 16x slower."""

from __future__ import annotations

import os
import subprocess
import sys

from dipnet import cli


def test_main_sets_the_wait_policy_before_running_a_command(monkeypatch, tmp_path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "passive_openmp_threads", lambda: calls.append("threads"))
    code = cli.main(["report", str(tmp_path / "missing")])
    assert code == 2  # the command ran (and refused the missing folder) after the call
    assert calls == ["threads"]


def test_a_fresh_dipnet_process_loads_torch_with_passive_threads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # The train command's implementation replaced by one that reports what torch would see.
    probe = ("import os, sys, types; from dipnet import cli; "
             "fake = types.ModuleType('dipnet.experiments.cli'); "
             "fake.run_train_command = lambda args: print(os.environ.get('OMP_WAIT_POLICY')) or 0; "
             "sys.modules['dipnet.experiments.cli'] = fake; "
             "sys.exit(cli.main(['train', '--dataset', 'digits']))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split()[:1] == ["PASSIVE"], out.stdout + out.stderr
