"""Reading a sweep folder: one `RunRecord` per finished run (config.yaml, metrics.json and, when
present, evaluation.json), the runs that are damaged or outside the sweep named, and
`flatten_evaluation` (evaluation.json -> flat scalars)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dipnet.errors import UserError
from dipnet.experiments.sweep.grid import METHODS, PERTURBATIONS


@dataclass
class RunRecord:
    """One finished run as read from disk: its folder, config, metrics and evaluation."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    evaluation: dict[str, Any] | None = None
    evaluation_error: str = ""  # why an evaluation.json that is there could not be read

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.config.get("method"))

    @property
    def seed(self) -> int:
        return int(self.metrics.get("seed", self.config.get("seed", 0)))

    @property
    def perturbation(self) -> str:
        return str(self.metrics.get("train_perturbation")
                   or self.config.get("train_perturbation") or "none")

    @property
    def group(self) -> tuple[str, str, str]:
        """(dataset, model, train perturbation): runs in a group are directly comparable."""
        return (str(self.metrics.get("dataset") or self.config.get("dataset")),
                str(self.metrics.get("model") or self.config.get("model")),
                self.perturbation)


def _read_json(path: Path) -> dict[str, Any] | None:
    return _read_json_why(path)[0]


def _read_json_why(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in ``path``, "") or (None, why it could not be read; "" if missing)."""
    if not path.exists():
        return None, ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        return None, f"cannot be read: {err.strerror}"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"not valid JSON: {err}"
    return (data, "") if isinstance(data, dict) else (None, "not a JSON object")


def load_runs(sweep_dir: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Read every finished run under ``sweep_dir/runs`` (or ``sweep_dir`` itself).

    Returns (records sorted by group, method and seed; names of run folders that are not
    finished: still running, interrupted or failed). Raises UserError when the folder holds no
    run at all.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the --out folder of a dipnet compare")
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    records: list[RunRecord] = []
    unfinished: list[str] = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        metrics = _read_json(d / "metrics.json")
        if metrics is None or metrics.get("status") != "finished":
            if (d / "config.yaml").is_file() or (d / "metrics.json").is_file():
                unfinished.append(d.name)
            continue
        config: dict[str, Any] = {}
        if (d / "config.yaml").is_file():
            try:
                config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                config = {}
        evaluation, problem = _read_json_why(d / "evaluation.json")
        certified = _read_json(d / "certify.json")  # `dipnet certify`: the report's panel
        if evaluation is not None and certified is not None:
            evaluation["certified"] = {k: certified.get(k) for k in (
                "certified_accuracy", "abstention_rate", "mean_radius", "points")}
        records.append(RunRecord(d.name, d, config, metrics, evaluation, problem))
    if not records and not unfinished:
        raise UserError(f"no runs found under {runs_dir}: run dipnet compare --out {root} "
                        f"first")
    records.sort(key=lambda r: (r.group, _method_order(r.method), r.seed))
    return records, unfinished


def _outside_the_sweep(records: list[RunRecord], sweep_cfg: Any
                       ) -> tuple[list[RunRecord], list[str]]:
    """Split off the runs whose data set or model is not the sweep's (``sweep.yaml``): a run
    copied or trained into the folder by hand is not part of the comparison. Returns (kept,
    ``"name (dataset / model)"`` of each run left out); everything is kept without a
    readable sweep.yaml."""
    if not isinstance(sweep_cfg, dict) or not sweep_cfg.get("dataset"):
        return records, []
    want = (str(sweep_cfg["dataset"]), str(sweep_cfg.get("model") or "mlp"))
    kept = [r for r in records if r.group[:2] == want]
    strays = [f"{r.name} ({r.group[0]} / {r.group[1]})" for r in records if r.group[:2] != want]
    return kept, strays


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _pert_order(pert: str) -> int:
    return PERTURBATIONS.index(pert) if pert in PERTURBATIONS else len(PERTURBATIONS)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)) and math.isfinite(float(x)):
        return float(x)
    return None


# --- evaluation.json -> flat scalars ---------------------------------------------------------
_ID_NUMERIC = {"eps", "epsilon", "severity", "steps", "samples", "m", "radius"}


# Bookkeeping, not outcomes: sizes, settings, timings, versions.
_SKIP_KEY = re.compile(r"(time|seconds|wall|_s$|^n_|_points$|^k$|restarts|eot_samples|"
                       r"ece_bins|settings|stderr|schema_version|^seed$|environment|notes|"
                       r"predictions)")


#: The evaluation scalars shown in the report's own table (all of them go to results.json).
_HEADLINE = re.compile(
    r"^(clean/[^/]+/accuracy|calibration/[^/]+/ece|attacks/pgd/.*/eps=(?!0\.0/).*/accuracy"
    r"|corruptions/mean/[^/]+/accuracy|ood/.*/auroc"
    r"|smoothness/[^/]+/(loss_grad_norm|lipschitz_adversarial|input_hessian_spectral)/mean"
    r"|smoothness/[^/]+/weight_hessian_(trace|top_eigenvalue))$")


def flatten_evaluation(ev: dict[str, Any] | None) -> dict[str, float]:
    """Flatten an evaluation.json into ``{"section/…/key": value}`` numeric scalars.

    Dicts are walked by key; a list of dicts (attacks, corruptions, OOD pairs) becomes one name
    per entry built from its identifying fields (strings and eps/severity-like numbers) and one
    scalar per remaining numeric field. Timing fields are left out (they are not outcomes).
    """
    out: dict[str, float] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if _SKIP_KEY.search(str(k)):
                    continue
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(obj, list):
            for item in obj:
                if not isinstance(item, dict):
                    continue
                ids = [f"{k}={v}" if k in _ID_NUMERIC else str(v) for k, v in item.items()
                       if isinstance(v, str) or (k in _ID_NUMERIC and _num(v) is not None)]
                base = "/".join([prefix, *ids]) if prefix else "/".join(ids)
                for k, v in item.items():
                    if k in _ID_NUMERIC or isinstance(v, str) or _SKIP_KEY.search(str(k)):
                        continue
                    walk(v, f"{base}/{k}")
        else:
            val = _num(obj)
            if val is not None and prefix:
                out[prefix] = val

    if ev:
        walk({k: v for k, v in ev.items() if k not in ("config", "provenance", "suite",
                                                         "run_dir", "meta")}, "")
    return out
