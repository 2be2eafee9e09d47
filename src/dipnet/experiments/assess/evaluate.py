"""Evaluating a finished run: `evaluate_run` loads its folder, runs the evaluation suite
(`dipnet.evaluation.suite.evaluate_predictions`) and writes ``evaluation.json`` into it.

The harness's side of ``dipnet evaluate`` and of a sweep's evaluation: it reads run folders
(`runs.load_run`) and registered data sets (the OOD partners, ``--shift-set`` / ``--ood-set``),
which the evaluation library itself never imports. (These names were in
``dipnet.evaluation.suite`` and ``dipnet.evaluation.shift``.)
"""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from dipnet.errors import UserError
from dipnet.evaluation.ood import OOD_PAIRS
from dipnet.evaluation.shift import shift_accuracy
from dipnet.evaluation.suite import (SCHEMA_VERSION, EvalData, _device, atomic_write_json,
                                     check_k_memory, check_out_path, evaluate_predictions,
                                     get_settings, model_weights, run_predictors)
from dipnet.predict import check_count
from dipnet.experiments.zoo.data import load_dataset, load_extra_set
from dipnet.experiments.run.runs import load_run


@functools.lru_cache(maxsize=8)
def _load_ood_inputs(name: str, data_dir: str | None) -> torch.Tensor:
    # Only the test split is used: max_train=2 keeps load_dataset from converting the whole
    # training split to float (0.2 s and 190 MB for MNIST); the test split does not depend on it.
    return load_dataset(name, data_dir, val_fraction=0.0, max_train=2).test.x


def ood_sets_for(in_name: str, input_shape: Sequence[int], data_dir: str | None,
                 notes: list[str]) -> dict[str, torch.Tensor]:
    """Test inputs of the OOD partners of ``in_name`` that load here and match its input shape.

    A partner that cannot be loaded (not installed) or has another input shape is skipped with
    a note. Loaded sets are cached in-process (a sweep evaluates many runs).
    """
    sets: dict[str, torch.Tensor] = {}
    for name in OOD_PAIRS.get(in_name, ()):
        xo, last = None, ""
        for where in dict.fromkeys([data_dir, None]):
            try:
                xo = _load_ood_inputs(name, where)
                break
            except UserError as err:
                last = str(err)
        if xo is None:
            notes.append(f"ood: {name} not available ({last}); skipped")
            continue
        if tuple(xo.shape[1:]) != tuple(input_shape):
            notes.append(f"ood: {name} has inputs {tuple(xo.shape[1:])}, not {tuple(input_shape)}; skipped")
            continue
        sets[name] = xo
    return sets


def evaluate_run(run_dir: str | os.PathLike, suite: str = "quick", k: int | None = None,
                 device: str | torch.device | None = None, data_dir: str | None = None,
                 progress: bool = True, write: bool = True, out: str | os.PathLike | None = None,
                 shift_sets: Sequence[str] = (), ood_sets: Sequence[str] = (),
                 **overrides: Any) -> dict[str, Any]:
    """Evaluate a finished run and write ``evaluation.json`` into its folder (atomically).

    Args:
        run_dir: a folder written by ``dipnet train``.
        suite: ``"quick"`` or ``"full"`` (see `SUITES`).
        k: trajectories of the sampled prediction; default the run's ``mc_samples``.
        device: ``"cpu"``, ``"cuda"``...; default cuda if available.
        data_dir: override the run's data folder.
        progress: show progress bars.
        write: write evaluation.json (False only returns the dict).
        out: write to this file instead of ``run_dir/evaluation.json``.
        shift_sets: extra test distributions (data set names or .npz files): accuracy, NLL
            and ECE under ``shift`` (`dipnet.evaluation.shift`).
        ood_sets: extra OOD partners (names or .npz files), beside the run's default ones.
        overrides: `SuiteSettings` fields to change (e.g. ``linf_eps=(0, 0.1)``).
    Returns:
        the evaluation dict, as written.
    Raises:
        UserError: the folder is not a finished run, bad suite / settings, k not a whole
            number >= 1, or k trajectories' logits that cannot fit in memory (`check_k_memory`).
    """
    # Loading builds the model (random init) and the suite seeds the RNG per part: fork it so
    # that the caller's RNG stream (a sweep that trains next) is left as it was.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _evaluate_run(run_dir, suite, k, device, data_dir, progress, write, out, overrides,
                             shift_sets, ood_sets)


def _evaluate_run(run_dir: str | os.PathLike, suite: str, k: int | None,
                  device: str | torch.device | None, data_dir: str | None, progress: bool,
                  write: bool, out: str | os.PathLike | None, overrides: dict[str, Any],
                  shift_sets: Sequence[str] = (), ood_sets: Sequence[str] = ()) -> dict[str, Any]:
    settings = get_settings(suite, **overrides)
    if write and out is not None:
        check_out_path(out)  # before the long work, not after it
    dev = _device(device)
    t0 = time.perf_counter()
    run = load_run(run_dir, data_dir=data_dir)
    load_s = time.perf_counter() - t0
    try:
        k = check_count(k if k is not None else getattr(run.config, "mc_samples", 8), "k", 1)
    except ValueError as err:
        raise UserError(f"{err} (trajectories of the sampled prediction).") from None
    if getattr(run.method, "has_sampling", False):
        check_k_memory(k, settings.batch_size, run.data.num_classes, dev)
    run.model.to(dev)
    notes: list[str] = []
    d = run.data
    ood = (ood_sets_for(d.name, d.input_shape, run.config.data_dir, notes)
           if "ood" in settings.parts else {})
    # --shift-set / --ood-set: the user's own sets, labelled with their names
    shift, extra_ood = load_extra_sets(shift_sets, ood_sets, d, data_dir or run.config.data_dir,
                                       settings.parts)
    ood.update(extra_ood)
    data = EvalData(d.name, d.test.x.to(dev), d.test.y.to(dev), d.train.x.to(dev), d.train.y.to(dev),
                    {n: v.to(dev) for n, v in ood.items()})
    preds = run_predictors(run, k)
    result = evaluate_predictions(preds, data, settings, params=model_weights(run.model),
                                  progress=progress, notes=notes)
    result["timing"]["load"] = round(load_s, 3)
    if shift:
        t_shift = time.perf_counter()
        result["shift"] = shift_accuracy(preds, {n: (x.to(dev), y.to(dev)) for n, (x, y)
                                                 in shift.items()}, settings.batch_size,
                                         settings.subset_seed)
        result["timing"]["shift"] = round(time.perf_counter() - t_shift, 3)
    cfg = run.config
    header = {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(Path(run_dir)),
        "suite": suite,
        "dataset": d.name,
        "model": cfg.model,
        "method": cfg.method,
        "seed": cfg.seed,
        "train_perturbation": getattr(cfg, "train_perturbation", "none"),
        "default_prediction": getattr(run.method, "default_prediction", "deterministic"),
        "environment": {"torch": torch.__version__, "device": str(dev),
                        "threads": torch.get_num_threads(), "python": platform.python_version(),
                        "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result = {**header, **result}
    if write:
        target = Path(out) if out is not None else Path(run_dir) / "evaluation.json"
        try:
            atomic_write_json(target, result)
        except OSError as err:
            what = "--out " if out is not None else ""
            raise UserError(f"cannot write {what}{target} ({err.strerror or err}); choose a "
                            "writable file path.") from None
    return result


def load_extra_sets(shift_sets: Sequence[str], ood_sets: Sequence[str], data: Any,
                    data_dir: str | None, parts: Sequence[str]
                    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]],
                               dict[str, torch.Tensor]]:
    """Load the user-named sets of ``dipnet evaluate --shift-set / --ood-set`` for a run.

    Args:
        shift_sets, ood_sets: data set names or .npz paths.
        data: the run's `DatasetSplits` (input shape, classes).
        data_dir: where registered data sets' files are.
        parts: the suite's parts (``--ood-set`` needs the ``ood`` part).
    Returns:
        (name -> (x, y) shift sets, name -> x OOD sets), each labelled with its own name.
    Raises:
        UserError: a set that cannot be loaded or does not fit the run, a name given twice, or
            ``--ood-set`` while the ``ood`` part is not run.
    """
    if ood_sets and "ood" not in parts:
        raise UserError("--ood-set applies to the ood part, which --parts leaves out: add ood "
                        "to --parts or drop --ood-set")
    shift: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ood: dict[str, torch.Tensor] = {}
    for kind, names, into in (("shift", shift_sets, shift), ("ood", ood_sets, ood)):
        for name in names:
            label, x, y = load_extra_set(name, kind, data.input_shape, data.num_classes, data_dir)
            if label in into:
                raise UserError(f"--{kind}-set: two sets are called {label!r}; rename a file")
            into[label] = (x, y) if kind == "shift" else x
    return shift, ood
