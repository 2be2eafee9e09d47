"""Execution backends of a sweep (issue 12): local processes, submitit jobs, Ray tasks.

The same tiny sweep (digits, an MLP, standard and dipnet, one seed, one epoch) trains
bit-identical runs with --backend local, submitit (its local executor: one process per job)
and ray (a local 2-CPU instance; ``slow``: starting Ray takes 10-20 s here, run it with
``pytest -m slow tests/experiments/sweep/test_backends.py``). Settings are checked before anything is written;
a task whose driver is gone stops (its process dies, its heartbeat stops, or another driver
took the folder over).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.sweep import backends
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.sweep.grid import SweepConfig, load_sweep_config, run_sweep

TINY = {"dataset": "digits", "model": "mlp", "methods": ["standard", "dipnet"], "seeds": [0],
        "run": {"epochs": 1, "num_threads": 1, "batch_size": 64,
                "model_params": {"hidden": [32]}}}
SUBMITIT = {"name": "submitit", "cluster": "local", "poll_s": 0.2}
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="the cluster extra (submitit) is not installed")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the cluster extra (ray) is not installed")


def _outcome(result) -> dict[str, tuple[float, float, str]]:
    """Run name -> (test accuracy, final validation accuracy, sha256 of model.safetensors)."""
    out = {}
    for d in result.run_dirs:
        m = json.loads((d / "metrics.json").read_text())
        out[d.name] = (m["test_accuracy"], m["val_accuracy"],
                       hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    """The reference: the sweep with the local backend, in this process."""
    out = tmp_path_factory.mktemp("local")
    result = run_sweep(SweepConfig.from_dict(TINY), out, progress=False)
    assert len(result.trained) == 2 and not result.failed
    return result


@needs_submitit
def test_submitit_backend_trains_identical_runs_in_the_same_folders(local_result, tmp_path):
    """`dipnet compare --backend submitit` (the local executor, 2 jobs at once) against the
    same sweep run locally."""
    assert main(["compare", "--dataset", "digits", "--methods", "standard,dipnet", "--seeds",
                 "1", "--epochs", "1", "--batch-size", "64", "--set", "model.hidden=[32]",
                 "--jobs", "2", "--backend", "submitit", "--set", "backend.cluster=local",
                 "--set", "backend.poll_s=0.2", "--out", str(tmp_path), "--quiet",
                 "--no-report"]) == 0
    sweep = load_sweep_config(tmp_path / "sweep.yaml")
    assert sweep.backend == SUBMITIT and sweep.jobs == 2
    result = run_sweep(sweep, tmp_path, progress=False)  # a rerun: everything is reused
    assert result.trained == [] and len(result.reused) == 2
    assert [d.name for d in result.run_dirs] == [d.name for d in local_result.run_dirs]
    assert _outcome(result) == _outcome(local_result)  # accuracies and weights, bit for bit
    # it did run as submitit jobs (one log folder per job id), and the driver left no trace
    assert len(_job_folders(tmp_path)) == 2
    assert not (tmp_path / backends.HEARTBEAT_NAME).exists()
    assert not (tmp_path / ".lock").exists()


def _job_folders(out: Path) -> list[Path]:
    return [p for p in (out / "submitit").iterdir() if p.name.isdigit()]


@pytest.mark.slow
@needs_submitit
def test_a_user_error_inside_a_job_stops_the_sweep_with_its_line(tmp_path):
    """A run folder held by another process: the job's UserError reaches the driver as one
    line (the same as with local processes), and the sweep folder is released."""
    sweep = SweepConfig.from_dict({**TINY, "methods": ["standard"], "backend": SUBMITIT})
    held = FolderLock.acquire(tmp_path / "runs" / "digits-mlp-standard-none-s0")
    try:
        with pytest.raises(UserError, match="is in use by another dipnet process"):
            run_sweep(sweep, tmp_path, progress=False)
    finally:
        held.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.slow
@needs_ray
def test_ray_backend_trains_identical_runs(local_result, tmp_path, monkeypatch):
    """A local Ray instance of jobs x threads = 2 CPUs, started for the sweep and stopped."""
    import ray

    sweep = SweepConfig.from_dict({**TINY, "jobs": 2, "backend": {"name": "ray"}})
    result = run_sweep(sweep, tmp_path, progress=False)
    assert not result.failed and len(result.trained) == 2
    assert _outcome(result) == _outcome(local_result)
    assert not ray.is_initialized()  # the instance the sweep started is gone
    assert not (tmp_path / backends.HEARTBEAT_NAME).exists()


# ---------------------------------------------------------------------- killing the driver
DRIVER = textwrap.dedent("""
    import sys
    from dipnet.experiments.sweep.grid import SweepConfig, load_sweep_config, run_sweep
    if __name__ == "__main__":
        backend = {"name": sys.argv[1], "orphan_timeout_s": 30}
        if sys.argv[1] == "submitit":
            backend.update(cluster="local", poll_s=0.2)
        sweep = {"dataset": "digits", "model": "mlp", "methods": ["standard", "dipnet"],
                 "seeds": [0], "jobs": 2, "backend": backend,
                 "run": {"epochs": 500, "num_threads": 1, "model_params": {"hidden": [32]}}}
        run_sweep(SweepConfig.from_dict(sweep), sys.argv[2], progress=False)
""")


def _task_pids(out: Path) -> list[int]:
    """The pids training the runs: each run's lock file names its holder."""
    pids = []
    for lock in sorted(out.glob("runs/*/.lock")):
        text = lock.read_text().strip()
        if text.isdigit() and (out / "runs" / lock.parent.name / "checkpoint").exists():
            pids.append(int(text))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("submitit", marks=needs_submitit),
                                  pytest.param("ray", marks=needs_ray)])
def test_killing_the_driver_leaves_no_task_running(name, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "sweep"
    driver = subprocess.Popen([sys.executable, str(script), name, str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(_task_pids(out)) < 2:  # both runs past their first epoch
            assert driver.poll() is None and time.monotonic() < deadline, "no task started"
            time.sleep(0.5)
        pids = _task_pids(out)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 15  # the watchdog checks the driver every second
        while any(backends._alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(backends._alive(p) for p in pids), f"tasks {pids} outlived the driver"
    finally:
        if driver.poll() is None:
            driver.kill()


# ---------------------------------------------------------------------- the task watchdog
def _watch(monkeypatch, beat: dict, driver_pid: int | None, after=None, seconds: float = 10):
    """Run a task's watchdog in a thread; returns why it stopped the task (None: it did not
    within ``seconds``). ``after()`` runs once the watchdog is watching."""
    import threading

    why: list[str] = []

    class Stopped(Exception):
        pass

    def orphaned(message: str) -> None:  # instead of os._exit: record, end the thread
        why.append(message)
        raise Stopped

    def watch() -> None:
        try:
            backends._watch_heartbeat(beat, stop, driver_pid)
        except Stopped:
            pass

    monkeypatch.setattr(backends, "_orphaned", orphaned)
    stop = threading.Event()
    thread = threading.Thread(target=watch)
    thread.start()
    if after is not None:
        time.sleep(0.3)
        after()
    thread.join(timeout=seconds)
    stop.set()
    thread.join()
    return why[0] if why else None


def _beat(folder: Path, timeout: float) -> dict:
    path = folder / backends.HEARTBEAT_NAME
    path.write_text("driver-token 1\n")
    return {"path": str(path), "token": "driver-token", "timeout": timeout, "interval": 0.1}


def test_a_task_stops_when_its_heartbeat_stops(tmp_path, monkeypatch):
    t0 = time.monotonic()
    why = _watch(monkeypatch, _beat(tmp_path, timeout=1.0), None)
    assert why is not None and "heartbeat" in why and "stopped 1 s ago" in why
    assert 1.0 <= time.monotonic() - t0 < 5


def test_a_task_stops_when_another_driver_takes_the_folder_over(tmp_path, monkeypatch):
    beat = _beat(tmp_path, timeout=60.0)
    why = _watch(monkeypatch, beat, None,
                 after=lambda: Path(beat["path"]).write_text("another-driver 1\n"))
    assert why == "another dipnet process took over the sweep folder"


def test_a_task_on_the_drivers_machine_stops_when_the_driver_exits(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    why = _watch(monkeypatch, _beat(tmp_path, timeout=60.0), dead.pid)
    assert why == f"the driver (pid {dead.pid}) exited"
    assert backends._alive(os.getpid())


def test_a_live_heartbeat_keeps_the_task_running(tmp_path, monkeypatch):
    beat = backends._Heartbeat(tmp_path, orphan_timeout_s=1.0)  # beats every 0.2 s
    try:
        assert _watch(monkeypatch, beat.payload(), os.getpid(), seconds=2.5) is None
    finally:
        beat.stop()


def test_run_remote_reports_outcomes_the_same_way_for_every_backend(tmp_path):
    beat = backends._Heartbeat(tmp_path, orphan_timeout_s=30)
    try:
        def call(fn, *args):
            task = backends.Task(key="k", fn=fn, args=args)
            payload = backends._payload(task, beat)
            payload["host"] = "another-node"  # no pid watch on the test process
            return backends.run_remote(payload)

        assert call(divmod, 7, 2) == ("ok", (3, 1))
        assert call(int, "x")[0] == "error" and "ValueError" in call(int, "x")[1]
        status, msg = call(_raise_user_error)
        assert (status, msg) == ("user_error", "fix this")
    finally:
        beat.stop()
    assert not (tmp_path / backends.HEARTBEAT_NAME).exists()


def _raise_user_error() -> None:
    raise UserError("fix this")


def test_a_user_error_from_any_task_cancels_the_rest_and_is_raised():
    """What the remote backends do with a task's outcome (`_handle`); the same line a local
    process pool raises (end to end through submitit: the slow test above)."""
    seen = []
    task = backends.Task(key="run-a", fn=divmod, args=())
    backends._handle(task, ("ok", 1), lambda t, v, e: seen.append((t.key, v, e)))
    backends._handle(task, ("error", "ValueError: bad"), lambda t, v, e: seen.append((t.key, v, e)))
    assert seen == [("run-a", 1, None), ("run-a", None, "ValueError: bad")]
    with pytest.raises(UserError, match="^runs/x is in use"):
        backends._handle(task, ("user_error", "runs/x is in use"), lambda *a: None)


def test_a_task_refuses_a_folder_its_node_cannot_see(tmp_path):
    beat = _beat(tmp_path, timeout=1.0)
    beat["path"] = str(tmp_path / "not-shared" / backends.HEARTBEAT_NAME)
    payload = {"cwd": str(tmp_path), "host": "another-node", "pid": os.getpid(),
               "allowance": (False, ()), "threads": 1, "heartbeat": beat, "fn": divmod,
               "args": (1, 1)}
    status, msg = backends.run_remote(payload)
    assert status == "user_error" and "filesystem every node shares" in msg
    payload.update(cwd=str(tmp_path / "gone"))
    status, msg = backends.run_remote(payload)
    assert status == "user_error" and "does not exist on node" in msg


# ---------------------------------------------------------------------- settings
COMPARE = ["compare", "--dataset", "digits", "--methods", "standard", "--seeds", "1",
           "--epochs", "1", "--quiet", "--no-report"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "backend.slurm_partition=gpu"], "do not apply to the local backend"),
    (["--address", "auto"], "--address is for --backend ray"),
    (["--backend", "submitit", "--set", "backend.slurm_partitio=gpu"],
     "backend.slurm_partitio is not a submitit parameter"),
    (["--backend", "ray", "--set", "backend.slurm_partition=gpu"],
     "do not apply to the ray backend"),
    (["--backend", "submitit", "--set", "backend.cluster=moon"], "backend.cluster='moon'"),
    (["--backend", "ray", "--set", "backend.orphan_timeout_s=0"], "orphan_timeout_s"),
])
def test_bad_backend_settings_are_one_line_before_anything_is_written(extra, message, tmp_path,
                                                                       capsys):
    out = tmp_path / "sweep"
    assert main([*COMPARE, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_missing_backend_package_names_the_cluster_extra(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    out = tmp_path / "sweep"
    assert main([*COMPARE, "--backend", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("dipnet: error: --backend ray needs the 'ray' package (not installed): pip "
                   "install 'dipnet[cluster]'")
    assert not out.exists()


def test_backend_options_land_in_the_sweep_and_a_new_backend_replaces_the_files(tmp_path):
    from dipnet.cli import build_parser
    from dipnet.cli.sweep import _sweep_from_args

    def sweep_of(*argv):
        return _sweep_from_args(build_parser().parse_args(["compare", *argv]))

    got = sweep_of("--dataset", "digits", "--methods", "standard", "--backend", "submitit",
                   "--set", "backend.cluster=local", "--set", "backend.slurm_partition=gpu",
                   "--set", "backend.timeout_min=30")
    assert got.backend == {"name": "submitit", "cluster": "local", "slurm_partition": "gpu",
                           "timeout_min": 30}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("dataset: digits\nmodel: mlp\nmethods: [standard]\n"
                   "backend: {name: ray, address: 'head:6379'}\n")
    assert sweep_of("--config", str(cfg)).backend == {"name": "ray", "address": "head:6379"}
    assert sweep_of("--config", str(cfg), "--backend", "local").backend == {"name": "local"}
    assert sweep_of("--config", str(cfg), "--address", "auto").backend == {
        "name": "ray", "address": "auto"}


def test_gpu_requests_follow_the_run_device():
    assert backends.task_gpus({}, "cuda") == 1.0
    assert backends.task_gpus({}, "cuda:1") == 1.0
    assert backends.task_gpus({}, "cpu") == 0.0
    assert backends.task_gpus({"gpus_per_run": 0.5}, "cpu") == 0.5
