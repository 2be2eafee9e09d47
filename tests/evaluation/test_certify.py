"""`dipnet.certify` / `dipnet.smoothed_predict`: randomized-smoothing certificates from the input
projection (issue 20).

Known answers: for a two-class linear classifier with margin m(x) = v.x + c and input noise
N(0, S^2), S diagonal, pA = Phi(|m| / ||S v||) exactly, the decision boundary lies at distance
|m| / ||v||, and the certified ellipsoid {e : ||S^-1 e|| < Phi^-1(pA_lower)} reaches at most
Phi^-1(pA_lower) ||S v|| / ||v|| towards it. Then the statistics (failure probability and
abstention against alpha), a second implementation (ART's randomized smoothing on the same
rs-trained digits MLP), and the refusals.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dipnet
from dipnet.certify import (CertifyError, binomial_p_value, clopper_pearson_lower,
                            with_input_noise)

scipy_stats = pytest.importorskip("scipy.stats")

D = 8
P_TRUE = torch.linspace(0.6, 0.995, 20, dtype=torch.float64)  # pA of the 20 test points


def linear_model(v: torch.Tensor, c: float, sigma: torch.Tensor) -> nn.Module:
    """Two-class linear classifier with logit difference v.x + c and input noise std sigma."""
    lin = nn.Linear(len(v), 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = v.float()
        lin.bias.zero_()
        lin.bias[1] = c
    model = dipnet.project(lin, dipnet.DIPConfig(placement="input"))
    dipnet.projections(model)[""].set_variance(sigma.float() ** 2)
    return model


def points_at(v: torch.Tensor, c: float, margins: torch.Tensor) -> torch.Tensor:
    """Points whose margin v.x + c is ``margins`` (random offsets along the boundary)."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(len(margins), len(v), generator=g, dtype=torch.float64)
    base -= ((base @ v + c) / v.dot(v))[:, None] * v  # onto the boundary
    return base + (margins / v.dot(v))[:, None] * v


def known_answer_case(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "isotropic":
        sigma = torch.full((D,), 0.5, dtype=torch.float64)
        v = torch.randn(D, generator=g, dtype=torch.float64)
    else:  # diagonal; the boundary normal has its largest part on the smallest sigma
        sigma = torch.linspace(0.2, 1.0, D, dtype=torch.float64)
        v = torch.randn(D, generator=g, dtype=torch.float64) * 0.1
        v[0] = 2.0
    c = 0.3
    sv = float((sigma * v).norm())
    signs = torch.where(torch.arange(len(P_TRUE)) % 2 == 0, 1.0, -1.0).double()
    margins = signs * torch.special.ndtri(P_TRUE) * sv
    x = points_at(v, c, margins)
    return linear_model(v, c, sigma), x.float(), v, c, sigma, margins


@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
def test_linear_known_answers_sound_and_tight(kind):
    torch.set_num_threads(1)
    model, x, v, c, sigma, margins = known_answer_case(kind)
    torch.manual_seed(0)
    cert = dipnet.certify(model, x, n0=100, n=100_000, alpha=0.001)
    assert torch.equal(cert.label, (margins > 0).long())  # pA >= 0.6: never an abstention
    assert torch.allclose(cert.sigma, sigma, rtol=1e-6)
    distance = margins.abs() / v.norm()  # to the decision boundary, in input units
    # soundness: no certified ball crosses the boundary
    assert bool((cert.radius <= distance).all()), (cert.radius / distance).max()
    # the ellipsoid's reach towards the boundary: sound, and within 10 % of the distance at
    # n = 100,000 (measured 0.958-0.991 for both cases; n = 1,000 gives 0.75-0.88)
    z = torch.special.ndtri(cert.p_lower)
    reach = z * (sigma * v).norm() / v.norm()
    assert bool((reach <= distance).all())
    assert bool((reach >= 0.9 * distance).all()), (reach / distance).min()
    # the isotropic radius is min sigma * z; tight here because the boundary normal lies
    # (mostly, in the diagonal case) along the smallest sigma
    assert torch.allclose(cert.radius, sigma.min() * z)
    tight = 0.9 if kind == "isotropic" else 0.9 * float(sigma.min() * v.norm()
                                                         / (sigma * v).norm())
    assert bool((cert.radius >= tight * distance).all()), (cert.radius / distance).min()
    # axis radii: along feature i the boundary is |m| / |v_i| away
    assert cert.axis_radii.shape == x.shape
    assert bool((cert.axis_radii <= margins.abs()[:, None] / v.abs()).all())
    # volume radius: the geometric mean of the axis radii
    assert torch.allclose(cert.volume_radius, cert.axis_radii.log().mean(1).exp())


@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
def test_the_certified_ellipsoid_lies_inside_the_true_region(kind):
    torch.set_num_threads(1)
    model, x, v, c, sigma, margins = known_answer_case(kind)
    torch.manual_seed(0)
    cert = dipnet.certify(model, x, n0=100, n=10_000, alpha=0.001)
    z = torch.special.ndtri(cert.p_lower)
    g = torch.Generator().manual_seed(3)
    u = torch.randn(len(x), 2000, D, generator=g, dtype=torch.float64)
    u /= u.norm(dim=-1, keepdim=True)  # points on the ellipsoid's surface
    worst = -torch.sign(margins)[:, None] * sigma ** 2 * v / (sigma * v).norm()
    e = torch.cat([u, worst[:, None]], 1) * sigma * z[:, None, None]
    inside = (x.double()[:, None] + e) @ v + c
    assert bool((torch.sign(inside) == torch.sign(margins)[:, None]).all())


def test_failure_probability_and_abstention_follow_alpha():
    # 2,000 examples at pA = 0.8 and 2,000 on the boundary (pA = 1/2), n = 100. A failure is a
    # certificate with pA_lower > the true pA (a radius beyond the boundary). Measured at seed 0:
    # failure rates 0.005 (alpha 0.01) and 0.1995 (alpha 0.2) at pA = 0.8; at pA = 1/2 every
    # non-abstention is a failure: 0.005 and 0.18; seeds 1 and 2 stay within 0.007 of alpha.
    # The tolerance is 3 binomial standard deviations of a rate alpha over 2,000 examples.
    torch.set_num_threads(1)
    v = torch.zeros(4, dtype=torch.float64)
    v[0] = 1.0
    model = linear_model(v, 0.0, torch.full((4,), 0.5, dtype=torch.float64))
    x = torch.zeros(4000, 4)
    x[:2000, 0] = 0.5 * float(torch.special.ndtri(torch.tensor(0.8, dtype=torch.float64)))
    rates = {}
    for alpha in (0.01, 0.2):
        tol = 3 * math.sqrt(alpha * (1 - alpha) / 2000)
        torch.manual_seed(0)
        cert = dipnet.certify(model, x, n0=10, n=100, alpha=alpha)
        fail_08 = ((cert.label[:2000] == 1) & (cert.p_lower[:2000] > 0.8)).float().mean()
        fail_05 = (~cert.abstained[2000:]).float().mean()
        assert fail_08 <= alpha + tol and fail_05 <= alpha + tol, (alpha, fail_08, fail_05)
        torch.manual_seed(0)
        pred = dipnet.smoothed_predict(model, x[2000:], n=100, alpha=alpha)
        assert (pred >= 0).float().mean() <= alpha + tol  # PREDICT on the boundary
        rates[alpha] = (float(fail_08), float(cert.abstained[:2000].float().mean()))
    # a larger alpha fails more often and abstains less often
    assert rates[0.2][0] > 2 * rates[0.01][0] + 0.05
    assert rates[0.2][1] <= rates[0.01][1]


def test_clopper_pearson_and_binomial_test_against_their_definitions():
    k = torch.tensor([0, 1, 37, 500, 999, 1000])
    low = clopper_pearson_lower(k, 1000, 0.001)
    assert low[0] == 0
    # P(X >= k; n, p_lower) = alpha is what the lower bound means
    tail = scipy_stats.binom.sf(k[1:].numpy() - 1, 1000, low[1:].numpy())
    assert tail == pytest.approx([0.001] * 5, rel=1e-6)
    a, b = torch.tensor([5, 60, 50, 12, 0]), torch.tensor([5, 40, 49, 0, 0])
    p = binomial_p_value(a, b)
    want = [scipy_stats.binomtest(int(i), int(i + j), 0.5).pvalue if i + j else 1.0
            for i, j in zip(a, b)]
    assert p.tolist() == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------- second implementation
def test_agrees_with_art_randomized_smoothing_within_monte_carlo_error():
    # The same rs-trained digits MLP and sigma, certified by dipnet (through a frozen input
    # projection, `with_input_noise`) and by ART's PyTorchRandomizedSmoothing.certify, 100
    # test digits, n0 = 100, n = 1,000. Measured: mean radius 0.4251 (dipnet, seed 0), 0.4233
    # (seed 1), 0.4226 (ART); the mean paired difference is within one standard error (0.0025)
    # of zero, and both give the same labels. Tolerance: 4 standard errors of the paired
    # difference, computed from the data.
    rs = pytest.importorskip("art.estimators.certification.randomized_smoothing")
    import numpy as np
    from test_evaluation_support import _train, digits_split, mlp

    torch.set_num_threads(1)
    sigma, n0, n, alpha = 0.25, 100, 1000, 0.001
    torch.manual_seed(0)
    model = _train(mlp(), lambda m, x, y: nn.functional.cross_entropy(
        m(x + sigma * torch.randn_like(x)), y))
    _, _, xte, yte = digits_split()
    x = xte[:100]
    torch.manual_seed(0)
    ours = dipnet.certify(with_input_noise(model, sigma, (64,)), x, n0=n0, n=n, alpha=alpha)
    art = rs.PyTorchRandomizedSmoothing(model=model, loss=nn.CrossEntropyLoss(),
                                        input_shape=(64,), nb_classes=10, device_type="cpu",
                                        sample_size=n0, scale=sigma, alpha=alpha)
    # ART's bound imports statsmodels (not a dependency); statsmodels' "beta" interval is
    # Beta.ppf(alpha; k, n - k + 1), written here from scipy directly.
    art._lower_confidence_bound = lambda k, total: (
        float(scipy_stats.beta.ppf(alpha, k, total - k + 1)) if k > 0 else 0.0)
    np.random.seed(0)
    labels, radii = art.certify(x.numpy(), n=n, batch_size=1000)
    diff = ours.radius - torch.from_numpy(radii).double()
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean())) <= 4 * se + 1e-9, (float(diff.mean()), se)
    assert (ours.label.numpy() == labels).mean() >= 0.97
    assert (ours.label == yte[:100]).float().mean() > 0.8  # the model learned


# ---------------------------------------------------------------------- what is certified
class Normalize(nn.Module):
    def __init__(self, mean: float, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def test_sigma_is_in_model_input_units_behind_a_normalisation():
    std = torch.tensor([0.5, 2.0, 0.25]).view(3, 1, 1)
    conv = nn.Sequential(Normalize(0.4, std), nn.Conv2d(3, 4, 3), nn.Flatten(),
                         nn.LazyLinear(2))
    conv(torch.zeros(1, 3, 5, 5))
    model = dipnet.project(conv, dipnet.DIPConfig(placement="custom", target_modules=["1"]))
    lam = torch.tensor([0.01, 0.04, 0.09])
    dipnet.projections(model)["1"].set_variance(lam)
    torch.manual_seed(0)
    cert = dipnet.certify(model, torch.rand(2, 3, 5, 5), n0=10, n=50)
    want = (lam.double().sqrt().view(3, 1, 1) * std.double()).expand(3, 5, 5)
    assert cert.sigma.shape == (3, 5, 5) and torch.allclose(cert.sigma, want, rtol=1e-5)
    assert cert.covers == "the model input" and cert.projection == "1"
    assert cert.axis_radii.shape == (2, 3, 5, 5)


def test_sigma_does_not_depend_on_which_points_are_certified():
    """The CLI certifies in groups and requires one sigma for all of them: the probe that
    reads the input scale must not depend on the group's points (it once started from the
    group's first image, and float32 round-off made the groups' sigmas differ)."""
    torch.manual_seed(0)
    net = nn.Sequential(Normalize(0.2860, torch.tensor(0.3530)), nn.Flatten(),
                        nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    model = dipnet.project(net, dipnet.DIPConfig(init_variance=0.01))
    sigmas = []
    for seed in range(4):
        x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(0)
        sigmas.append(dipnet.certify(model, x, n0=5, n=20).sigma)
    assert all(torch.equal(s, sigmas[0]) for s in sigmas)


def test_internal_noise_sampled_or_off():
    # A huge internal variance makes the sampled base classifier a coin flip (every example
    # abstains); internal="off" certifies the deterministic network smoothed at its input.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    model = dipnet.project(net, dipnet.DIPConfig(placement="layers", init_variance=1e-4))
    dipnet.projections(model)["2"].set_variance(1e6)
    x = torch.randn(20, 4) * 3
    cert_on = dipnet.certify(model, x, n0=50, n=500, internal="sample")
    cert_off = dipnet.certify(model, x, n0=50, n=500, internal="off")
    assert cert_on.abstained.float().mean() > 0.9
    assert cert_off.abstained.float().mean() < 0.2
    assert cert_off.internal == "off"
    assert dipnet.projections(model)["2"].mode == "auto"  # modes restored


# ---------------------------------------------------------------------- refusals
def test_refuses_a_model_without_projections():
    with pytest.raises(CertifyError, match="no DIPNet projection"):
        dipnet.certify(nn.Linear(4, 2), torch.randn(3, 4), n=10)


def test_refuses_without_an_input_projection_unless_asked_and_says_what_it_covers():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model = dipnet.project(net, dipnet.DIPConfig(placement="custom", target_modules=["2"]))
    with pytest.raises(CertifyError, match="from_first_projection=True"):
        dipnet.certify(model, torch.randn(3, 4), n=10)
    cert = dipnet.certify(model, torch.randn(3, 4), n0=10, n=20, from_first_projection=True)
    assert "'2'" in cert.covers and "not the model input" in cert.covers
    assert cert.sigma.shape == (8,)


def test_refuses_non_finite_input_variances():
    model = linear_model(torch.ones(4), 0.0, torch.ones(4))
    with torch.no_grad():
        dipnet.projections(model)[""].raw_variance[1] = float("nan")
    with pytest.raises(CertifyError, match="1 non-finite or non-positive variance"):
        dipnet.certify(model, torch.randn(3, 4), n=10)


class SharedNoise(dipnet.GaussianProjection):
    """A projection that draws one noise vector for the whole batch."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.variance.sqrt() * torch.randn_like(x[:1])


def test_refuses_noise_that_is_not_fresh_per_sample():
    model = linear_model(torch.ones(4), 0.0, torch.ones(4))
    proj = dipnet.projections(model)[""]
    proj.__class__ = SharedNoise
    with pytest.raises(CertifyError, match="same noise for two samples in one pass"):
        dipnet.certify(model, torch.randn(3, 4), n=10)
    proj.__class__ = dipnet.GaussianProjection
    model.register_forward_pre_hook(lambda m, a: torch.manual_seed(0) and None)
    with pytest.raises(CertifyError, match="same noise for two passes"):
        dipnet.certify(model, torch.randn(3, 4), n=10)


class TwoPaths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_refuses_an_input_that_bypasses_the_projection_or_two_input_projections():
    bypass = dipnet.project(TwoPaths(), dipnet.DIPConfig(placement="custom", target_modules=["a"]))
    with pytest.raises(CertifyError, match="also around the projection on 'a'"):
        dipnet.certify(bypass, torch.randn(3, 4), n=10)
    both = dipnet.project(TwoPaths(), dipnet.DIPConfig(placement="layers"))
    with pytest.raises(CertifyError, match="several projections"):
        dipnet.certify(both, torch.randn(3, 4), n=10)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be an integer >= 1"),
    ({"n0": 2.5}, "n0 must be an integer >= 1"),
    ({"alpha": 1.0}, "alpha must lie in"),
    ({"internal": "none"}, "internal must be"),
    ({"batch_size": 0}, "batch_size must be"),
])
def test_refuses_bad_arguments(kwargs, match):
    model = linear_model(torch.ones(4), 0.0, torch.ones(4))
    with pytest.raises(CertifyError, match=match):
        dipnet.certify(model, torch.randn(3, 4), **kwargs)


def test_refuses_bad_inputs_and_outputs():
    model = linear_model(torch.ones(4), 0.0, torch.ones(4))
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(CertifyError, match="dipnet.certify: 1 non-finite"):
        dipnet.certify(model, x, n=10)
    flat = dipnet.project(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)),
                          dipnet.DIPConfig(placement="input"))
    with pytest.raises(CertifyError, match="x must be a floating-point batch"):
        dipnet.certify(model, torch.zeros(0, 4), n=10)
    with pytest.raises(CertifyError, match="x must be a floating-point batch"):
        dipnet.certify(model, torch.zeros(3, 4, dtype=torch.long), n=10)
    with pytest.raises(CertifyError, match="returns logits"):
        dipnet.certify(flat, torch.randn(3, 4), n=10)
    with pytest.raises(CertifyError, match="sigma must be a finite number > 0"):
        with_input_noise(nn.Linear(4, 2), 0.0, (4,))


def test_the_functions_stay_exported_after_their_submodules_are_imported():
    import importlib
    import subprocess
    import sys

    # a fresh interpreter: the submodules are imported first, the way dipnet's own modules do
    code = ("import dipnet.certify, dipnet.predict, dipnet; "
            "print(dipnet.certify.__module__, dipnet.predict.__module__, "
            "dipnet.Certificate.__name__, dipnet.smoothed_predict.__name__)")
    import os
    from pathlib import Path

    # the dipnet this test imported (the shared venv may hold another checkout's)
    env = {**os.environ, "PYTHONPATH": str(Path(dipnet.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["dipnet.certify", "dipnet.predict", "Certificate",
                                  "smoothed_predict"]
    assert importlib.import_module("dipnet.certify").CertifyError is CertifyError
    assert {"certify", "smoothed_predict", "Certificate"} <= set(dipnet.__all__)
