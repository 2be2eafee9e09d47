"""`dipnet certify RUN_DIR`: randomized-smoothing certificates of a trained run, as certify.json.

`certify_run` loads the run, picks the noise that smooths it (the run's input projection for
dipnet and fixed_noise; for rs and input_noise, the run's own sigma through a frozen input
projection, `dipnet.certify.with_input_noise` in the module) and certifies the evaluation
suite's fixed random subset of the test set with `dipnet.certify`. Every arm is certified by
the same code. The run folder is locked while it works and the JSON is written atomically.
(Formerly ``dipnet.evaluation.certified``.)
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from dipnet import inject
from dipnet.certify import Certificate, certify, with_input_noise
from dipnet.errors import UserError
from dipnet.evaluation.settings import DEFAULT_RADII, SUITES
from dipnet.evaluation.suite import _device, _subset_index, atomic_write_json, check_out_path
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.run.runs import load_run

SCHEMA_VERSION = 1
#: Methods whose training noise is N(0, sigma^2) at the input, sigma in their parameters.
INPUT_NOISE_METHODS = ("rs", "input_noise")
UNITS = ("model-input units (pixels on [0, 1] for the built-in data sets; an input "
         "normalisation inside the model is accounted for)")


def certified_accuracy(cert: Certificate, y: torch.Tensor, radii: Sequence[float]
                       ) -> list[dict[str, float]]:
    """Fraction of examples whose certified label is right with a radius >= r, for each r
    (at r = 0: the smoothed classifier's accuracy, abstentions counted wrong)."""
    right = cert.label == y.cpu()
    return [{"radius": float(r), "accuracy": float((right & (cert.radius >= r)).double().mean())}
            for r in sorted(radii)]


def _smoothed_model(run: Any, sigma: float | None) -> tuple[torch.nn.Module, str]:
    """The model to certify and where its noise comes from."""
    method = run.config.method
    if inject.projections(run.model):
        if sigma is not None:
            raise UserError(f"--sigma smooths runs without projections; this {method} run is "
                            "smoothed by its own input projection: drop --sigma.")
        return run.model, f"the run's input projection ({method})"
    if sigma is None and method in INPUT_NOISE_METHODS:
        sigma = float(run.method.params.get("sigma", 0.0))
        if not sigma > 0:
            raise UserError(f"this {method} run was trained with sigma = {sigma}, no noise to "
                            "certify with; pass --sigma S.")
        source = f"the run's {method} sigma = {sigma:g} (a frozen input projection)"
    elif sigma is not None:
        source = f"--sigma {sigma:g} (a frozen input projection)"
    else:
        raise UserError(f"a {method} run has no Gaussian input noise to certify with (runs of "
                        "dipnet, fixed_noise, rs and input_noise have); pass --sigma S to smooth "
                        "it with N(0, S^2) at its input.")
    return with_input_noise(run.model, sigma, tuple(run.data.input_shape)), source


def certify_run(run_dir: str | os.PathLike, *, n: int = 10_000, n0: int = 100,
                alpha: float = 0.001, points: int = 500, seed: int = 0,
                radii: Sequence[float] = DEFAULT_RADII, internal: str = "sample",
                from_first_projection: bool = False, sigma: float | None = None,
                batch_size: int | None = None, device: str | None = "auto",
                data_dir: str | None = None, out: str | os.PathLike | None = None,
                write: bool = True, progress: bool = True) -> dict[str, Any]:
    """Certify a finished run and write ``certify.json`` into its folder (or ``out``).

    Args:
        run_dir: a folder written by ``dipnet train``.
        n, n0, alpha, internal, from_first_projection, batch_size: as `dipnet.certify`.
        points: test points certified (the evaluation suite's fixed random subset, so they
            are among the points its attacks use).
        seed: seed of the Monte Carlo noise.
        radii: L2 radii of the certified-accuracy curve.
        sigma: smooth a run without projections with N(0, sigma^2); default the run's own
            sigma (rs, input_noise).
        device, data_dir: as `dipnet.experiments.assess.evaluate.evaluate_run`.
        out: write here instead of ``run_dir/certify.json``.
        write: False only returns the dict.
        progress: a progress bar over the points.
    Returns:
        the certify dict, as written.
    Raises:
        UserError: not a finished run, a run without input noise (and no ``sigma``), the run
            folder in use by another dipnet process, or an unwritable ``out``; `CertifyError`
            (a UserError) for what `dipnet.certify` refuses.
    """
    if write and out is not None:
        check_out_path(out)
    dev = _device(device)
    run = load_run(run_dir, data_dir=data_dir)
    model, source = _smoothed_model(run, sigma)
    model.to(dev)
    x, y = run.data.test.x, run.data.test.y
    idx = _subset_index(len(y), points, SUITES["quick"].subset_seed)
    if idx is not None:
        x, y = x[idx], y[idx]
    x, y = x.to(dev), y.to(dev)
    lock = FolderLock.acquire(run_dir, option="RUN_DIR") if write else None
    try:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            cert, seconds = _certify_in_groups(model, x, n=n, n0=n0, alpha=alpha,
                                               batch_size=batch_size, internal=internal,
                                               from_first_projection=from_first_projection,
                                               progress=progress)
        result = _result(run, cert, y, idx, radii, seconds, source, seed, dev)
        result["run_dir"] = str(Path(run_dir))
        if write:
            target = Path(out) if out is not None else Path(run_dir) / "certify.json"
            atomic_write_json(target, result)
    finally:
        if lock is not None:
            lock.release()
    return result


def _certify_in_groups(model: torch.nn.Module, x: torch.Tensor, *, progress: bool,
                       **kwargs: Any) -> tuple[Certificate, float]:
    """`certify` on groups of points (for the progress bar); one certificate for all."""
    group = max(1, min(len(x), 25))
    parts: list[Certificate] = []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(x), desc="certify", unit="point", leave=False)
    try:
        for start in range(0, len(x), group):
            parts.append(certify(model, x[start:start + group], **kwargs))
            if bar is not None:
                bar.update(len(parts[-1].label))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    first = parts[0]
    if any(not torch.equal(p.sigma, first.sigma) for p in parts):
        raise UserError("the model's input variances changed during certification; certify a "
                        "run that nothing else modifies.")
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in
           ("label", "p_lower", "radius", "axis_radii", "volume_radius", "count")}
    return Certificate(**cat, sigma=first.sigma, n=first.n, n0=first.n0, alpha=first.alpha,
                       internal=first.internal, covers=first.covers,
                       projection=first.projection, seconds=seconds), seconds


def _result(run: Any, cert: Certificate, y: torch.Tensor, idx: torch.Tensor | None,
            radii: Sequence[float], seconds: float, source: str, seed: int,
            dev: torch.device) -> dict[str, Any]:
    points = len(y)
    index = idx.tolist() if idx is not None else list(range(points))
    sigma = cert.sigma
    samples = points * (cert.n + cert.n0)
    cfg = run.config
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": run.data.name, "model": cfg.model, "method": cfg.method, "seed": cfg.seed,
        "train_perturbation": getattr(cfg, "train_perturbation", "none"),
        "certify_seed": seed, "n": cert.n, "n0": cert.n0, "alpha": cert.alpha,
        "internal": cert.internal, "points": points, "noise": source, "covers": cert.covers,
        "projection": cert.projection,
        "sigma": {"units": UNITS, "shape": list(sigma.shape), "min": float(sigma.min()),
                  "mean": float(sigma.mean()), "max": float(sigma.max()),
                  "geometric_mean": math.exp(float(sigma.log().mean())),
                  "per_feature": [round(v, 8) for v in sigma.reshape(-1).tolist()]},
        "certified_accuracy": certified_accuracy(cert, y, radii),
        "abstention_rate": float(cert.abstained.double().mean()),
        "mean_radius": float(cert.radius.mean()),
        "mean_volume_radius": float(cert.volume_radius.mean()),
        "timing": {"seconds": round(seconds, 3), "seconds_per_example": seconds / points,
                   "samples_per_second": samples / seconds if seconds > 0 else None},
        "examples": [
            {"index": i, "label": int(t), "prediction": int(p), "correct": bool(p == t),
             "p_lower": float(pl), "radius": float(r), "volume_radius": float(v)}
            for i, t, p, pl, r, v in zip(index, y.tolist(), cert.label.tolist(),
                                         cert.p_lower.tolist(), cert.radius.tolist(),
                                         cert.volume_radius.tolist())],
        "environment": {"torch": torch.__version__, "device": str(dev),
                        "threads": torch.get_num_threads(), "python": platform.python_version(),
                        "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_summary(result: dict[str, Any]) -> str:
    """A few lines: certified accuracy per radius, abstention, timing."""
    curve = "  ".join(f"r={c['radius']:g}: {100 * c['accuracy']:.1f}%"
                      for c in result["certified_accuracy"])
    s = result["sigma"]
    t = result["timing"]
    return "\n".join([
        f"noise: {result['noise']}; sigma min {s['min']:.4g}, mean {s['mean']:.4g}, max "
        f"{s['max']:.4g} ({result['covers']})",
        f"certified accuracy: {curve}",
        f"abstained: {100 * result['abstention_rate']:.1f}% of {result['points']} points; "
        f"mean radius {result['mean_radius']:.3f}; n={result['n']}, n0={result['n0']}, "
        f"alpha={result['alpha']:g}, internal={result['internal']}",
        f"time: {t['seconds']:.1f} s ({t['seconds_per_example']:.3f} s per example)"])

