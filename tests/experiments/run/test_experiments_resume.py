"""A real kill: `python -m dipnet train` is SIGKILLed after its first checkpoint, started again
with the same arguments, and must end with exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from dipnet.cli import main

ARGS = ["train", "--dataset", "digits", "--model", "mlp", "--model-param", "hidden=[64]",
        "--method", "dipnet", "--epochs", "25", "--batch-size", "32", "--threads", "1",
        "--seed", "3", "--no-progress"]


def _timeless(history):
    return [{k: v for k, v in row.items() if "time" not in k} for row in history]


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dipnet", *ARGS, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = killed / "checkpoint" / "latest.json"
    deadline = time.monotonic() + 120
    while not pointer.exists():
        assert proc.poll() is None, proc.stderr.read().decode()  # died before a checkpoint
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(pointer.read_text())["epoch"]
    assert 1 <= done < 25, f"kill landed after epoch {done}"  # really mid-run
    assert not (killed / "metrics.json").exists()

    # same arguments again: resumes (in-process here, the killed one was a real process)
    assert main([*ARGS, "--out", str(killed)]) == 0
    assert main([*ARGS, "--out", str(clean)]) == 0
    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((clean / "metrics.json").read_text())
    assert f"resumed from the checkpoint after epoch {done}" in (killed / "train.log").read_text()
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["test_accuracy_mc"] == b["test_accuracy_mc"]  # RNG restored: same MC draws
    assert a["variances"] == b["variances"]
    assert _timeless(a["history"]) == _timeless(b["history"])
