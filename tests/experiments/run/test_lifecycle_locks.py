"""Output folders are locked, and the workers of a sweep die with it (issue 9, items 6 and 7).

The lock holder here is a real second process: `fcntl.flock` locks belong to an open file, so
only another process shows what a user with two terminals would see (and its pid).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from dipnet.cli import main

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dipnet.experiments.run.locks import FolderLock
    locks = [FolderLock.acquire(Path(p)) for p in sys.argv[1:]]
    print("locked", flush=True)
    time.sleep(300)
""")
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-param", "hidden=[16]",
         "--epochs", "1", "--batch-size", "64", "--threads", "1", "--mc-samples", "2",
         "--no-progress"]
TINY_SWEEP = {"dataset": "digits", "model": "mlp", "methods": ["standard"], "seeds": [0],
              "run": {"epochs": 1, "num_threads": 1, "batch_size": 64, "mc_samples": 2,
                      "model_params": {"hidden": [16]}}}


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """One other process holding three folders: a run, a sweep, and a run inside a sweep."""
    root = tmp_path_factory.mktemp("locks")
    folders = {"run": root / "run", "sweep": root / "sweep",
               "inner": root / "sweep2" / "runs" / "digits-mlp-standard-none-s0"}
    cfg = root / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(TINY_SWEEP))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, folders.values())],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, folders, cfg
    finally:
        proc.kill()
        proc.wait()


def _refused(capsys, pid: int) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"is in use by another dipnet process (pid {pid}); wait for it or choose another " \
           "--out" in err, err
    return err


def test_second_train_on_a_locked_folder_is_one_line_and_touches_nothing(held, capsys):
    proc, folders, _ = held
    out = folders["run"]
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert str(out) in _refused(capsys, proc.pid)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


def test_second_compare_on_a_locked_sweep_is_one_line_and_touches_nothing(held, capsys):
    proc, folders, cfg = held
    out = folders["sweep"]
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    _refused(capsys, proc.pid)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no sweep.yaml, no runs


def test_a_run_locked_inside_a_sweep_stops_the_sweep_cleanly(held, capsys):
    """The sweep lock and a run lock are different files: a held run lock is reported, not a
    deadlock, and the sweep lock is released afterwards."""
    proc, folders, cfg = held
    out = folders["inner"].parents[1]
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--no-report"]) == 2
    _refused(capsys, proc.pid)
    assert not (out / ".lock").exists()


def test_locks_of_a_killed_process_are_free_at_once(held):
    proc, folders, cfg = held
    proc.kill()  # SIGKILL: no clean-up ran; the kernel drops the flocks with the process
    proc.wait()
    assert main([*TRAIN, "--out", str(folders["run"])]) == 0
    assert json.loads((folders["run"] / "metrics.json").read_text())["status"] == "finished"
    assert main(["compare", "--config", str(cfg), "--out", str(folders["inner"].parents[1]),
                 "--quiet", "--no-report"]) == 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not reaped it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_compare_takes_its_workers_with_it(tmp_path):
    sweep = {**TINY_SWEEP, "methods": ["standard", "dipnet"], "jobs": 2,
             "run": {**TINY_SWEEP["run"], "epochs": 500}}  # far longer than the test
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dipnet", "compare", "--config", str(cfg),
                             "--out", str(out), "--quiet", "--no-report"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        # wait until both workers are training (each has written its run's train.log)
        while len(list(out.glob("runs/*/train.log"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the workers never started training"
            time.sleep(0.05)
        workers = [p for p in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], "workers outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers:  # never leave a stray trainer behind, even when the test fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
