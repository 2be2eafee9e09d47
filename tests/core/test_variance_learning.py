"""The variance-learning tools: calibration, statistics, the gradient split, the per-layer
barrier and the fixed-noise control."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dipnet
from dipnet.errors import UserError
from dipnet.experiments.zoo.methods import get_method

import small_models


def _mlp() -> nn.Module:
    return small_models.mlp(12, 20, 4, seed=0)


@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_set_variance_round_trip(param):
    p = dipnet.GaussianProjection(6, init_variance=0.01, parameterization=param)
    target = torch.tensor([1e-4, 1e-3, 0.01, 0.1, 1.0, 30.0])
    p.set_variance(target)
    assert torch.allclose(p.variance.detach(), target, rtol=1e-4)
    assert p.init_variance == pytest.approx(float(target.double().mean()))
    with pytest.raises(ValueError):
        p.set_variance(0.0)


def test_barrier_mean_reduction_is_per_layer_mean():
    model = _mlp()
    dipnet.project(model, dipnet.DIPConfig())
    projs = list(dipnet.projections(model).values())
    projs[0].set_variance(torch.linspace(0.01, 0.5, 12))
    alpha, beta = 0.3, 0.7
    expected_sum = float(sum(
        (alpha * p.variance.sum() - beta * p.variance.log().sum()).detach() for p in projs))
    expected_mean = float(sum(
        (alpha * p.variance - beta * p.variance.log()).mean().detach() for p in projs))
    assert float(dipnet.barrier(model, alpha, beta).detach()) == pytest.approx(expected_sum, rel=1e-6)
    assert float(dipnet.barrier(model, alpha, beta, "mean").detach()) == pytest.approx(expected_mean,
                                                                              rel=1e-6)
    cfg = dipnet.DIPConfig(barrier_reduction="mean", barrier_scaling="unscaled")
    loss_fn = dipnet.DIPLoss(cfg)
    own = float(sum((cfg.alpha * p.variance - cfg.beta * p.variance.log()).mean().detach()
                    for p in projs))
    assert float(loss_fn.scaled_barrier(model).detach()) == pytest.approx(own, rel=1e-6)
    with pytest.raises(dipnet.DIPConfigError, match="barrier_reduction"):
        dipnet.DIPConfig(barrier_reduction="max")


def test_calibrate_sets_scale_times_input_variance_and_keeps_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    dipnet.project(model, dipnet.DIPConfig(init_scale=0.2))
    x = torch.randn(256, 8) * torch.linspace(0.5, 3.0, 8)
    bn_before = model[1].running_mean.clone(), model[1].running_var.clone()
    model.train()
    got = dipnet.calibrate(model, x)
    # The calibration pass is invisible: BatchNorm statistics untouched.
    assert torch.equal(model[1].running_mean, bn_before[0])
    assert torch.equal(model[1].running_var, bn_before[1])
    # Independent: the inputs of each Linear on the same batch, train-mode BN.
    seen = {}
    hooks = [model[i].register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(str(i), args[0].detach())) for i in (0, 3)]
    with dipnet.deterministic(model), torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name in ("0", "3"):
        expected = 0.2 * float(seen[name].var(0, unbiased=False).mean())
        assert got[name] == pytest.approx(expected, rel=1e-4)
        proj = dipnet.projections(model)[name]
        assert float(proj.variance.detach().mean()) == pytest.approx(expected, rel=1e-4)
        assert proj.init_variance == pytest.approx(expected, rel=1e-4)
    assert all(p.sampling for p in dipnet.projections(model).values())
    out1, out2 = model(x[:4]), model(x[:4])
    assert not torch.allclose(out1, out2)  # noise is back on in train mode


def test_variance_stats_and_histograms():
    model = _mlp()
    dipnet.project(model, dipnet.DIPConfig(init_variance=0.01))
    stats = dipnet.variance_stats(model)
    assert set(stats) == {"0", "2"}
    assert stats["0"]["rel_change"] == pytest.approx(0.0, abs=1e-6)
    assert stats["0"]["log10_std"] == pytest.approx(0.0, abs=1e-6)
    proj = dipnet.projections(model)["0"]
    new = torch.full((12,), 0.01)
    new[:6] = 0.04
    proj.set_variance(new, as_init=False)
    stats = dipnet.variance_stats(model)["0"]
    assert stats["rel_change"] == pytest.approx(1.5, rel=1e-4)  # half moved by +300%
    assert stats["max"] == pytest.approx(0.04, rel=1e-4)
    assert stats["q05"] == pytest.approx(0.01, rel=1e-4)
    assert stats["log10_std"] == pytest.approx(0.5 * math.log10(4), rel=1e-3)
    hist = dipnet.variance_histograms(model, bins=4)["0"]
    assert sum(hist["counts"]) == 12 and hist["counts"][0] == 6 and hist["counts"][-1] == 6


@pytest.mark.parametrize("scaling,reduction,temperature", [("elbo", "sum", 1.0),
                                                           ("unscaled", "mean", 1.0),
                                                           ("elbo", "sum", 3.0)])
def test_gradient_meter_splits_data_and_barrier(scaling, reduction, temperature):
    model = _mlp()
    cfg = dipnet.DIPConfig(parameterization="exp", barrier_scaling=scaling,
                           barrier_reduction=reduction, m=2, gamma=0.1,
                           barrier_temperature=temperature)
    dipnet.project(model, cfg)
    loss_fn = dipnet.DIPLoss(cfg, num_train=50)
    meter = dipnet.VarianceGradientMeter(cfg, 50)
    x, y = torch.randn(16, 12), torch.randint(4, (16,))
    projs = list(dipnet.projections(model).values())
    torch.manual_seed(1)
    parts = loss_fn(model, x, y)
    raw = [p.raw_variance for p in projs]
    dlam = [p.variance_derivative() for p in projs]  # exp(raw): checked against autograd below
    assert torch.allclose(dlam[0], torch.autograd.grad(projs[0].variance.sum(), raw[0])[0])
    data = [g / d for g, d in zip(torch.autograd.grad(
        parts.nll + cfg.gamma * parts.stability, raw, retain_graph=True), dlam)]
    bar = [g / d for g, d in zip(torch.autograd.grad(parts.barrier, raw, retain_graph=True),
                                 dlam)]
    parts.total.backward()
    meter.update(model)
    got = meter.summary()
    for name, d, b in zip(("0", "2"), data, bar):
        assert got[name]["data"] == pytest.approx(float(d.mean()), rel=1e-3, abs=1e-9)
        assert got[name]["barrier"] == pytest.approx(float(b.mean()), rel=1e-4)
    assert meter.summary() == {}  # reset


def _train_steps(method_name, steps=5, **params):
    model = _mlp()
    method = get_method(method_name, **params)
    method.prepare_model(model, None, num_train=100)
    method.calibrate(model, torch.randn(64, 12))

    class Cfg:
        optimizer, lr, weight_decay, momentum = "adam", 1e-2, 0.0, 0.0
    opt = method.make_optimizer(model, Cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    for _ in range(steps):
        method.train_step(model, opt, torch.randn(32, 12), torch.randint(4, (32,)))
    return model, method, before


def test_fixed_noise_freezes_variances_but_trains_weights():
    model, method, before = _train_steps("fixed_noise", init_variance=0.05)
    after = model.state_dict()
    for key in before:
        if key.endswith("raw_variance"):
            assert torch.equal(before[key], after[key])
        else:
            assert not torch.equal(before[key], after[key])
    assert "variance_grad" not in method.epoch_stats(model)
    learned, method_l, before_l = _train_steps("dipnet", init_variance=0.05)
    moved = [k for k in before_l if k.endswith("raw_variance")
             and not torch.equal(before_l[k], learned.state_dict()[k])]
    assert moved, "dipnet must learn its variances"
    stats = method_l.epoch_stats(learned)
    assert set(stats["variance_grad"]) == {"0", "2"}
    assert set(stats["variance"]["0"]) >= {"mean", "q05", "q95", "init", "rel_change"}
    final = method_l.final_stats(learned)
    assert set(final["variance_final_hist"]) == {"0", "2"}
    assert final["variance_init"]["0"] == pytest.approx(0.05)


def test_fixed_noise_profile_and_calibration():
    model, method, _ = _train_steps("fixed_noise", steps=1, profile={"0": 0.2, "2": 0.003})
    v = dipnet.variances(model)
    assert float(v["0"].mean()) == pytest.approx(0.2, rel=1e-4)
    assert float(v["2"].mean()) == pytest.approx(0.003, rel=1e-4)
    with pytest.raises(UserError, match="does not fit"):
        _train_steps("fixed_noise", steps=1, profile={"0": 0.2})
    with pytest.raises(UserError, match="profile"):
        get_method("fixed_noise", profile={"0": -1})
    model, _, _ = _train_steps("fixed_noise", steps=1, init_scale=0.5)
    assert float(dipnet.variances(model)["0"].mean()) == pytest.approx(0.5, rel=0.15)


def test_dip_loss_calibrates_on_first_batch_once_and_never_after_training():
    model = _mlp()
    cfg = dipnet.DIPConfig(init_scale=0.5, parameterization="exp", variance_lr=0.1)
    dipnet.project(model, cfg)
    x, y = torch.randn(64, 12) * 2.0, torch.randint(4, (64,))
    expected = 0.5 * float((x).var(0, unbiased=False).mean())
    loss_fn = dipnet.DIPLoss(cfg, num_train=100)
    opt = torch.optim.Adam(dipnet.parameter_groups(model), lr=1e-3)
    assert opt.param_groups[1]["lr"] == 0.1  # the config's variance_lr
    model.train()
    loss_fn(model, x, y).total.backward()
    p0 = dipnet.projections(model)["0"]
    assert p0.calibrated and float(p0.variance.detach().mean()) == pytest.approx(expected, rel=1e-4)
    opt.step()
    after_step = p0.raw_variance.detach().clone()
    loss_fn(model, x * 10, y)  # a second batch does not recalibrate
    assert torch.equal(p0.raw_variance.detach(), after_step)
    # A fresh model that receives trained variances (a resume) is not reset either.
    other = _mlp()
    dipnet.project(other, cfg)
    other.load_state_dict(model.state_dict())
    dipnet.DIPLoss(cfg, num_train=100)(other, x, y)
    assert torch.equal(dipnet.projections(other)["0"].raw_variance.detach(), after_step)
    with pytest.raises(dipnet.DIPConfigError, match="variance_lr"):
        dipnet.DIPConfig(variance_lr=0)


def test_barrier_temperature_multiplies_the_whole_barrier_in_the_loss():
    """The learned arm's level knob: T scales alpha and beta together, nothing else."""
    x, y = torch.randn(16, 12), torch.randint(4, (16,))
    parts = {}
    for t in (1.0, 0.25):
        model = _mlp()
        cfg = dipnet.DIPConfig(init_variance=0.05, barrier_temperature=t)
        dipnet.project(model, cfg)
        torch.manual_seed(3)
        parts[t] = dipnet.DIPLoss(cfg, num_train=40)(model, x, y)
    assert float(parts[0.25].barrier) == pytest.approx(0.25 * float(parts[1.0].barrier), rel=1e-6)
    assert float(parts[0.25].nll) == float(parts[1.0].nll)
    with pytest.raises(dipnet.DIPConfigError, match="barrier_temperature"):
        dipnet.DIPConfig(barrier_temperature=0.0)
