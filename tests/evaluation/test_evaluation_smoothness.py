"""Smoothness measures on cases with known answers, and the paper's Theorem 1 bound checked
numerically on small bounded networks smoothed with Gaussian noise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dipnet
from dipnet.evaluation.predictors import frozen, model_predictors
from dipnet.evaluation.smoothness import (
    gaussian_smoothing_bound,
    input_hessian_spectral_norm,
    jacobian_norms,
    local_lipschitz,
    loss_gradient_norms,
    measure_smoothness,
    output_variance,
    stein_gradient,
    weight_hessian_stats,
)
from test_evaluation_support import digits_split, dipnet_mlp, standard_mlp


def _spd(d: int, eigs: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_input_hessian_of_quadratic():
    # loss(x) = 0.5 x^T A x: Hessian A everywhere, spectral norm max |eig| = 5.
    a = _spd(6, [5.0, -3.0, 1.0, 0.5, 0.1, -0.2])
    x = torch.randn(4, 6, dtype=torch.float64)
    norm = input_hessian_spectral_norm(lambda z: 0.5 * ((z @ a) * z).sum(1), x, iters=100,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.allclose(norm, torch.full((4,), 5.0, dtype=torch.float64), rtol=1e-3)


def test_input_hessian_of_affine_loss_is_zero():
    w = torch.randn(6)
    norm = input_hessian_spectral_norm(lambda z: z @ w, torch.randn(3, 6), iters=3)
    assert torch.equal(norm, torch.zeros(3))


def test_weight_hessian_trace_and_top_eigenvalue_of_quadratic():
    eigs = [4.0, 2.0, 1.0, 0.5, -0.5, 0.25, 0.1, 0.0]
    a = _spd(8, eigs, seed=1)
    theta = nn.Parameter(torch.randn(8, dtype=torch.float64))
    loss = 0.5 * theta @ a @ theta
    stats = weight_hessian_stats(loss, [theta], trace_probes=2000, power_iters=200,
                                 generator=torch.Generator().manual_seed(0))
    assert stats["top_eigenvalue"] == pytest.approx(4.0, rel=1e-4)
    # Hutchinson with Rademacher probes: variance 2 * sum_{i != j} A_ij^2; 4 standard errors.
    assert abs(stats["trace"] - sum(eigs)) < 4 * stats["trace_stderr"]
    off = (a ** 2).sum() - (torch.diagonal(a) ** 2).sum()
    expected_stderr = math.sqrt(2 * off.item() / 2000)
    assert stats["trace_stderr"] == pytest.approx(expected_stderr, rel=0.15)


def test_linear_model_input_gradient_is_its_weight():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5).double()
    x = torch.randn(30, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (30,))
    w = lin.weight.detach()
    norms = jacobian_norms(lin, x)
    assert torch.allclose(norms["spectral"], torch.linalg.matrix_norm(w, ord=2).expand(30))
    assert torch.allclose(norms["frobenius"], torch.linalg.matrix_norm(w).expand(30))
    # Cross-entropy gradient of a linear model: W^T (softmax - onehot).
    g = loss_gradient_norms(lambda z: nn.functional.cross_entropy(lin(z), y, reduction="none"), x)
    p = torch.softmax(lin(x), -1).detach()
    expected = ((p - nn.functional.one_hot(y, 5)) @ w).norm(dim=1)
    assert torch.allclose(g, expected)
    # Lipschitz ratios of a linear map never exceed ||W||_2; gradient ascent attains it.
    lip = local_lipschitz(lin, x, radius=0.5, n_random=4, adv_steps=30,
                          generator=torch.Generator().manual_seed(0))
    top = torch.linalg.matrix_norm(w, ord=2)
    assert (lip["random"] <= top + 1e-9).all() and (lip["adversarial"] <= top + 1e-9).all()
    assert (lip["adversarial"] >= 0.99 * top).all()
    assert (lip["random"] < 0.9 * top).all()  # random directions alone are far from the worst


def test_output_variance_matches_definition():
    s = torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]], [[2.0, 4.0]]])  # (k=3, B=1, C=2)
    # Var([1,3,2]) = 1, Var([0,2,4]) = 4 (unbiased) -> 5
    assert output_variance(s).item() == pytest.approx(5.0)
    assert output_variance(s[:1]).item() == 0.0


def test_theorem1_bound_is_tight_for_a_step_in_one_dimension():
    # h = tanh(1000 x) is essentially sign(x): bounded by 1 and not Lipschitz (slope 1000).
    # Smoothed with N(0, sigma^2), g'(0) = 2 phi(0) / sigma, which equals Theorem 1's bound
    # E|z| / sigma: the bound is attained, so this checks both the bound and the estimator.
    sigma = 0.5
    bound = gaussian_smoothing_bound(sigma, dim=1)
    assert bound == pytest.approx(math.sqrt(2 / math.pi) / sigma, rel=1e-9)
    x = torch.tensor([[0.0], [0.3], [-1.0]], dtype=torch.float64)
    g = stein_gradient(lambda z: torch.tanh(1000 * z[:, 0]), x, sigma, n_samples=400000,
                       generator=torch.Generator().manual_seed(0))[:, 0]
    exact = 2 * torch.exp(-x[:, 0] ** 2 / (2 * sigma ** 2)) / math.sqrt(2 * math.pi) / sigma
    # Stein estimator std with control variate <= 2 / sigma / sqrt(n) = 0.0063; 4 std.
    assert torch.allclose(g, exact, atol=0.025)
    assert g.abs().max().item() <= bound + 0.025
    assert g[0].item() >= 0.97 * bound  # tight at the step


def _bounded_net(d: int) -> nn.Module:
    torch.manual_seed(3)
    # A steep bounded net: |h| <= 1, but gradients in the hundreds (tanh of 500 x an MLP).
    net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1))

    class Bounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(500 * self.net(x))

    return Bounded().double().eval()


def test_theorem1_bound_holds_for_dipnet_input_projection():
    # DIPNet with placement="input" is exactly Gaussian smoothing of the net's input, so the
    # MC-averaged prediction estimates g = h * N(0, lambda). Check max ||grad g|| <= bound over
    # points chosen where h is steepest, using the suite's own Jacobian code on the sampled
    # predictor (reparameterised gradient of the k-average with fixed noise).
    d, var = 4, 0.09
    h = _bounded_net(d)
    # Points near the zero set of h, where the unsmoothed gradient is largest.
    xs = torch.randn(2000, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        idx = h(xs)[:, 0].abs().argsort()[:40]
    x = xs[idx]
    raw = jacobian_norms(h, x)["frobenius"]
    model = dipnet.project(_bounded_net(d), dipnet.DIPConfig(placement="input", init_variance=var,
                                                             variance_floor=1e-12))
    det, samp = model_predictors(model, k=20000)
    samp.chunk = 20000 * 8
    torch.manual_seed(0)
    smoothed = frozen(samp, seed=0)
    g = jacobian_norms(smoothed, x)["frobenius"]
    bound = gaussian_smoothing_bound(math.sqrt(var), dim=d)
    # The unsmoothed net violates the bound by far, so the check is not vacuous ...
    assert raw.max().item() > 5 * bound
    # ... the smoothed one respects it. MC error: each gradient is an average of 20000
    # reparameterised samples; 10 % slack covers it (the observed max is well inside).
    assert g.max().item() <= 1.1 * bound, (g.max().item(), bound)
    # Per-feature variances: Monte Carlo bound equals the closed form for equal variances.
    mc = gaussian_smoothing_bound(torch.full((d,), math.sqrt(var)), n_mc=200000)
    assert mc == pytest.approx(bound, rel=5e-3)


def test_measure_smoothness_on_trained_mlps():
    _, _, x, y = digits_split()
    x, y = x[:60], y[:60]
    xw, yw = digits_split()[0][:200], digits_split()[1][:200]
    std = standard_mlp()
    (p_std,) = model_predictors(std)
    m_std = measure_smoothness(p_std, x, y, bounds=(0, 1), params=list(std.parameters()),
                               weight_batch=(xw, yw), hessian_iters=10, trace_probes=5, power_iters=5)
    dip = dipnet_mlp()
    det, samp = model_predictors(dip, k=8)
    params = [p for p in dip.parameters() if all(p is not v for v in dipnet.variance_parameters(dip))]
    m_samp = measure_smoothness(samp, x, y, bounds=(0, 1), params=params, weight_batch=(xw, yw),
                                hessian_iters=10, trace_probes=5, power_iters=5)
    for m in (m_std, m_samp):
        # Lipschitz: adversarial pairs beat random ones, and neither beats the largest local
        # Jacobian by much (a ratio over a finite ball can exceed the local Jacobian at x only
        # through curvature).
        assert m["lipschitz_adversarial"]["max"] >= m["lipschitz_random"]["max"]
        assert m["logit_jacobian_spectral"]["max"] <= m["logit_jacobian_frobenius"]["max"] + 1e-6
        assert m["input_hessian_spectral"]["mean"] > 0
        assert m["weight_hessian_top_eigenvalue"] > 0
        assert m["settings"]["n_points"] == 60
    assert m_std["output_variance"]["mean"] == 0.0
    assert m_samp["output_variance"]["mean"] > 0.0
    assert m_samp["settings"]["k"] == 8


class _SDPAttention(nn.Module):
    """Self-attention through torch's fused SDPA, whose CPU kernel has no double backward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        t = x.view(x.shape[0], 1, 2, 4)                                   # (B, heads, T, d)
        return self.fc(F.scaled_dot_product_attention(t, t, t).flatten(1))


def test_a_model_without_second_derivatives_is_one_clear_error_naming_the_fix():
    from dipnet.errors import UserError

    torch.manual_seed(0)
    model = _SDPAttention()
    (p,) = model_predictors(model)
    x, y = torch.rand(5, 8), torch.randint(0, 3, (5,))
    with pytest.raises(UserError, match="second derivative.*eager.*smoothness"):
        measure_smoothness(p, x, y, hessian_iters=2)


def test_the_zoo_hf_vit_has_second_derivatives():
    """The zoo's Hugging Face ViT builds its attention eagerly, so the Hessian measures run."""
    pytest.importorskip("transformers")
    from dipnet.experiments.zoo.models import create_model

    torch.manual_seed(0)
    model = create_model("hf_vit", (1, 8, 8), 3, hidden=8, depth=1, heads=2).eval()
    (p,) = model_predictors(model)
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 3, (3,))
    out = measure_smoothness(p, x, y, hessian_iters=2, params=list(model.parameters()),
                             weight_batch=(x, y), trace_probes=2, power_iters=2)
    assert math.isfinite(out["input_hessian_spectral"]["max"])
    assert math.isfinite(out["weight_hessian_trace"])
