"""The DIPNet objective: barrier minimiser, stability term, batched trajectories, and a real
training sanity check on scikit-learn digits."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import dipnet

import small_models

torch.set_num_threads(1)


def mlp(d_in: int = 6, d_out: int = 3, hidden: int = 16) -> nn.Sequential:
    return small_models.mlp(d_in, hidden, d_out)


@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
def test_barrier_alone_drives_every_variance_to_beta_over_alpha(parameterization: str) -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(alpha=0.1, beta=0.2, parameterization=parameterization,
                           init_variance=0.01, barrier_scaling="unscaled")
    model = dipnet.project(mlp(), cfg)
    opt = torch.optim.Adam(dipnet.variance_parameters(model), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        dipnet.barrier(model, cfg.alpha, cfg.beta).backward()
        opt.step()
    for v in dipnet.variances(model).values():
        assert torch.allclose(v, torch.full_like(v, 2.0), atol=1e-3)


def test_stability_equals_unbiased_variance_computed_independently() -> None:
    torch.manual_seed(0)
    out = torch.randn(5, 7, 4)  # (m, B, C)
    m = out.shape[0]
    # Pairwise form: 1/(m(m-1)) * sum_{j1<j2} ||f_j1 - f_j2||^2, per example, then the mean.
    pair = torch.zeros(7)
    for j1, j2 in itertools.combinations(range(m), 2):
        pair += (out[j1] - out[j2]).pow(2).sum(-1)
    expected = (pair / (m * (m - 1))).mean()
    assert torch.allclose(dipnet.stability(out), expected, atol=1e-6)
    assert dipnet.stability(out[:1]).item() == 0.0


def test_loss_parts_add_up_and_scale_with_the_training_set_size() -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=4, gamma=0.05)
    model = dipnet.project(mlp(), cfg)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    parts = dipnet.DIPLoss(cfg, num_train=1000)(model, x, y)
    assert parts.outputs.shape == (4, 8, 3)
    assert torch.allclose(parts.total, parts.nll + parts.barrier + 0.05 * parts.stability)
    raw = dipnet.barrier(model, 0.1, 0.2)
    assert torch.allclose(parts.barrier, raw / 1000)
    expected_nll = nn.functional.cross_entropy(parts.outputs.reshape(32, 3), y.repeat(4))
    assert torch.allclose(parts.nll, expected_nll)
    assert torch.allclose(parts.stability, dipnet.stability(parts.outputs))
    unscaled = dipnet.DIPConfig(m=4, gamma=0.05, barrier_scaling="unscaled")
    assert torch.allclose(dipnet.DIPLoss(unscaled)(model, x, y).barrier, raw)
    with pytest.raises(ValueError, match="num_train"):
        dipnet.DIPLoss(cfg)


def test_batched_trajectories_draw_independent_noise_per_trajectory_and_example() -> None:
    """Identity network: the outputs ARE the projected inputs, so the noise is visible."""
    torch.manual_seed(0)
    d, b, m = 4, 3, 500
    model = dipnet.project(nn.Sequential(nn.Linear(d, d, bias=False)),
                           dipnet.DIPConfig(init_variance=0.25, m=m))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(d))
    x = torch.randn(b, d).repeat(1, 1)
    x[1] = x[0]  # two identical examples must still get different noise
    parts = dipnet.DIPLoss(num_train=1, criterion=lambda o, t: o.sum() * 0)(model, x, x)
    noise = (parts.outputs - x).detach()  # (m, B, d)
    assert noise.shape == (m, b, d)
    assert not torch.allclose(noise[:, 0], noise[:, 1])
    assert not torch.allclose(noise[0], noise[1])
    flat = noise.reshape(m, b * d)
    corr = torch.corrcoef(flat.T)
    off = corr - torch.diag(torch.diag(corr))
    # 500 draws: the standard error of a correlation of independent variables is ~0.045; 0.2 is
    # over 4 standard errors, and a shared draw would give 1.0.
    assert off.abs().max() < 0.2
    assert torch.allclose(noise.var(0), torch.full((b, d), 0.25), rtol=0.2)


def test_dict_inputs_are_repeated_with_their_labels() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2,
                                       n_head=2))
    cfg = dipnet.DIPConfig(placement="blocks", m=3)
    dipnet.project(model, cfg)
    ids = torch.randint(0, 32, (2, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    parts = dipnet.DIPLoss(cfg, num_train=10)(model, {"input_ids": ids, "labels": labels})
    assert parts.outputs.shape == (3, 2, 6, 32)
    logits = parts.outputs.reshape(6, 6, 32)
    shift = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32),
                                        labels.repeat(3, 1)[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(parts.nll, shift, atol=1e-5)


# ---------------------------------------------------------------------------- real data
def _digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.3, random_state=0,
                                          stratify=y)
    to = lambda a, t: torch.tensor(a, dtype=t)  # noqa: E731
    return to(xtr, torch.float32), to(ytr, torch.long), to(xte, torch.float32), to(yte, torch.long)


def _train_digits(use_dip: bool, seed: int, epochs: int = 30,
                  cfg: dipnet.DIPConfig | None = None,
                  variance_lr: float | None = None) -> tuple[float, nn.Module]:
    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(seed)
    model = mlp(64, 10, 64)
    if use_dip:
        cfg = cfg or dipnet.DIPConfig(m=2, gamma=0.05)
        dipnet.project(model, cfg)
        loss_fn = dipnet.DIPLoss(cfg, num_train=len(xtr))
    var_params = set(dipnet.variance_parameters(model)) if use_dip else set()
    groups = [{"params": [p for p in model.parameters() if p not in var_params]}]
    if var_params:
        groups.append({"params": list(var_params), "lr": variance_lr or 3e-3})
    opt = torch.optim.Adam(groups, lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            if use_dip:
                loss = loss_fn(model, xtr[idx], ytr[idx]).total
            else:
                loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(-1) == yte).float().mean().item()
    return acc, model


def test_dipnet_on_real_digits_matches_standard_training() -> None:
    """A sanity check, not a claim of improvement. Measured over seeds 0-2 while writing this
    test: standard 0.969-0.976, DIPNet (m=2, gamma=0.05) 0.969-0.980; seed-to-seed spread is
    about 0.01, so a 0.03 margin on the 3-seed mean flags a real regression only."""
    std = [_train_digits(False, s)[0] for s in range(3)]
    dip = [_train_digits(True, s)[0] for s in range(3)]
    assert min(std) > 0.94
    assert sum(dip) / 3 > sum(std) / 3 - 0.03


def test_elbo_scaled_variances_stay_far_below_the_barrier_minimiser() -> None:
    """With a real data term, the ELBO-scaled barrier (divided by N ~ 1250) only keeps the
    variances from collapsing; the unscaled barrier pulls them to beta/alpha = 2.
    A faster learning rate on the variances (0.05) lets both reach their equilibrium in 15
    epochs. Measured (seed 0): ELBO per-layer mean variance 0.024 / 0.079, unscaled 1.92 /
    1.95 (and test accuracy 0.97 vs 0.89: a variance of 2 swamps unit-scale activations).
    Features the next layer ignores (dead units) may drift higher under ELBO, so the check is
    on the per-layer mean."""
    elbo = dipnet.DIPConfig(init_variance=0.01)
    _, model = _train_digits(True, 0, epochs=15, cfg=elbo, variance_lr=0.05)
    means = [v.mean().item() for v in dipnet.variances(model).values()]
    assert max(means) < 0.2  # at least 10x below beta/alpha = 2.0
    unscaled = dipnet.DIPConfig(init_variance=0.01, barrier_scaling="unscaled")
    _, model_u = _train_digits(True, 0, epochs=15, cfg=unscaled, variance_lr=0.05)
    means_u = [v.mean().item() for v in dipnet.variances(model_u).values()]
    assert min(means_u) > 1.5
