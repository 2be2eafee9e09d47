"""The evaluation suite: every measure of this package on one trained model, as one JSON file.

`evaluate_predictions` runs the suite on any predictors and data (the library entry point);
`evaluate_run` loads a run written by ``dipnet train`` and writes ``evaluation.json`` into its
folder (the entry point of ``dipnet evaluate`` and of the sweep).

Two suites, differing only in sizes (`SuiteSettings`): ``quick`` (about a minute for an MLP on
Fashion-MNIST on 2 CPU cores) and ``full``. Attacks, corruptions and smoothness run on a fixed
random subset of the test set (the same subset for every method and seed: it depends only on
``settings.subset_seed``); the JSON records how many points each part used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import fileio
from ..errors import UserError
from ..objective import available_bytes
from ..predict import check_count
from .attacks import robust_accuracy_curve
from .calibration import calibration_metrics
from .corruptions import available_corruptions, corruption_accuracy, is_image_shape
from .ood import OOD_PAIRS, ood_detection
from .predictors import Predictor, PredictionSummary, accuracy, nll, predict_summary
from .settings import ATTACK_NAMES, PARTS, STRONG_ATTACKS, SUITES, SuiteSettings, get_settings
from .smoothness import measure_smoothness

SCHEMA_VERSION = 1

__all__ = ["ATTACK_NAMES", "PARTS", "STRONG_ATTACKS", "SUITES", "SuiteSettings", "get_settings",
           "EvalData", "evaluate_predictions", "evaluate_run", "load_evaluation", "run_predictors",
           "model_weights", "ood_sets_for", "check_out_path", "SCHEMA_VERSION"]


def _subset_index(size: int, n: int | None, seed: int) -> torch.Tensor | None:
    """Rows of the fixed random subset of ``n`` of ``size`` rows (None = all rows, in order).

    Subsets of different sizes with one seed are prefixes of the same permutation, so a
    smaller part's points are among a larger part's: the suite shares predictions that way.
    """
    if n is None or n >= size:
        return None
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = _subset_index(len(y), n, seed)
    if idx is None:
        return x, y
    idx = idx.to(x.device)
    return x[idx], y[idx]


def _bounds(x: torch.Tensor) -> tuple[float, float] | None:
    # Every loader of the project returns [0, 1]; clip adversarial inputs to it only when the
    # data really live there (a user's standardised data would otherwise be clipped wrongly).
    return (0.0, 1.0) if x.min() >= 0 and x.max() <= 1 else None


@dataclass
class EvalData:
    """What the suite needs to know about the data.

    Attributes:
        name: the in-distribution data set's name (for OOD pairs and the JSON).
        x_test, y_test: the test split.
        x_train, y_train: a training batch source for the weight-Hessian (sharpness) measures,
            or None to skip them.
        ood_sets: name -> inputs of out-of-distribution data sets (same input shape).
    """

    name: str
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    ood_sets: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate_predictions(predictors: Sequence[Predictor], data: EvalData,
                         settings: SuiteSettings | None = None,
                         params: Sequence[torch.Tensor] | None = None,
                         progress: bool = True, notes: list[str] | None = None) -> dict[str, Any]:
    """Run the suite on ``predictors`` (a deterministic one first, optionally a sampled one).

    Args:
        predictors: the predictions to evaluate; each result row names its prediction.
        data: test data, a training batch source and OOD sets.
        settings: sizes (default: the quick suite).
        params: the model's weights for the weight-Hessian measures (None skips them).
        progress: tqdm bars for the long parts.
        notes: list to which the suite appends what it skipped and why.
    Returns:
        the evaluation dict (keys: clean, calibration, attacks, corruptions, ood, smoothness,
        timing, settings, notes, n_points).
    """
    settings = settings or SUITES["quick"]
    notes = notes if notes is not None else []
    timing: dict[str, float] = {}
    out: dict[str, Any] = {"clean": {}, "calibration": {}, "attacks": [], "corruptions": [],
                           "ood": [], "smoothness": {}}
    x, y = data.x_test, data.y_test
    bounds = _bounds(x)
    if settings.corruptions and "corruptions" in settings.parts:
        # Fail before the long parts run, not after.
        allowed = available_corruptions(tuple(x.shape[1:]), quick=False)
        bad = [c for c in settings.corruptions if c not in allowed]
        if bad:
            raise UserError(f"corruption(s) {bad} do not apply to inputs of shape "
                            f"{tuple(x.shape[1:])}; choose from {', '.join(allowed)}.")
    n_points: dict[str, int] = {}

    def timed(part: str, fn: Callable[[], None]) -> None:
        if part not in settings.parts:
            notes.append(f"{part}: skipped (not in the requested parts)")
            return
        t0 = time.perf_counter()
        fn()
        timing[part] = round(time.perf_counter() - t0, 3)

    if settings.mc_max_rows is not None:
        predictors = [dataclasses.replace(p, chunk=settings.mc_max_rows) for p in predictors]
    # The clean pass: every prediction once on the clean points, shared by every part that
    # needs the prediction at unperturbed inputs (see `_shared`).
    summaries: dict[str, PredictionSummary] = {}
    clean_idx = _subset_index(len(y), settings.clean_points, settings.subset_seed)
    xcl, ycl = _subset(x, y, settings.clean_points, settings.subset_seed)
    clean_pos = None
    if clean_idx is not None:
        clean_pos = torch.full((len(y),), -1, dtype=torch.long)
        clean_pos[clean_idx] = torch.arange(len(clean_idx))

    def _shared(p: Predictor, n: int | None) -> PredictionSummary:
        """The clean-pass summary of ``p`` on the subset of ``n`` points (computed if the
        clean pass did not run or did not cover them)."""
        idx = _subset_index(len(y), n, settings.subset_seed)
        have = summaries.get(p.name)
        if have is not None:
            if idx is None and clean_idx is None:
                return have
            if idx is not None:
                pos = idx if clean_pos is None else clean_pos[idx]
                if bool((pos >= 0).all()):
                    return have.take(pos.to(have.log_probs.device))
        xs, _ = _subset(x, y, n, settings.subset_seed)
        return predict_summary(p, xs, settings.batch_size)

    def clean() -> None:
        for p in predictors:
            torch.manual_seed(settings.subset_seed)
            summary = predict_summary(p, xcl, settings.batch_size)
            summaries[p.name] = summary
            lp = summary.log_probs
            out["clean"][p.name] = {"accuracy": accuracy(lp, ycl), "nll": nll(lp, ycl),
                                    "n_points": int(len(ycl)), "k": p.k}
        n_points["clean"] = int(len(ycl))

    def calibration() -> None:
        for p in predictors:
            if p.name not in summaries:
                torch.manual_seed(settings.subset_seed)
            out["calibration"][p.name] = calibration_metrics(_shared(p, settings.clean_points).log_probs, ycl)
        n_points["calibration"] = int(len(ycl))

    def attacks() -> None:
        xa, ya = _subset(x, y, settings.attack_points, settings.subset_seed)
        n_points["attacks"] = int(len(ya))
        pgd_kw = dict(steps=settings.pgd_steps, restarts=settings.restarts, bounds=bounds,
                      losses=settings.pgd_losses, batch_size=settings.batch_size)
        plan = [("fgsm", "linf", settings.linf_eps)]
        if settings.fgsm_l2:
            plan.append(("fgsm", "l2", settings.l2_eps))
        plan += [("pgd", "linf", settings.linf_eps), ("pgd", "l2", settings.l2_eps)]
        plan = [step for step in plan if step[0] in settings.attacks and step[2]]
        strong = [(a, norm, eps) for a in settings.attacks if a in STRONG_ATTACKS
                  for norm, eps in (("linf", settings.strong_linf_eps), ("l2", settings.strong_l2_eps))
                  if eps]
        if "square" in settings.attacks and not is_image_shape(tuple(x.shape[1:])):
            notes.append(f"attacks: square skipped (it needs images; inputs have shape {tuple(x.shape[1:])})")
            strong = [s for s in strong if s[0] != "square"]
        # The first strong_points attacked points: the same points as
        # _subset(x, y, strong_points), since fixed subsets are prefixes of one permutation.
        n_strong = min(settings.strong_points, len(ya))
        xs_, ys_ = xa[:n_strong], ya[:n_strong]
        if strong:
            n_points["strong_attacks"] = n_strong
        for p in predictors:
            torch.manual_seed(settings.subset_seed)
            clean_lp = _shared(p, settings.attack_points).log_probs
            for attack, norm, eps in plan:
                torch.manual_seed(settings.subset_seed)
                gen = torch.Generator(device=xa.device).manual_seed(settings.subset_seed)
                kw: dict[str, Any] = {"bounds": bounds, "batch_size": settings.batch_size}
                if attack == "pgd":
                    kw = {**pgd_kw, "generator": gen}
                if p.stochastic:
                    kw["eot_samples"] = settings.eot_samples or p.k
                out["attacks"].extend(robust_accuracy_curve(p, xa, ya, attack, norm, eps,
                                                            progress=progress,
                                                            clean_log_probs=clean_lp, **kw))
            num_classes = int(clean_lp.shape[-1])
            for attack, norm, eps in strong:
                if attack == "apgd-dlr" and num_classes < 3:
                    notes.append("attacks: apgd-dlr skipped (it needs at least 3 classes)")
                    continue
                from .strong_attacks import strong_accuracy_curve  # ART: imported on demand

                torch.manual_seed(settings.subset_seed)
                out["attacks"].extend(strong_accuracy_curve(
                    p, xs_, ys_, attack, norm, eps, num_classes=num_classes, bounds=bounds,
                    steps=settings.apgd_steps, queries=settings.square_queries,
                    eot_samples=(settings.strong_eot_samples or settings.eot_samples or p.k)
                    if p.stochastic else None,
                    batch_size=settings.batch_size, seed=settings.subset_seed,
                    clean_log_probs=clean_lp[:n_strong], progress=progress))

    def corruptions() -> None:
        shape = tuple(x.shape[1:])
        names = settings.corruptions or available_corruptions(shape, quick=settings.quick_corruptions)
        if not is_image_shape(shape):
            notes.append(f"corruptions: inputs of shape {shape} are not images; only the noise "
                         f"corruptions {', '.join(names)} apply")
        xc, yc = _subset(x, y, settings.corruption_points, settings.subset_seed)
        n_points["corruptions"] = int(len(yc))
        torch.manual_seed(settings.subset_seed)
        out["corruptions"] = corruption_accuracy(predictors, xc, yc, names, settings.severities,
                                                 seed=settings.subset_seed, progress=progress)

    def ood() -> None:
        if not data.ood_sets:
            notes.append(f"ood: no out-of-distribution data set for {data.name!r}; skipped")
            return
        xi, _ = _subset(x, y, settings.ood_points, settings.subset_seed)
        sets = {}
        for name, xo in data.ood_sets.items():
            sets[name], _ = _subset(xo, torch.zeros(len(xo), dtype=torch.long), settings.ood_points,
                                    settings.subset_seed)
        torch.manual_seed(settings.subset_seed)
        in_summaries = {p.name: _shared(p, settings.ood_points) for p in predictors}
        out["ood"] = ood_detection(predictors, data.name, xi, sets, settings.batch_size,
                                   in_summaries=in_summaries)
        n_points["ood"] = int(len(xi))

    def smoothness() -> None:
        xs, ys = _subset(x, y, settings.smoothness_points, settings.subset_seed)
        n_points["smoothness"] = int(len(xs))
        weight_batch = None
        if params is not None and data.x_train is not None and data.y_train is not None:
            weight_batch = _subset(data.x_train, data.y_train, settings.weight_points, settings.subset_seed)
        elif params is None:
            notes.append("smoothness: no parameters given; weight-Hessian measures skipped")
        for p in predictors:
            variances = _shared(p, settings.smoothness_points).output_variance if p.stochastic else None
            out["smoothness"][p.name] = measure_smoothness(
                p, xs, ys, n_random=settings.lipschitz_random, adv_steps=settings.lipschitz_steps,
                hessian_iters=settings.hessian_iters, bounds=bounds, params=params,
                weight_batch=weight_batch, trace_probes=settings.trace_probes,
                power_iters=settings.power_iters, batch_size=min(settings.batch_size, 100),
                seed=settings.subset_seed, output_variances=variances)

    def noise() -> None:
        # One draw of standard normal noise, scaled by each sigma: every predictor and every
        # sigma sees the same directions, so the curves differ only by the strength.
        xn, yn = _subset(x, y, settings.corruption_points, settings.subset_seed)
        n_points["noise"] = int(len(yn))
        gen = torch.Generator(device=xn.device).manual_seed(settings.subset_seed)
        draws = torch.randn(xn.shape, generator=gen, device=xn.device, dtype=xn.dtype)
        rows = out.setdefault("gaussian_noise", [])
        for sigma in settings.noise_sigmas:
            xs = xn + float(sigma) * draws
            if bounds is not None:
                xs = xs.clamp(*bounds)
            for p in predictors:
                torch.manual_seed(settings.subset_seed)
                lp = predict_summary(p, xs, settings.batch_size).log_probs
                rows.append({"sigma": float(sigma), "prediction": p.name,
                             "accuracy": accuracy(lp, yn), "n_points": int(len(yn))})

    t_all = time.perf_counter()
    # The suite seeds torch's global RNG per part (reproducible noise); fork it so that the
    # caller's RNG stream (e.g. a sweep that trains next) is left as it was.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for part, fn in (("clean", clean), ("calibration", calibration), ("attacks", attacks),
                         ("corruptions", corruptions), ("noise", noise), ("ood", ood),
                         ("smoothness", smoothness)):
            timed(part, fn)
    timing["total"] = round(time.perf_counter() - t_all, 3)
    out.update({"timing": timing, "n_points": n_points, "settings": settings.to_dict(),
                "notes": notes, "predictions": [p.name for p in predictors],
                "k": max(p.k for p in predictors)})
    return out


def _finite(obj: Any) -> Any:
    # Strict JSON has no NaN / Infinity: write null instead.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN -> null) to ``path`` atomically (temp file + os.replace)."""
    fileio.atomic_write_json(path, _finite(obj), indent=1, allow_nan=False)


@functools.lru_cache(maxsize=8)
def _load_ood_inputs(name: str, data_dir: str | None) -> torch.Tensor:
    from ..experiments.data import load_dataset

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


def run_predictors(run: Any, k: int) -> list[Predictor]:
    """Predictors of a loaded run: its method's deterministic prediction and, if the method
    has one, its sampled prediction with k trajectories."""
    model, method = run.model, run.method
    model.eval()
    preds = [Predictor("deterministic", lambda x: method.predict_logits(model, x))]
    if getattr(method, "has_sampling", False):
        preds.append(Predictor("sampled", lambda x: method.sample_logits(model, x), stochastic=True, k=k))
    return preds


def model_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's own trainable weights: every parameter except DIPNet's variances."""
    from .. import inject

    var_ids = {id(p) for p in inject.variance_parameters(model)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in var_ids]


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise UserError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N.") from None


def check_k_memory(k: int, rows: int, classes: int, device: torch.device) -> None:
    """Refuse a k whose trajectories' logits cannot fit in memory, before any work.

    The sampled prediction holds the k trajectories' logits of one batch of ``rows`` examples
    (``SuiteSettings.batch_size``) at once, three such float32 tensors with their log-softmax
    and probabilities; the forward passes themselves are bounded by the row budget of
    `Predictor.chunk`.

    Raises:
        UserError: naming k, the memory it needs and what is available.
    """
    need = 3 * k * rows * classes * 4
    free = available_bytes(device)
    if free is not None and need > free:
        raise UserError(
            f"k={k}: the sampled prediction holds {k} x {rows} x {classes} logits per batch, "
            f"{need / 1e9:.3g} GB, more than the {free / 1e9:.3g} GB available on {device}; "
            f"lower --k (or --set batch_size=N with a smaller N).")


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
    from ..experiments.runs import load_run

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
    # --shift-set / --ood-set: the user's own sets, labelled with their names (shift.py)
    from .shift import load_extra_sets, shift_accuracy

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


def check_out_path(out: str | os.PathLike) -> Path:
    """Check, before any work, that the JSON can be written to ``out`` (the ``--out`` value).

    Returns:
        ``out`` as a Path.
    Raises:
        UserError: ``out`` is a folder, lies under a file, or its nearest existing folder is
            not writable.
    """
    target = Path(out)
    if target.is_dir():
        raise UserError(f"--out {target} is a folder; give a file name, e.g. --out "
                        f"{target / 'evaluation.json'}.")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {target} cannot be written: {parent} is a file, not a "
                                "folder; choose another path.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"--out {target} cannot be written: no permission to write in "
                                f"{parent}; choose another path.")
            break
    return target


def load_evaluation(path: str | os.PathLike) -> dict[str, Any]:
    """Read an evaluation.json (or the one inside a run folder).

    Raises:
        UserError: missing or corrupt file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "evaluation.json"
    if not p.is_file():
        raise UserError(f"{p} does not exist; run dipnet evaluate {p.parent} first.")
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{p} is corrupt ({err}); re-run dipnet evaluate {p.parent}.") from None
