"""What a fresh process pays before the suite measures anything (issue 10 item 7).

Every `dipnet evaluate` and every sweep worker is a fresh process. Three imports used to cost
it about 1.4 s on this machine without measuring anything: sympy (torch imports it the first
time ``torch.autograd.grad`` gets a tensor as ``grad_outputs``; the Hessian-vector products
passed one), scikit-learn (only for ``roc_auc_score``) and the corruption package (OpenCV,
scikit-image, numba), which the vectorised corruptions do not need. These tests pin that the
suite no longer imports them, and that what replaced them gives the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dipnet
from dipnet.evaluation.ood import auroc
from dipnet.evaluation.predictors import frozen_log_probs, model_predictors
from dipnet.evaluation.smoothness import input_hessian_spectral_norm, weight_hessian_stats
from dipnet.evaluation.suite import model_weights
from test_evaluation_support import digits_split, mlp

ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from torch import nn
    import dipnet
    from dipnet.evaluation.predictors import model_predictors
    from dipnet.evaluation.suite import EvalData, evaluate_predictions, get_settings, model_weights

    torch.manual_seed(0)
    model = dipnet.project(nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),
                                         nn.Linear(32, 3)))
    x = torch.rand(60, 1, 16, 16)
    y = torch.randint(0, 3, (60,))
    data = EvalData("toy", x, y, x, y, {"other": torch.rand(40, 1, 16, 16)})
    settings = get_settings("quick", attack_points=20, corruption_points=20, ood_points=20,
                            smoothness_points=10, weight_points=20, pgd_steps=2,
                            corruptions=("gaussian_noise", "contrast"), severities=(1,),
                            lipschitz_random=1, lipschitz_steps=1, hessian_iters=2,
                            trace_probes=2, power_iters=2)
    out = evaluate_predictions(model_predictors(model, k=2), data, settings,
                               params=model_weights(model), progress=False)
    assert out["ood"] and out["corruptions"] and out["smoothness"]["sampled"]
    assert "weight_hessian_trace" in out["smoothness"]["sampled"], out["smoothness"]
    heavy = [m for m in ("sympy", "sklearn", "imagecorruptions", "cv2", "skimage")
             if m in sys.modules]
    print("HEAVY", ",".join(heavy))
""")


def test_the_suite_imports_no_sympy_sklearn_or_corruption_package(tmp_path):
    # Every part runs (OOD with AUROC, the input and weight Hessians, two vectorised
    # corruptions); none of the three packages may be imported on the way.
    env = {**os.environ, "DIPNET_CACHE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY"))
    assert line == "HEAVY ", f"imported: {line[6:]}"


def _hvp_reference(g: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # The formulation the suite used before: the vector as grad_outputs.
    (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True)
    return hv


def _input_hessian_reference(loss_fn, x: torch.Tensor, iters: int,
                             gen: torch.Generator) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x).sum(), x, create_graph=True)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v = v / v.flatten(1).norm(dim=1).view(shape)
    norm = torch.zeros(x.shape[0])
    for _ in range(iters):
        hv = _hvp_reference(g, x, v)
        norm = hv.flatten(1).norm(dim=1)
        v = (hv / norm.view(shape).clamp_min(1e-30)).detach()
    return norm


@pytest.mark.parametrize("which", ["deterministic", "sampled"])
def test_hessian_vector_products_are_bit_identical_to_grad_outputs(which):
    # The products are now grad(sum(g * v)) instead of grad(g, grad_outputs=v): the same
    # numbers bit for bit, on a DIPNet MLP, deterministic and with frozen noise.
    torch.manual_seed(0)
    model = dipnet.project(mlp(32), dipnet.DIPConfig(init_variance=0.05)).eval()
    pred = {p.name: p for p in model_predictors(model, k=4)}[which]
    _, _, xte, yte = digits_split()
    x, y = xte[:20], yte[:20]
    lp = frozen_log_probs(pred, seed=3)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(lp(z).float(), y, reduction="none")

    got = input_hessian_spectral_norm(loss_fn, x, iters=5,
                                      generator=torch.Generator().manual_seed(1))
    ref = _input_hessian_reference(loss_fn, x, 5, torch.Generator().manual_seed(1))
    assert got.abs().min() > 0 and torch.equal(got, ref)

    params = model_weights(model)
    stats = weight_hessian_stats(F.nll_loss(lp(x).float(), y), params, trace_probes=3,
                                 power_iters=3, generator=torch.Generator().manual_seed(2))
    # Reference: the same probes and power iteration with grad_outputs.
    gen = torch.Generator().manual_seed(2)
    grads = torch.autograd.grad(F.nll_loss(lp(x).float(), y), params, create_graph=True)

    def hvp(vs):
        return torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)

    samples = []
    for _ in range(3):
        vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
        samples.append(sum((v * h).sum() for v, h in zip(vs, hvp(vs))).item())
    vs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    top = 0.0
    for _ in range(3):
        n = sum((v * v).sum().item() for v in vs) ** 0.5
        vs = [v / max(n, 1e-30) for v in vs]
        hs = hvp(vs)
        top = sum((v * h).sum() for v, h in zip(vs, hs)).item()
        vs = [h.detach() for h in hs]
    assert stats["trace"] == torch.tensor(samples).mean().item()
    assert stats["top_eigenvalue"] == top and top != 0.0


def test_weight_hessian_of_a_loss_with_no_curvature_is_zero():
    # A loss linear in the parameters: no gradient depends on them (the case the products
    # now handle themselves instead of torch raising).
    w = torch.randn(5, requires_grad=True)
    stats = weight_hessian_stats((w * torch.arange(5.0)).sum(), [w], trace_probes=2,
                                 power_iters=2, generator=torch.Generator().manual_seed(0))
    assert stats["trace"] == 0.0 and stats["top_eigenvalue"] == 0.0


def test_auroc_by_hand_and_against_sklearn():
    # Pairs (in, out): (3,1) (3,2) (2,1) win, (2,2) ties: 3.5 / 4.
    assert auroc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == 0.875
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([0.0, 0.1]), np.array([0.5, 0.9])) == 0.0
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    worst = 0.0
    for t in range(300):
        n_in, n_out = rng.integers(1, 300, 2)
        if t % 3 == 0:  # continuous scores
            s_in, s_out = rng.normal(size=n_in), rng.normal(0.4, size=n_out)
        elif t % 3 == 1:  # heavy ties
            s_in, s_out = rng.integers(0, 4, n_in) * 1.0, rng.integers(0, 4, n_out) * 1.0
        else:  # float32, as the suite's scores
            s_in = rng.random(n_in).astype(np.float32)
            s_out = rng.random(n_out).astype(np.float32) ** 2
        ref = roc_auc_score(np.r_[np.ones(n_in), np.zeros(n_out)], np.r_[s_in, s_out])
        worst = max(worst, abs(auroc(s_in, s_out) - ref))
    # sklearn sums trapezoids in floating point: measured worst difference 1.1e-16.
    assert worst < 1e-12


def test_auroc_refuses_what_sklearn_refuses():
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan, 1.0]), np.array([1.0]))


def test_ood_partner_test_split_does_not_depend_on_the_training_subset():
    # The OOD partners are loaded with max_train=2 (no float copy of the training split);
    # their test inputs must be those of a full load.
    from dipnet.experiments.zoo.data import load_dataset

    full = load_dataset("digits", None, val_fraction=0.0).test.x
    small = load_dataset("digits", None, val_fraction=0.0, max_train=2).test.x
    assert torch.equal(full, small)

