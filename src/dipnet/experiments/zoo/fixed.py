"""Fixed perturbed training sets: the paper's Table 1 protocol read as "perturbed training data".

``perturbation_mode: fixed`` perturbs the training set ONCE, before training, and then trains
on it as on any data set (the ``fresh`` mode instead draws noise / attacks anew per batch):

- Gaussian: ``clip(x + N(0, sigma^2), 0, 1)`` (the clipping convention of `perturb.gaussian`),
  drawn with a CPU generator seeded by (split_seed, seed): every method of a sweep with the same
  seed trains on the same noisy set, and a resumed run rebuilds exactly the same one.
- FGSM: ``clip(x + eps * sign(grad_x CE), 0, 1)`` against a REFERENCE model: the same
  architecture trained first on the clean data with standard training (same epochs, lr, batch,
  optimizer, seed, split), by the normal harness, into a cached sibling folder
  ``<out>/../_reference/<dataset>-<model>-standard-none-s<seed>-<hash of those settings>``
  (or under the run's ``reference_cache`` folder, to share it across parent folders).
  Every method of a sweep (and every resume) reuses that one reference; a second process that
  needs it while it is being trained waits for it instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import Split
from dipnet.experiments.zoo.perturb import fgsm

#: The settings that decide the reference model's weights (and so its cache folder's hash).
REFERENCE_FIELDS = ("dataset", "model", "model_params", "epochs", "seed", "batch_size", "lr",
                    "optimizer", "weight_decay", "momentum", "lr_schedule", "val_fraction",
                    "split_seed", "max_train")
# A constant mixed into the noise seed so the fixed set's stream is not the run's own.
_FIXED_STREAM = 0xF1CED


def fixed_noise_seed(split_seed: int, seed: int) -> int:
    """The seed of the fixed Gaussian set of (split_seed, seed)."""
    return int(np.random.SeedSequence([split_seed, seed, _FIXED_STREAM]).generate_state(1)[0])


def fixed_gaussian_inputs(x: torch.Tensor, sigma: float, split_seed: int,
                          seed: int) -> torch.Tensor:
    """``clip(x + sigma * N(0, 1), 0, 1)`` with noise from a generator of (split_seed, seed).

    The noise is drawn on the CPU (the same set on every device) and returned on ``x``'s device.
    """
    gen = torch.Generator().manual_seed(fixed_noise_seed(split_seed, seed))
    noise = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float32)
    return (x.detach().cpu().float() + sigma * noise).clamp_(0.0, 1.0).to(x.device)


def reference_config(cfg: RunConfig) -> RunConfig:
    """The clean standard run whose model the fixed FGSM set attacks."""
    data: dict[str, Any] = {k: getattr(cfg, k) for k in REFERENCE_FIELDS}
    data.update(method="standard", eval_mc=False, data_dir=cfg.data_dir,
                num_threads=cfg.num_threads, device=cfg.device,
                reference_cache=cfg.reference_cache)
    return RunConfig.from_dict(json.loads(json.dumps(data)))


def reference_dir(cfg: RunConfig, out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/../_reference/<reference run name>-<10 hex of its settings>`` (the root is
    ``cfg.reference_cache`` when set)."""
    ref = reference_config(cfg)
    key = json.dumps({k: getattr(ref, k) for k in REFERENCE_FIELDS}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    root = (Path(cfg.reference_cache) if cfg.reference_cache is not None
            else Path(out_dir).parent / "_reference")
    return root / f"{ref.run_name()}-{digest}"


@torch.no_grad()
def fixed_fgsm_inputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      batch_size: int = 1000) -> torch.Tensor:
    """FGSM (`perturb.fgsm`) of every example against ``model``, in batches."""
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        out[i:i + batch_size] = fgsm(model, x[i:i + batch_size], y[i:i + batch_size], eps)
    return out


def fixed_training_inputs(cfg: RunConfig, train: Split, device: torch.device,
                          reference: tuple[Path, dict[str, Any]] | None = None
                          ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The fixed perturbed training inputs of ``cfg`` (``perturbation_mode == "fixed"``).

    Training the FGSM reference is the training loop's work
    (`dipnet.experiments.run.train.fixed_training_set` trains or reuses it, then calls this).

    Args:
        cfg: the run (train_perturbation gaussian or fgsm).
        train: its training split.
        device: where to compute and return the inputs.
        reference: (folder, metrics) of the trained reference run; FGSM only.
    Returns:
        (the perturbed inputs on ``device``, a record for metrics.json: ``sha256`` of the set,
        ``reference_run`` and ``reference_test_accuracy`` (None for Gaussian)).
    Raises:
        ValueError: another train_perturbation, or FGSM without a reference.
    """
    from dipnet.experiments.run.runs import load_run

    ref_dir: Path | None = None
    ref_acc = None
    if cfg.train_perturbation == "gaussian":
        x = fixed_gaussian_inputs(train.x, cfg.strength, cfg.split_seed, cfg.seed).to(device)
    elif cfg.train_perturbation == "fgsm":
        if reference is None:
            raise ValueError("fixed FGSM needs its trained reference run")
        ref_dir, ref_metrics = reference
        ref_acc = ref_metrics.get("test_accuracy")
        reference = load_run(ref_dir, load_data=False, allow_code=True)  # the run's own model
        model = reference.model.to(device)
        x = fixed_fgsm_inputs(model, train.x.to(device), train.y.to(device), cfg.strength,
                              cfg.eval_batch_size)
    else:
        raise ValueError(f"no fixed set for train_perturbation {cfg.train_perturbation!r}")
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return x, {"sha256": digest, "reference_run": None if ref_dir is None else str(ref_dir),
               "reference_test_accuracy": ref_acc}
