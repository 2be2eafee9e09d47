"""The evaluation suite: every measure of this package on one trained model, as one JSON file.

`evaluate_predictions` runs the suite on any predictors and data (the library entry point);
`dipnet.experiments.assess.evaluate.evaluate_run` loads a run written by ``dipnet train`` and writes
``evaluation.json`` into its folder (the entry point of ``dipnet evaluate`` and of the sweep;
still importable from here).

Two suites, differing only in sizes (`SuiteSettings`): ``quick`` (about a minute for an MLP on
Fashion-MNIST on 2 CPU cores) and ``full``. Attacks, corruptions and smoothness run on a fixed
random subset of the test set (the same subset for every method and seed: it depends only on
``settings.subset_seed``); the JSON records how many points each part used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dipnet._util import fileio
from dipnet.errors import UserError
from dipnet.objective import available_bytes
from dipnet.evaluation.attacks import robust_accuracy_curve
from dipnet.evaluation.calibration import calibration_metrics
from dipnet.evaluation.corruptions import available_corruptions, corruption_accuracy, is_image_shape
from dipnet.evaluation.ood import ood_detection
from dipnet.evaluation.predictors import (Predictor, PredictionSummary, accuracy, nll,
                                          predict_summary)
from dipnet.evaluation.settings import (ATTACK_NAMES, ATTACKS, PARTS, STRONG_ATTACKS, SUITES,
                                        SuiteSettings, get_settings)
from dipnet.evaluation.smoothness import measure_smoothness

SCHEMA_VERSION = 1

__all__ = ["ATTACK_NAMES", "PARTS", "STRONG_ATTACKS", "SUITES", "SuiteSettings", "get_settings",
           "EvalData", "evaluate_predictions", "load_evaluation", "run_predictors",
           "model_weights", "check_out_path", "SCHEMA_VERSION"]


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
    Raises:
        UserError: ``settings.corruptions`` names a corruption that does not apply to the
            inputs (checked before the long parts run, not after).
    """
    settings = settings or SUITES["quick"]
    notes = notes if notes is not None else []
    if settings.corruptions and "corruptions" in settings.parts:
        shape = tuple(data.x_test.shape[1:])
        allowed = available_corruptions(shape, quick=False)
        bad = [c for c in settings.corruptions if c not in allowed]
        if bad:
            raise UserError(f"corruption(s) {bad} do not apply to inputs of shape "
                            f"{shape}; choose from {', '.join(allowed)}.")
    if settings.mc_max_rows is not None:
        predictors = [dataclasses.replace(p, chunk=settings.mc_max_rows) for p in predictors]
    suite = _SuiteRun(list(predictors), data, settings, params, progress, notes)
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    # The suite seeds torch's global RNG per part (reproducible noise); fork it so that the
    # caller's RNG stream (e.g. a sweep that trains next) is left as it was.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for part in _PART_ORDER:
            if part not in settings.parts:
                notes.append(f"{part}: skipped (not in the requested parts)")
                continue
            t0 = time.perf_counter()
            getattr(suite, part)()
            timing[part] = round(time.perf_counter() - t0, 3)
    timing["total"] = round(time.perf_counter() - t_all, 3)
    out = suite.out
    out.update({"timing": timing, "n_points": suite.n_points, "settings": settings.to_dict(),
                "notes": notes, "predictions": [p.name for p in suite.predictors],
                "k": max(p.k for p in suite.predictors)})
    return out


#: The suite's parts in the order they run (each a method of `_SuiteRun`).
_PART_ORDER = ("clean", "calibration", "attacks", "corruptions", "noise", "ood", "smoothness")


class _SuiteRun:
    """One run of the suite: the inputs every part reads, the results they fill in, and one
    method per part. Each part reseeds torch's global RNG with ``settings.subset_seed``
    (`reseed`) where its noise starts, so a part's numbers do not depend on the parts before
    it."""

    def __init__(self, predictors: list[Predictor], data: EvalData, settings: SuiteSettings,
                 params: Sequence[torch.Tensor] | None, progress: bool,
                 notes: list[str]) -> None:
        self.predictors, self.data, self.settings = predictors, data, settings
        self.params, self.progress, self.notes = params, progress, notes
        self.x, self.y = data.x_test, data.y_test
        self.bounds = _bounds(self.x)
        self.out: dict[str, Any] = {"clean": {}, "calibration": {}, "attacks": [],
                                    "corruptions": [], "ood": [], "smoothness": {}}
        self.n_points: dict[str, int] = {}
        # The clean pass: every prediction once on the clean points, shared by every part
        # that needs the prediction at unperturbed inputs (see `shared`).
        self.summaries: dict[str, PredictionSummary] = {}
        self.clean_idx = _subset_index(len(self.y), settings.clean_points, settings.subset_seed)
        self.clean_pos = None
        if self.clean_idx is not None:
            self.clean_pos = torch.full((len(self.y),), -1, dtype=torch.long)
            self.clean_pos[self.clean_idx] = torch.arange(len(self.clean_idx))

    def reseed(self) -> None:
        torch.manual_seed(self.settings.subset_seed)

    def subset(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed subset of ``n`` test points (all of them for None)."""
        return _subset(self.x, self.y, n, self.settings.subset_seed)

    def shared(self, p: Predictor, n: int | None) -> PredictionSummary:
        """The clean-pass summary of ``p`` on the subset of ``n`` points (computed if the
        clean pass did not run or did not cover them)."""
        idx = _subset_index(len(self.y), n, self.settings.subset_seed)
        have = self.summaries.get(p.name)
        if have is not None:
            if idx is None and self.clean_idx is None:
                return have
            if idx is not None:
                pos = idx if self.clean_pos is None else self.clean_pos[idx]
                if bool((pos >= 0).all()):
                    return have.take(pos.to(have.log_probs.device))
        xs, _ = self.subset(n)
        return predict_summary(p, xs, self.settings.batch_size)

    # ------------------------------------------------------------ clean, calibration
    def clean(self) -> None:
        xcl, ycl = self.subset(self.settings.clean_points)
        for p in self.predictors:
            self.reseed()
            summary = predict_summary(p, xcl, self.settings.batch_size)
            self.summaries[p.name] = summary
            lp = summary.log_probs
            self.out["clean"][p.name] = {"accuracy": accuracy(lp, ycl), "nll": nll(lp, ycl),
                                         "n_points": int(len(ycl)), "k": p.k}
        self.n_points["clean"] = int(len(ycl))

    def calibration(self) -> None:
        _, ycl = self.subset(self.settings.clean_points)
        for p in self.predictors:
            if p.name not in self.summaries:
                self.reseed()
            lp = self.shared(p, self.settings.clean_points).log_probs
            self.out["calibration"][p.name] = calibration_metrics(lp, ycl)
        self.n_points["calibration"] = int(len(ycl))

    # ------------------------------------------------------------ attacks
    def _attack_plan(self) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
        """(FGSM / PGD steps, strong ART attacks) as (attack, norm, epsilons), those that run."""
        st = self.settings
        plan = [("fgsm", "linf", st.linf_eps)]
        if st.fgsm_l2:
            plan.append(("fgsm", "l2", st.l2_eps))
        plan += [("pgd", "linf", st.linf_eps), ("pgd", "l2", st.l2_eps)]
        plan = [step for step in plan if step[0] in st.attacks and step[2]]
        strong = [(a, norm, eps) for a in st.attacks if a in STRONG_ATTACKS
                  for norm, eps in (("linf", st.strong_linf_eps), ("l2", st.strong_l2_eps))
                  if eps]
        shape = tuple(self.x.shape[1:])
        if not is_image_shape(shape):
            for name in (a for a in st.attacks if ATTACKS[a].needs_images):
                self.notes.append(f"attacks: {name} skipped (it needs images; inputs have "
                                  f"shape {shape})")
                plan = [s for s in plan if s[0] != name]
                strong = [s for s in strong if s[0] != name]
        return plan, strong

    def attacks(self) -> None:
        st = self.settings
        xa, ya = self.subset(st.attack_points)
        self.n_points["attacks"] = int(len(ya))
        plan, strong = self._attack_plan()
        # The first strong_points attacked points: the same points as
        # _subset(x, y, strong_points), since fixed subsets are prefixes of one permutation.
        n_strong = min(st.strong_points, len(ya))
        if strong:
            self.n_points["strong_attacks"] = n_strong
        for p in self.predictors:
            self.reseed()
            clean_lp = self.shared(p, st.attack_points).log_probs
            for attack, norm, eps in plan:
                self.out["attacks"].extend(self._gradient_attack(p, xa, ya, attack, norm, eps,
                                                                 clean_lp))
            num_classes = int(clean_lp.shape[-1])
            for attack, norm, eps in strong:
                if attack == "apgd-dlr" and num_classes < 3:
                    self.notes.append("attacks: apgd-dlr skipped (it needs at least 3 classes)")
                    continue
                self.out["attacks"].extend(self._strong_attack(
                    p, xa[:n_strong], ya[:n_strong], attack, norm, eps, num_classes,
                    clean_lp[:n_strong]))

    def _gradient_attack(self, p: Predictor, xa: torch.Tensor, ya: torch.Tensor, attack: str,
                         norm: str, eps: Any, clean_lp: torch.Tensor) -> list[dict[str, Any]]:
        # FGSM or PGD over every epsilon of one norm
        st = self.settings
        self.reseed()
        gen = torch.Generator(device=xa.device).manual_seed(st.subset_seed)
        kw: dict[str, Any] = {"bounds": self.bounds, "batch_size": st.batch_size}
        if attack == "pgd":
            kw = dict(steps=st.pgd_steps, restarts=st.restarts, bounds=self.bounds,
                      losses=st.pgd_losses, batch_size=st.batch_size, generator=gen)
        if p.stochastic:
            kw["eot_samples"] = st.eot_samples or p.k
        return robust_accuracy_curve(p, xa, ya, attack, norm, eps, progress=self.progress,
                                     clean_log_probs=clean_lp, **kw)

    def _strong_attack(self, p: Predictor, xs: torch.Tensor, ys: torch.Tensor, attack: str,
                       norm: str, eps: Any, num_classes: int,
                       clean_lp: torch.Tensor) -> list[dict[str, Any]]:
        # APGD-CE / APGD-DLR / Square through the Adversarial Robustness Toolbox
        from dipnet.evaluation.strong_attacks import strong_accuracy_curve  # ART: imported on demand

        st = self.settings
        self.reseed()
        return strong_accuracy_curve(
            p, xs, ys, attack, norm, eps, num_classes=num_classes, bounds=self.bounds,
            steps=st.apgd_steps, queries=st.square_queries,
            eot_samples=(st.strong_eot_samples or st.eot_samples or p.k)
            if p.stochastic else None,
            batch_size=st.batch_size, seed=st.subset_seed,
            clean_log_probs=clean_lp, progress=self.progress)

    # ------------------------------------------------------------ corruptions, noise
    def corruptions(self) -> None:
        st = self.settings
        shape = tuple(self.x.shape[1:])
        names = st.corruptions or available_corruptions(shape, quick=st.quick_corruptions)
        if not is_image_shape(shape):
            self.notes.append(f"corruptions: inputs of shape {shape} are not images; only the "
                              f"noise corruptions {', '.join(names)} apply")
        xc, yc = self.subset(st.corruption_points)
        self.n_points["corruptions"] = int(len(yc))
        self.reseed()
        self.out["corruptions"] = corruption_accuracy(self.predictors, xc, yc, names,
                                                      st.severities, seed=st.subset_seed,
                                                      progress=self.progress)

    def noise(self) -> None:
        # One draw of standard normal noise, scaled by each sigma: every predictor and every
        # sigma sees the same directions, so the curves differ only by the strength.
        st = self.settings
        xn, yn = self.subset(st.corruption_points)
        self.n_points["noise"] = int(len(yn))
        gen = torch.Generator(device=xn.device).manual_seed(st.subset_seed)
        draws = torch.randn(xn.shape, generator=gen, device=xn.device, dtype=xn.dtype)
        rows = self.out.setdefault("gaussian_noise", [])
        for sigma in st.noise_sigmas:
            xs = xn + float(sigma) * draws
            if self.bounds is not None:
                xs = xs.clamp(*self.bounds)
            for p in self.predictors:
                self.reseed()
                lp = predict_summary(p, xs, st.batch_size).log_probs
                rows.append({"sigma": float(sigma), "prediction": p.name,
                             "accuracy": accuracy(lp, yn), "n_points": int(len(yn))})

    # ------------------------------------------------------------ OOD, smoothness
    def ood(self) -> None:
        st, data = self.settings, self.data
        if not data.ood_sets:
            self.notes.append(f"ood: no out-of-distribution data set for {data.name!r}; skipped")
            return
        xi, _ = self.subset(st.ood_points)
        sets = {}
        for name, xo in data.ood_sets.items():
            sets[name], _ = _subset(xo, torch.zeros(len(xo), dtype=torch.long), st.ood_points,
                                    st.subset_seed)
        self.reseed()
        in_summaries = {p.name: self.shared(p, st.ood_points) for p in self.predictors}
        self.out["ood"] = ood_detection(self.predictors, data.name, xi, sets, st.batch_size,
                                        in_summaries=in_summaries)
        self.n_points["ood"] = int(len(xi))

    def smoothness(self) -> None:
        st, data = self.settings, self.data
        xs, ys = self.subset(st.smoothness_points)
        self.n_points["smoothness"] = int(len(xs))
        weight_batch = None
        if self.params is not None and data.x_train is not None and data.y_train is not None:
            weight_batch = _subset(data.x_train, data.y_train, st.weight_points, st.subset_seed)
        elif self.params is None:
            self.notes.append("smoothness: no parameters given; weight-Hessian measures skipped")
        for p in self.predictors:
            variances = (self.shared(p, st.smoothness_points).output_variance if p.stochastic
                         else None)
            self.out["smoothness"][p.name] = measure_smoothness(
                p, xs, ys, n_random=st.lipschitz_random, adv_steps=st.lipschitz_steps,
                hessian_iters=st.hessian_iters, bounds=self.bounds, params=self.params,
                weight_batch=weight_batch, trace_probes=st.trace_probes,
                power_iters=st.power_iters, batch_size=min(st.batch_size, 100),
                seed=st.subset_seed, output_variances=variances)


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
    from dipnet import inject

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

