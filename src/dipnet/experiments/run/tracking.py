"""Experiment tracking: ``--report-to tensorboard|mlflow|none`` (Hugging Face's ``report_to``).

Every epoch's history row (`dipnet.experiments.run.train`) goes to the chosen trackers as scalars:
``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, ``lr``, the loss parts
(``train/nll``, ``train/barrier``, ``train/stability`` for dipnet), timings, and the per-layer
variance statistics (``variance/<layer>/mean``, ``.../min``, ...); at the end the test numbers
(``test/accuracy``, ``test/loss``...). Only rank 0 of a DDP run tracks.

Where it goes:

- tensorboard: ``<run folder>/tensorboard/`` (a sweep: ``tensorboard --logdir OUT/runs``).
- mlflow: the store named by ``MLFLOW_TRACKING_URI``; otherwise a file store beside the run
  folder, ``<run folder>/../mlruns`` (so the runs of one sweep, or of one ``runs/`` folder,
  share it: ``mlflow ui --backend-store-uri OUT/runs/mlruns``), experiment
  ``$MLFLOW_EXPERIMENT_NAME`` or ``dipnet``. A resumed run continues its mlflow run (its id is
  kept in ``<run folder>/tracking.json``).

A run that starts from scratch (no checkpoint, or ``--overwrite``) clears its old tensorboard
folder and mlflow link first, so the curves never mix two trainings. The packages are an extra:
``pip install 'dipnet[track]'``.

The failure policy: a tracker never costs a run its results.

- What can be checked is checked at the plan, before anything is written, and refused in one
  line: a missing package (`check_trackers`), a tensorboard folder or a file store that cannot
  be made (under a file, not writable), an MLflow server that does not answer
  (`check_tracker_targets`).
- Anything else (a store that fails mid-run, a full disk under the tracker) is one warning on
  stderr; that tracker is dropped and the run finishes, writing metrics.json and its weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from dipnet._util.modules import module_installed
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_write_json
from dipnet.experiments.run.config import REPORT_TO, RunConfig

__all__ = ["REPORT_TO", "check_trackers", "check_tracker_targets", "open_trackers", "scalars",
           "final_scalars", "Trackers"]

TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "tracking.json"
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
#: metrics.json keys logged at the end of a run, and their tags.
_FINAL = {"test_accuracy": "test/accuracy", "test_loss": "test/loss",
          "test_accuracy_deterministic": "test/accuracy_deterministic",
          "test_accuracy_mc": "test/accuracy_mc", "val_accuracy_best": "val/accuracy_best",
          "time_per_epoch_s": "time_per_epoch_s", "peak_memory_mb": "peak_memory_mb"}


def check_trackers(names: Iterable[str]) -> None:
    """Check (without importing) that each tracker's package is installed.

    Raises:
        UserError: naming the missing package and the extra that installs it.
    """
    for name in names:
        package = _PACKAGES[name]
        if not module_installed(package):
            raise UserError(f"--report-to {name} needs the {package} package, which is not "
                            "installed: pip install 'dipnet[track]' (or drop --report-to)")


def _mlflow_uri(out: Path) -> str:
    """The store a run in ``out`` reports to: ``MLFLOW_TRACKING_URI``, else ``../mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (out.resolve().parent / "mlruns").as_uri()


def check_tracker_targets(cfg: RunConfig, out: str | os.PathLike) -> None:
    """Check, writing nothing, that each tracker of ``cfg.report_to`` can start for ``out``.

    tensorboard: ``out/tensorboard`` can be made. mlflow: a file store (``file:`` URI or a
    path) can be made; an ``http(s)`` server accepts a connection within 3 s. Other stores
    (databricks, a database) cannot be checked here.

    Raises:
        UserError: one line naming the tracker, the place and the fix.
    """
    from dipnet.experiments.run.rundir import check_out_path

    out = Path(out)
    for name in cfg.report_to:
        if name == "tensorboard":
            check_out_path(out / TENSORBOARD_DIR, "--report-to tensorboard folder")
            continue
        uri = _mlflow_uri(out)
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            check_out_path(Path(parsed.path if parsed.scheme else uri),
                           "--report-to mlflow store (MLFLOW_TRACKING_URI)")
        elif parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                socket.create_connection((parsed.hostname or "localhost", port), 3).close()
            except OSError as err:
                raise UserError(f"--report-to mlflow: the tracking server {uri} does not answer "
                                f"({err.strerror or err}); start it, or set "
                                "MLFLOW_TRACKING_URI to a reachable one (unset: a file store "
                                "beside the run).") from None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A history row as ``{tag: value}``: ``train_loss`` -> ``train/loss``, nested mappings
    (``variance`` {layer: {mean, ...}}) -> ``variance/<layer>/mean``; non-numbers and
    non-finite values left out, and ``epoch`` (the step itself)."""
    out: dict[str, float] = {}

    def walk(tag: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                out[tag] = float(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{tag}/{key}", inner)

    for key, value in row.items():
        if key == "epoch" or (key == "variance_mean" and "variance" in row):
            continue  # variance_mean repeats variance/<layer>/mean
        tag = key
        for prefix in ("train_", "val_"):
            if key.startswith(prefix):
                tag = f"{prefix[:-1]}/{key[len(prefix):]}"
        walk(tag, value)
    return out


def final_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The end-of-run numbers of metrics.json as ``{tag: value}`` (``test/accuracy``...)."""
    return {tag: float(metrics[key]) for key, tag in _FINAL.items()
            if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])}


def _flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out


class _TensorBoard:
    """Scalars into ``<run>/tensorboard`` with torch's SummaryWriter."""

    name = "tensorboard"

    def __init__(self, cfg: RunConfig, out: Path, fresh: bool) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            check_trackers(["tensorboard"])
            raise
        logdir = out / TENSORBOARD_DIR
        if fresh:
            shutil.rmtree(logdir, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(logdir))
        if fresh:
            self.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=1)
                                 + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def finish(self, ok: bool) -> None:
        self.writer.close()


class _MLflow:
    """Metrics into an MLflow run, through `mlflow.tracking.MlflowClient` (no global state:
    the runs of a sweep in one process never share an active run)."""

    name = "mlflow"

    def __init__(self, cfg: RunConfig, out: Path, fresh: bool) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            check_trackers(["mlflow"])
            raise
        uri = _mlflow_uri(out)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 keeps its file store only on request; a plain folder needs no server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.state_path = out / STATE_FILE
        state = {} if fresh else _read_state(self.state_path)
        self.run_id = state.get("mlflow_run_id") if state.get("mlflow_uri") == uri else None
        if self.run_id is not None:
            try:
                self.client.get_run(self.run_id)
            except Exception:  # noqa: BLE001 (the store no longer has it: start a new one)
                self.run_id = None
        if self.run_id is None:
            experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "dipnet")
            run = self.client.create_run(experiment, run_name=cfg.run_name(),
                                         tags={"dipnet.run_folder": str(out.resolve())})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v[:6000]) for k, v in _flat_params(cfg.to_dict()).items()]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            atomic_write_json(self.state_path, {"mlflow_uri": uri, "mlflow_run_id": self.run_id})

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 (another process of the sweep created it meanwhile)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")


def _mlflow_key(tag: str) -> str:
    # MLflow keys allow letters, digits, _ - . space and /
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", tag)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _warn(name: str, err: BaseException) -> None:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(f"dipnet: warning: --report-to {name} failed ({type(err).__name__}: {text[:200]}); "
          "the run goes on without it (its results are in metrics.json).", file=sys.stderr)


class Trackers:
    """The trackers of one run (none, one or both); every call goes to each of them.

    A tracker that raises is dropped after one warning (the module's failure policy): the run
    and its own results never depend on it.
    """

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers
        self.finished = False

    def _each(self, call: Callable[[Any], None]) -> None:
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as err:  # noqa: BLE001 (the policy: warn once, drop, go on)
                self.trackers.remove(t)
                _warn(t.name, err)
                try:
                    t.finish(False)
                except Exception:  # noqa: BLE001 (already reported)
                    pass

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one history row at step ``row["epoch"]``."""
        values = scalars(row)
        self._each(lambda t: t.log(values, int(row["epoch"])))

    def finish(self, metrics: dict[str, Any]) -> None:
        """Log the end-of-run numbers and close the trackers."""
        values = final_scalars(metrics)
        self._each(lambda t: (t.log(values, int(metrics.get("epochs") or 0)), t.finish(True)))
        self.finished = True

    def close(self) -> None:
        """Close the trackers of a run that stopped early (an error, Ctrl-C)."""
        if not self.finished:
            for t in self.trackers:
                try:
                    t.finish(False)
                except Exception:  # noqa: BLE001 (never hide the error that stopped the run)
                    pass
            self.finished = True


def open_trackers(cfg: RunConfig, out: str | os.PathLike, fresh: bool) -> Trackers:
    """The trackers named by ``cfg.report_to`` for the run in ``out``.

    Args:
        cfg: the run's config (``report_to``; the whole config is logged as parameters).
        out: the run folder.
        fresh: the run starts from scratch (its old tracking output is cleared).
    Returns:
        The trackers that started; one that fails to start is one warning and left out (the
        module's failure policy).
    """
    kinds = {"tensorboard": _TensorBoard, "mlflow": _MLflow}
    started = []
    for name in cfg.report_to:
        try:
            started.append(kinds[name](cfg, Path(out), fresh))
        except Exception as err:  # noqa: BLE001 (the policy: warn once, go on without it)
            _warn(name, err)
    return Trackers(started)
