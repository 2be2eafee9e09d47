"""Attacks: FGSM / PGD (L-inf, L2) and EOT-PGD, checked on linear models with a closed-form
worst case and on MLPs trained on digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dipnet.evaluation.attacks import fgsm, pgd, robust_accuracy_curve, run_attack
from dipnet.evaluation.predictors import deterministic_predictor, model_predictors
from test_evaluation_support import digits_split, dipnet_mlp, standard_mlp


def _linear(num_classes: int, dim: int = 20, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(dim, num_classes)
    return lin.eval()


def _closed_form_robust(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float,
                        norm: str) -> torch.Tensor:
    """Exact worst case of a linear classifier without box constraints.

    The margin of class y over j, (w_y - w_j).x + b_y - b_j, drops by at most
    eps * ||w_y - w_j||_dual (L1 for an L-inf ball, L2 for an L2 ball), attained at
    delta = -eps * sign(w_y - w_j) resp. -eps * (w_y - w_j) / ||w_y - w_j||_2; the point stays
    correct iff every margin exceeds its drop.
    """
    with torch.no_grad():
        logits = lin(x)
        w = lin.weight
        ok = torch.ones(len(y), dtype=torch.bool)
        for j in range(w.shape[0]):
            diff = w[y] - w[j]  # (N, D)
            drop = eps * (diff.abs().sum(1) if norm == "linf" else diff.norm(dim=1))
            margin = logits.gather(1, y[:, None])[:, 0] - logits[:, j]
            ok &= (j == y) | (margin > drop)
    return ok


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_binary_linear_margin_drop_is_closed_form(norm):
    lin = _linear(2)
    x = torch.randn(200, 20)
    y = lin(x).argmax(-1).detach()  # all correct at eps 0
    pred = deterministic_predictor(lin)
    eps = 0.05
    # No random start, no early stop on success: measure the margin drop of the full attack.
    adv = pgd(pred, x, y, eps, norm, steps=10, random_start=False, bounds=None)
    w = (lin.weight[1] - lin.weight[0]).detach()
    sign = (2 * y - 1).float()  # +1 if class 1
    with torch.no_grad():
        m0 = sign * (lin(x)[:, 1] - lin(x)[:, 0])
        m1 = sign * (lin(adv)[:, 1] - lin(adv)[:, 0])
    expected = eps * (w.abs().sum() if norm == "linf" else w.norm())
    broken = m1 < 0  # early stopping freezes broken points at their first success
    assert torch.allclose((m0 - m1)[~broken], expected.expand((~broken).sum()), rtol=1e-4)
    # Every point the closed form says is breakable was broken, and no other.
    robust = _closed_form_robust(lin, x, y, eps, norm)
    assert torch.equal(~broken, robust)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_multiclass_linear_pgd_matches_closed_form(norm):
    lin = _linear(10)
    torch.manual_seed(1)
    x = torch.randn(400, 20)
    y = lin(x).argmax(-1).detach()
    pred = deterministic_predictor(lin)
    eps = 0.15 if norm == "linf" else 0.6
    robust = _closed_form_robust(lin, x, y, eps, norm).float().mean().item()
    kw = dict(steps=50, bounds=None, generator=torch.Generator().manual_seed(0))
    ce = run_attack(pred, x, y, "pgd", norm, eps, **kw).float().mean().item()
    got = run_attack(pred, x, y, "pgd", norm, eps, losses=("ce", "margin"), **kw).float().mean().item()
    assert got <= ce
    # The closed form is the true minimum: no attack can go below it (up to float ties) ...
    assert got >= robust - 1 / 400
    # ... and PGD with cross-entropy and margin losses gets within 2 points of it (it may pick
    # a sub-optimal class for a few points whose closest classes have near-equal margins).
    assert got - robust <= 0.02, (got, robust)
    assert robust < 0.8  # the budget matters, so the comparison is not trivially 1 == 1


def test_eps_zero_reproduces_clean_accuracy_and_curve_monotone():
    model = standard_mlp()
    _, _, x, y = digits_split()
    (pred,) = model_predictors(model)
    clean = (model(x).argmax(-1) == y).float().mean().item()
    eps = [0.0, 0.02, 0.05, 0.1, 0.2]
    for attack in ("fgsm", "pgd"):
        curve = robust_accuracy_curve(pred, x, y, attack, "linf", eps, cumulative=False,
                                      steps=10, generator=torch.Generator().manual_seed(0))
        accs = [r["accuracy"] for r in curve]
        assert accs[0] == pytest.approx(clean)
        # Raw (not cumulative) attacks: monotone on real nets, up to 1 point of attack noise.
        assert all(b <= a + 0.01 for a, b in zip(accs, accs[1:])), accs
        assert accs[-1] < 0.5 * clean  # eps 0.2 on digits is a strong attack
    fg = robust_accuracy_curve(pred, x, y, "fgsm", "l2", [0.5, 1.0])
    pg = robust_accuracy_curve(pred, x, y, "pgd", "l2", [0.5, 1.0], steps=10)
    for a, b in zip(fg, pg):
        assert b["accuracy"] <= a["accuracy"]  # PGD at least as strong as FGSM
        assert b["accuracy"] < a["accuracy"] or a["accuracy"] == 0


def test_cumulative_curve_is_non_increasing():
    (pred,) = model_predictors(standard_mlp())
    _, _, x, y = digits_split()
    curve = robust_accuracy_curve(pred, x, y, "pgd", "l2", [0.0, 0.25, 0.5, 1.0, 2.0], steps=5)
    accs = [r["accuracy"] for r in curve]
    assert accs == sorted(accs, reverse=True)
    assert accs[0] > accs[-1]


def test_eot_attacks_sampled_prediction():
    model = dipnet_mlp()
    _, _, x, y = digits_split()
    x, y = x[:200], y[:200]
    det, samp = model_predictors(model, k=8)
    torch.manual_seed(0)
    clean = (samp.log_probs(x).argmax(-1) == y).float().mean().item()
    eps = 0.1
    torch.manual_seed(0)
    eot = run_attack(samp, x, y, "pgd", "linf", eps, steps=10, eot_samples=8).float().mean().item()
    torch.manual_seed(0)
    # One noisy sample per step is a weaker gradient estimate than averaging 8 ...
    noisy = run_attack(samp, x, y, "pgd", "linf", eps, steps=10, eot_samples=1).float().mean().item()
    # ... and the deterministic net's own PGD transfers as an attack on the sampled prediction.
    assert eot < clean - 0.3
    assert eot <= noisy + 0.02, (eot, noisy)
    with pytest.raises(ValueError, match="norm"):
        fgsm(det, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="eps"):
        pgd(det, x, y, -1.0)


def _reference_pgd_correct(pred, x, y, eps, norm, steps, gen, restarts=1):
    """The PGD of the first release, kept as the reference: the whole batch at every step, a
    separate forward pass to check every iterate, no pruning of broken points."""
    from dipnet.evaluation.attacks import _clip, _correct, _grad, _project, _random_start, _step

    alpha = 2.5 * eps / steps
    broken = ~_correct(pred, x, y)
    best = x.clone()
    for _ in range(restarts):
        delta = _clip(x + _random_start(x, norm, eps, gen), (0.0, 1.0)) - x
        for _ in range(steps):
            g = _grad(pred, x + delta, y, None)
            delta = _project(delta + _step(g, norm, alpha), norm, eps)
            delta = _clip(x + delta, (0.0, 1.0)) - x
            adv = x + delta
            newly = ~broken & ~_correct(pred, adv, y)
            best[newly] = adv[newly]
            broken |= newly
        best[~broken] = (x + delta)[~broken]
    return _correct(pred, best, y)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_pruned_pgd_is_the_reference_pgd_exactly(norm, eps, restarts):
    # The speed-ups (a broken point leaves the batch, the check reuses the next step's forward
    # pass, cumulative curves attack only the survivors) must not change a single result.
    (pred,) = model_predictors(standard_mlp())
    _, _, x, y = digits_split()
    ref = _reference_pgd_correct(pred, x, y, eps, norm, 10, torch.Generator().manual_seed(0), restarts)
    got = run_attack(pred, x, y, "pgd", norm, eps, steps=10, restarts=restarts,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, ref)
    assert 0.1 < got.float().mean().item() < 0.9  # the attack breaks some points, not all
    # Cumulative curve: the points still standing at the smaller eps, attacked at the larger,
    # give what attacking everyone and intersecting gives.
    curve = robust_accuracy_curve(pred, x, y, "pgd", norm, [eps / 2, eps], steps=10,
                                  restarts=restarts, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    small = _reference_pgd_correct(pred, x, y, eps / 2, norm, 10, gen, restarts)
    large = _reference_pgd_correct(pred, x, y, eps, norm, 10, gen, restarts)
    assert curve[0]["accuracy"] == small.float().mean().item()
    assert curve[1]["accuracy"] == (small & large).float().mean().item()


def test_fgsm_gradient_shared_over_eps_and_eps0_from_the_clean_pass():
    (pred,) = model_predictors(standard_mlp())
    _, _, x, y = digits_split()
    eps = [0.0, 0.05, 0.1]
    curve = robust_accuracy_curve(pred, x, y, "fgsm", "linf", eps)
    still = torch.ones(len(y), dtype=torch.bool)
    for row, e in zip(curve, eps):
        one = run_attack(pred, x, y, "fgsm", "linf", e)  # fgsm() at this eps alone
        still &= one
        assert row["accuracy"] == still.float().mean().item()
    # With the suite's clean log-probabilities the eps = 0 row is their accuracy, no new pass.
    lp = torch.full((len(y), 10), -10.0).scatter(1, y[:, None], 0.0)  # "all correct"
    calls = []
    counted = deterministic_predictor(lambda t: calls.append(len(t)) or pred.logits_fn(t))
    row0 = robust_accuracy_curve(counted, x, y, "pgd", "linf", [0.0], clean_log_probs=lp)[0]
    assert row0["accuracy"] == 1.0 and calls == []
