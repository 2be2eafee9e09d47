"""Execution backends: where the runs of a sweep (and the trials of a tune) are executed.

Three backends run the SAME task functions (`sweep._train_one`, `sweep._evaluate_one`,
`tune._run_trial`), so a run trains identically wherever it runs: the same `run_training`,
the same run folder under the sweep folder, its own folder lock, resume from its checkpoint.

- ``local`` (default): this machine. ``jobs`` worker processes (spawned; one torch thread each
  unless the run says otherwise) that die with the sweep (`locks.die_with_parent`); one job
  runs in this process.
- ``ray``: every task a Ray task asking for its CPUs (the run's threads) and, for a CUDA run,
  one GPU; on a running cluster (``address``: ``auto`` or ``HOST:PORT``) or on a local Ray
  instance started for the sweep with ``jobs x threads`` CPUs (stopped at the end).
- ``submitit``: every task a job submitted through ``submitit.AutoExecutor``: Slurm where
  ``sbatch`` exists (sbatch parameters from the backend settings), else submitit's local
  executor (``cluster: local``); at most ``jobs`` jobs in flight. A job that hits its time
  limit or is preempted is requeued and resumes from its checkpoint.

The remote backends need every node to see the sweep folder at the same path (a shared
filesystem) and dipnet installed in the same environment; a task refuses to start otherwise.

Tasks of a driver that died stop: a remote task on the driver's host checks every second that
the driver's process is alive (submitit's local executor, a local Ray instance); every remote
task also watches a heartbeat file that the driver rewrites every few seconds in the folder it
holds locked, and exits when the heartbeat stops (``orphan_timeout_s``, default 120 s) or
another driver took the folder over.
Ray additionally cancels the tasks of a driver that exits (its own fate-sharing), and the
driver cancels its outstanding tasks and jobs when it stops on an error, Ctrl-C or SIGTERM.

Settings (a sweep's ``backend:`` mapping, ``--backend`` / ``--address`` / ``--set
backend.KEY=VALUE`` on the command line) are checked without importing Ray or submitit by
`check_settings`; `require` checks the packages (one line naming the ``cluster`` extra).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from dipnet._util import trust
from dipnet._util.modules import module_installed
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.run.locks import die_with_parent

#: The exit status of a task process that stopped because its driver is gone.
EXIT_ORPHANED = 3

__all__ = ["BACKENDS", "Task", "Backend", "LocalBackend", "RayBackend", "SubmititBackend",
           "check_settings", "require", "make_backend", "backend_name", "task_gpus",
           "run_remote", "HEARTBEAT_NAME"]

BACKENDS = ("local", "ray", "submitit")
#: The heartbeat file a driver rewrites in the folder it holds locked (removed at the end).
HEARTBEAT_NAME = ".driver-heartbeat"
DEFAULT_ORPHAN_TIMEOUT_S = 120.0
#: Slurm's time limit of a submitit job unless ``timeout_min`` / ``slurm_time`` is given; a
#: run still training then is requeued and resumes from its last epoch's checkpoint.
DEFAULT_TIMEOUT_MIN = 240

# Settings every backend reads; the rest are per backend. Submitit's own parameters (generic:
# timeout_min, mem_gb, cpus_per_task, gpus_per_node...; Slurm: slurm_partition, slurm_account,
# slurm_qos, slurm_additional_parameters, slurm_setup...) are passed to AutoExecutor as given.
_COMMON = {"name"}
_RAY = {"address", "gpus_per_run", "max_retries", "orphan_timeout_s"}
_SUBMITIT = {"cluster", "folder", "poll_s", "gpus_per_run", "orphan_timeout_s"}
_SUBMITIT_CLUSTERS = ("auto", "slurm", "local", "debug")
_PACKAGES = {"ray": "ray", "submitit": "submitit"}


# ---------------------------------------------------------------------- settings
def backend_name(settings: dict[str, Any] | None) -> str:
    """The backend a settings mapping names (``local`` when empty)."""
    return str((settings or {}).get("name") or "local")


def check_settings(settings: Any) -> dict[str, Any]:
    """Validate a backend settings mapping without importing Ray or submitit.

    Takes ``None``, a backend name, or a mapping (``name`` plus that backend's keys). Returns
    the mapping (a name alone becomes ``{name: NAME}``). Raises UserError naming the bad key or
    value and the allowed ones.
    """
    if settings is None:
        return {}
    if isinstance(settings, str):
        settings = {"name": settings}
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise UserError("backend settings must be a mapping (backend: {name: ray, address: "
                        "auto}) or a backend name")
    name = backend_name(settings)
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    keys = set(settings) - _COMMON
    if name == "local":
        if keys:
            raise UserError(f"backend setting(s) {', '.join(sorted(keys))} do not apply to the "
                            f"local backend: they are for --backend ray or submitit")
    elif name == "ray":
        stray = sorted(keys - _RAY)
        if stray:
            raise UserError(f"backend setting(s) {', '.join(stray)} do not apply to the ray "
                            f"backend; its settings are {', '.join(sorted(_RAY))}")
    else:  # submitit's own parameters are checked against its lists by `require`
        if "address" in settings:
            raise UserError("--address is for --backend ray; the submitit backend finds Slurm "
                            "itself (or set backend.cluster=local)")
        cluster = settings.get("cluster", "auto")
        if cluster not in _SUBMITIT_CLUSTERS:
            raise UserError(f"backend.cluster={cluster!r} is unknown: choose from "
                            f"{', '.join(_SUBMITIT_CLUSTERS)}")
        poll = settings.get("poll_s", 1.0)
        if not _is_number(poll) or not poll > 0:
            raise UserError(f"backend.poll_s must be a number > 0, got {poll!r}")
    if "address" in settings and not (isinstance(settings["address"], str)
                                      and settings["address"]):
        raise UserError(f"--address must be auto or HOST:PORT, got {settings['address']!r}")
    gpus = settings.get("gpus_per_run")
    if gpus is not None and (not _is_number(gpus) or gpus < 0):
        raise UserError(f"backend.gpus_per_run must be a number >= 0, got {gpus!r}")
    retries = settings.get("max_retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"backend.max_retries must be an integer >= 0, got {retries!r}")
    timeout = settings.get("orphan_timeout_s", DEFAULT_ORPHAN_TIMEOUT_S)
    if not _is_number(timeout) or not timeout >= 1:
        raise UserError(f"backend.orphan_timeout_s must be a number >= 1 (seconds), got "
                        f"{timeout!r}")
    return settings


def require(settings: dict[str, Any] | None) -> None:
    """Check that the backend's package is installed (and, for submitit, that every sbatch
    parameter is one submitit knows); imports submitit but never starts anything.

    Raises:
        UserError: one line naming the missing package and ``pip install 'dipnet[cluster]'``,
            or the unknown submitit parameter.
    """
    settings = check_settings(settings)
    name = backend_name(settings)
    if name == "local":
        return
    module = _PACKAGES[name]
    if not module_installed(module):
        raise UserError(f"--backend {name} needs the '{module}' package (not installed): pip "
                        f"install 'dipnet[cluster]'")
    if name == "submitit":
        _submitit_parameters(settings)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def task_gpus(settings: dict[str, Any] | None, device: str | None) -> float:
    """GPUs one task asks for: ``gpus_per_run`` if set; else 1 for a run on ``cuda``/``cuda:N``,
    or on ``auto`` when this (driver) machine sees a GPU; else 0."""
    settings = settings or {}
    if settings.get("gpus_per_run") is not None:
        return float(settings["gpus_per_run"])
    device = str(device or "auto")
    if device.startswith("cuda"):
        return 1.0
    if device == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 0.0


# ---------------------------------------------------------------------- tasks
@dataclass
class Task:
    """One unit of work: ``fn(*args)`` for ``key`` (a run folder, a trial).

    ``fn`` must be a module-level function (it is pickled by reference); it returns a value
    for the caller and raises `UserError` for a problem the user must fix (that stops the
    whole sweep). ``cpus`` and ``gpus`` are what a remote backend reserves for it.
    """

    key: Any
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    cpus: int = 1
    gpus: float = 0.0


#: ``done(task, value, error)``: ``value`` is what ``fn`` returned (``error`` None), or
#: ``error`` is one line saying why the task did not finish (a crashed worker, a failed job).
Done = Callable[[Task, Any, "str | None"], None]


class Backend:
    """Runs tasks and reports each as it finishes; a UserError from a task cancels the rest and
    is raised. Start-up (a Ray instance, an executor) happens on the first non-empty `run`;
    `close` releases it. Use as a context manager."""

    name = "base"

    def run(self, tasks: Sequence[Task], done: Done,
            starting: Callable[[Task], None] | None = None) -> None:
        """Run every task (``starting(task)`` is called as one begins, where that is known);
        returns when all finished. Raises UserError from a task, after cancelling the rest."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what `run` started (idempotent)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_backend(settings: dict[str, Any] | None, *, jobs: int, folder: Path,
                 cpus_per_task: int = 1) -> Backend:
    """The backend named by ``settings`` (nothing is started yet).

    Args:
        settings: a checked settings mapping (`check_settings`).
        jobs: parallel tasks (local processes, a local Ray instance's size / threads, submitit
            jobs in flight).
        folder: the folder the driver holds locked (the sweep's or tune's ``--out``): the
            heartbeat and submitit's logs go there.
        cpus_per_task: threads per task (sizes a local Ray instance).
    """
    settings = check_settings(settings)
    name = backend_name(settings)
    if name == "ray":
        return RayBackend(settings, jobs, folder, cpus_per_task)
    if name == "submitit":
        return SubmititBackend(settings, jobs, folder)
    return LocalBackend(jobs)


# ---------------------------------------------------------------------- local
def _single_thread() -> None:
    """One torch thread per worker, so ``jobs`` workers share the cores."""
    import torch

    torch.set_num_threads(1)


def _worker_init(parent_pid: int, allowance: tuple[bool, tuple[str, ...]]) -> None:
    """Pool initializer: die with the sweep process, one torch thread, the parent's allowance
    of user code (the sweep's own model)."""
    die_with_parent(parent_pid)
    _single_thread()
    trust.set_allowance(allowance)


def process_pool(jobs: int) -> cf.ProcessPoolExecutor:
    """``jobs`` spawned worker processes that die with this one (see `_worker_init`)."""
    # spawn, not fork: torch's thread pools do not survive a fork reliably.
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(
        "spawn"), initializer=_worker_init, initargs=(os.getpid(), trust.allowance()))


class LocalBackend(Backend):
    """This machine: one task at a time in this process, or ``jobs`` worker processes."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def run(self, tasks: Sequence[Task], done: Done,
            starting: Callable[[Task], None] | None = None) -> None:
        if self.jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                if starting is not None:
                    starting(task)
                done(task, task.fn(*task.args), None)
            return
        with process_pool(self.jobs) as pool:
            futs = {pool.submit(t.fn, *t.args): t for t in tasks}
            for fut in cf.as_completed(futs):
                try:
                    value, err = fut.result(), None
                except UserError:
                    for f in futs:
                        f.cancel()
                    raise
                except Exception as exc:  # a worker died (e.g. out of memory)
                    value, err = None, f"{type(exc).__name__}: {exc}"
                done(futs[fut], value, err)


# ---------------------------------------------------------------------- remote: both sides
class _Heartbeat:
    """The driver's side of orphan detection: rewrites ``folder/.driver-heartbeat`` with its
    token and a counter every ``interval`` seconds from a daemon thread."""

    def __init__(self, folder: Path, orphan_timeout_s: float) -> None:
        self.path = Path(folder) / HEARTBEAT_NAME
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.timeout = float(orphan_timeout_s)
        # Several beats per timeout: a slow filesystem or a busy driver misses some.
        self.interval = max(0.2, min(10.0, self.timeout / 6))
        self._stop = threading.Event()
        self._count = 0
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="dipnet-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._count += 1
        try:
            atomic_write_text(self.path, f"{self.token} {self._count}\n")
        except OSError:
            pass  # a missed beat; the tasks allow several

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def payload(self) -> dict[str, Any]:
        """What a task needs to watch this heartbeat."""
        return {"path": str(self.path.absolute()), "token": self.token,
                "timeout": self.timeout, "interval": self.interval}

    def stop(self) -> None:
        """Stop beating and remove the file (tasks still running then exit)."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:  # missing for a moment, or ESTALE on NFS while the driver replaces it
        return None


def _orphaned(message: str) -> None:
    print(f"dipnet: {message}; stopping this task (its run resumes from its checkpoint)",
          file=sys.stderr, flush=True)
    os._exit(EXIT_ORPHANED)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) is running; a zombie counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _watch_heartbeat(beat: dict[str, Any], stop: threading.Event,
                     driver_pid: int | None = None) -> None:
    """Task side: exit the process when the driver is gone: its process (``driver_pid``, when
    it runs on this machine) exited, its heartbeat stopped, or another driver took over.

    Read errors count as "no news" (only a timeout ends the task), so a filesystem hiccup
    never kills a healthy run; time is this process's monotonic clock, so clock skew between
    nodes does not matter.
    """
    last, since = None, time.monotonic()
    period = min(1.0, beat["interval"]) if driver_pid is not None else beat["interval"]
    while not stop.wait(period):
        if driver_pid is not None and not _alive(driver_pid):
            _orphaned(f"the driver (pid {driver_pid}) exited")
        text = _read(beat["path"])
        if text is not None and text.strip() and not text.startswith(beat["token"] + " "):
            _orphaned("another dipnet process took over the sweep folder")
        if text is not None and text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since > beat["timeout"]:
            _orphaned(f"the driver's heartbeat ({beat['path']}) stopped "
                      f"{beat['timeout']:.0f} s ago")


def _wait_visible(beat: dict[str, Any], limit_s: float) -> bool:
    """True once the heartbeat file is readable with the driver's token (a shared filesystem
    may show a new file on another node a little later)."""
    deadline = time.monotonic() + limit_s
    while True:
        text = _read(beat["path"])
        if text is not None and text.startswith(beat["token"] + " "):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(min(1.0, beat["interval"]))


def run_remote(payload: dict[str, Any]) -> tuple[str, Any]:
    """Entry point of a task on a Ray worker or a submitit job.

    Takes the payload built by `_payload`: the function and its arguments, the driver's
    working folder, host and pid, its allowance of user code, the task's threads and the
    heartbeat to watch. Returns ``("ok", value)``, ``("user_error", message)`` or
    ``("error", "Type: message")``: exceptions never cross the process boundary, so every
    backend reports them the same way.
    """
    stop = threading.Event()
    try:
        host = socket.gethostname()
        cwd = payload["cwd"]
        if not os.path.isdir(cwd):
            return ("user_error", f"the folder the sweep was started in ({cwd}) does not exist "
                                  f"on node {host}: start dipnet from a folder on a filesystem "
                                  f"every node shares")
        os.chdir(cwd)  # relative --out, --data-dir and .npz paths mean what they meant there
        beat = payload["heartbeat"]
        if not _wait_visible(beat, min(60.0, beat["timeout"])):
            return ("user_error", f"{beat['path']} is not visible on node {host}: the sweep "
                                  f"folder must be on a filesystem every node shares, at the "
                                  f"same path")
        local = payload["pid"] if host == payload["host"] else None
        threading.Thread(target=_watch_heartbeat, args=(beat, stop, local),
                         name="dipnet-driver-watch", daemon=True).start()
        trust.set_allowance(payload["allowance"])
        import torch

        torch.set_num_threads(max(1, int(payload["threads"])))
        return ("ok", payload["fn"](*payload["args"]))
    except UserError as err:
        return ("user_error", str(err))
    except Exception as err:  # noqa: BLE001 (reported as this task's failure)
        return ("error", f"{type(err).__name__}: {err}")
    finally:
        stop.set()


def _payload(task: Task, beat: _Heartbeat) -> dict[str, Any]:
    return {"fn": task.fn, "args": task.args, "cwd": os.getcwd(),
            "host": socket.gethostname(), "pid": os.getpid(), "allowance": trust.allowance(),
            "threads": task.cpus, "heartbeat": beat.payload()}


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit] + "..."


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler ending the driver, `kill`) unwinds like Ctrl-C, so the driver's
    ``finally`` cancels its outstanding tasks instead of leaving them to the heartbeat."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _handle(task: Task, result: Any, done: Done) -> None:
    """Report one remote task's ``run_remote`` result; a user error is raised."""
    status, value = result
    if status == "user_error":
        raise UserError(value)
    if status == "ok":
        done(task, value, None)
    else:
        done(task, None, value)


# ---------------------------------------------------------------------- ray
class RayBackend(Backend):
    """Every task a Ray task (``num_cpus`` = its threads, ``num_gpus`` for CUDA runs)."""

    name = "ray"

    def __init__(self, settings: dict[str, Any], jobs: int, folder: Path,
                 cpus_per_task: int = 1) -> None:
        self.settings = settings
        self.jobs = jobs
        self.folder = Path(folder)
        self.cpus_per_task = max(1, int(cpus_per_task))
        self._started_ray = False
        self._beat: _Heartbeat | None = None
        self._remote: Any = None

    def _start(self) -> Any:
        import ray

        if self._remote is not None:
            return ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            address = self.settings.get("address")
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    # A private instance as big as --jobs; a small object store (tasks only
                    # pass configs and short results) keeps it light on a laptop.
                    ray.init(num_cpus=self.jobs * self.cpus_per_task,
                             object_store_memory=200 * 2**20, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise UserError(f"could not start or reach {where} ({_first_line(str(err))}): "
                                f"start one with `ray start --head` and pass --address auto, "
                                f"or leave --address out for a local instance") from None
            self._started_ray = True
        self._beat = _Heartbeat(self.folder, float(self.settings.get(
            "orphan_timeout_s", DEFAULT_ORPHAN_TIMEOUT_S)))
        self._remote = ray.remote(run_remote)
        return ray

    def run(self, tasks: Sequence[Task], done: Done,
            starting: Callable[[Task], None] | None = None) -> None:
        if not tasks:
            return
        ray = self._start()
        assert self._beat is not None
        pending: dict[Any, Task] = {}
        with _sigterm_as_exit():
            try:
                for task in tasks:
                    ref = self._remote.options(
                        num_cpus=task.cpus, num_gpus=task.gpus,
                        max_retries=int(self.settings.get("max_retries", 0)),
                        name=f"dipnet:{Path(str(task.key)).name}"[:100],
                    ).remote(_payload(task, self._beat))
                    pending[ref] = task
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        task = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except Exception as exc:  # noqa: BLE001 (a crashed or killed worker)
                            done(task, None, f"{type(exc).__name__}: {_first_line(str(exc))}")
                            continue
                        _handle(task, result, done)
            finally:
                for ref in pending:  # an error, Ctrl-C or SIGTERM: leave nothing running
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        self._remote = None


# ---------------------------------------------------------------------- submitit
def _submitit_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that are submitit parameters, checked against submitit's own lists."""
    import submitit

    params = {k: v for k, v in settings.items() if k not in _COMMON | _SUBMITIT}
    generic = set(submitit.AutoExecutor._valid_parameters())
    own = {"slurm": set(submitit.SlurmExecutor._valid_parameters()),
           "local": set(submitit.LocalExecutor._valid_parameters())}
    for key in params:
        prefix, _, rest = key.partition("_")
        if key in generic or (prefix in own and rest in own[prefix]):
            continue
        raise UserError(f"backend.{key} is not a submitit parameter: use one of "
                        f"{', '.join(sorted(generic))}, slurm_<sbatch option> "
                        f"({', '.join(sorted(own['slurm']))}) or {', '.join(sorted(_SUBMITIT))} "
                        f"(see docs/cluster.md)")
    return params


class _SubmititCall:
    """The callable a submitit job runs. Its ``checkpoint`` makes submitit requeue a job that
    reached its time limit or was preempted; the run then resumes from its checkpoint."""

    def __call__(self, payload: dict[str, Any]) -> tuple[str, Any]:
        return run_remote(payload)

    def checkpoint(self, payload: dict[str, Any]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, payload)


class SubmititBackend(Backend):
    """Every task a submitit job (Slurm, or the local executor); ``jobs`` in flight at most."""

    name = "submitit"

    def __init__(self, settings: dict[str, Any], jobs: int, folder: Path) -> None:
        self.settings = settings
        self.jobs = max(1, jobs)
        self.folder = Path(folder)
        self._executor: Any = None
        self._user_params: dict[str, Any] = {}
        self._beat: _Heartbeat | None = None

    def _start(self) -> Any:
        if self._executor is not None:
            return self._executor
        import submitit

        params = _submitit_parameters(self.settings)
        cluster = self.settings.get("cluster", "auto")
        logs = self.settings.get("folder") or str(self.folder / "submitit" / "%j")
        executor = submitit.AutoExecutor(folder=logs,
                                          cluster=None if cluster == "auto" else cluster)
        if "timeout_min" not in params and "slurm_time" not in params:
            params["timeout_min"] = DEFAULT_TIMEOUT_MIN
        executor.update_parameters(**params)
        self._executor = executor
        self._user_params = params
        self._beat = _Heartbeat(self.folder, float(self.settings.get(
            "orphan_timeout_s", DEFAULT_ORPHAN_TIMEOUT_S)))
        return executor

    def _submit(self, task: Task) -> Any:
        per_task: dict[str, Any] = {"name": f"dipnet-{Path(str(task.key)).name}"[:100]}
        if "cpus_per_task" not in self._user_params:
            per_task["cpus_per_task"] = task.cpus
        if "gpus_per_node" not in self._user_params and task.gpus:
            per_task["gpus_per_node"] = int(round(task.gpus)) or 1
        self._executor.update_parameters(**per_task)
        assert self._beat is not None
        return self._executor.submit(_SubmititCall(), _payload(task, self._beat))

    def run(self, tasks: Sequence[Task], done: Done,
            starting: Callable[[Task], None] | None = None) -> None:
        if not tasks:
            return
        self._start()
        poll = float(self.settings.get("poll_s", 1.0))
        queue = list(tasks)
        running: dict[Any, Task] = {}
        with _sigterm_as_exit():
            try:
                while queue or running:
                    while queue and len(running) < self.jobs:
                        task = queue.pop(0)
                        if starting is not None:
                            starting(task)
                        running[self._submit(task)] = task
                    finished = [job for job in running if job.done()]
                    if not finished:
                        time.sleep(poll)
                        continue
                    for job in finished:
                        task = running.pop(job)
                        try:
                            result = job.result()
                        except Exception as exc:  # noqa: BLE001 (failed, killed, timed out)
                            done(task, None, f"{type(exc).__name__}: {_first_line(str(exc))} "
                                             f"(job {job.job_id}; log {job.paths.stderr})")
                            continue
                        _handle(task, result, done)
            finally:
                for job in running:  # an error, Ctrl-C or SIGTERM: leave nothing running
                    with contextlib.suppress(Exception):
                        job.cancel(check=False)

    def close(self) -> None:
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        self._executor = None
