"""Training methods and training-input perturbations: each learns, each does what its paper
says (noise level, box size, dropout, SAM's second pass), and predictions behave as declared."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dipnet
from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.zoo.methods import get_method, list_methods
from dipnet.experiments.zoo.models import create_model
from dipnet.experiments.zoo.perturb import fgsm, gaussian, perturb_batch

torch.set_num_threads(1)
STOCHASTIC = {"fixed_noise", "dipnet", "rs", "dropout"}  # methods with a sampled prediction


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_fraction=0.0)


def _build(method_name, digits, **params):
    torch.manual_seed(0)
    model = create_model("mlp", digits.input_shape, 10, hidden=[64])
    method = get_method(method_name, **params)
    model = method.prepare_model(model, RunConfig(), len(digits.train))
    return model, method


def test_registry_holds_the_issue_methods():
    assert set(list_methods()) == {"standard", "dipnet", "sam", "rs", "input_noise", "dropout",
                                   "mixup", "cutmix", "cutout", "fixed_noise"}


@pytest.mark.parametrize("name", list_methods())
def test_every_method_learns_digits(name, digits):
    model, method = _build(name, digits)
    opt = method.make_optimizer(model, RunConfig(lr=3e-3))
    x, y = digits.train
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):  # 60 steps of 64: about 3 epochs of digits
        idx = torch.randint(len(y), (64,), generator=gen)
        parts = method.train_step(model, opt, x[idx], y[idx])
        assert math.isfinite(parts["loss"]) and 0 <= parts["correct"] <= 64
    model.eval()
    with torch.no_grad():
        probs = method.predictive_probs(model, digits.test.x, k=4)
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5)
    acc = float((probs.argmax(-1) == digits.test.y).float().mean())
    # chance is 0.10; every method reaches far above it in 60 steps (standard reaches ~0.93)
    assert acc > 0.6, f"{name}: test accuracy {acc:.3f}"


@pytest.mark.parametrize("name", list_methods())
def test_prediction_modes(name, digits):
    model, method = _build(name, digits)
    model.eval()
    x = digits.test.x[:16]
    torch.manual_seed(1)
    a, b = method.predict_logits(model, x), method.predict_logits(model, x)
    assert torch.equal(a, b)  # the deterministic prediction is deterministic
    assert a.requires_grad  # and differentiable (attacks need it)
    s1 = method.sample_logits(model, x)
    if name in STOCHASTIC:
        s2 = method.sample_logits(model, x)
        assert s1 is not None and s1.requires_grad and not torch.equal(s1, s2)
        assert method.has_sampling
    else:
        assert s1 is None and not method.has_sampling
    expected = "sampled" if name == "rs" else "deterministic"
    assert method.default_prediction == expected


def test_dipnet_adds_projections_and_keeps_weight_decay_off_variances(digits):
    model, method = _build("dipnet", digits, placement="layers", alpha=0.2)
    assert method.dip_config.alpha == 0.2
    assert method.extra_parameters(model) == 64 + 64  # one variance per input feature
    opt = method.make_optimizer(model, RunConfig(weight_decay=0.1))
    variance_ids = {id(p) for p in dipnet.variance_parameters(model)}
    for group in opt.param_groups:
        if any(id(p) in variance_ids for p in group["params"]):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == 0.1
    loss, parts = method.training_loss(model, digits.train.x[:32], digits.train.y[:32])
    assert {"loss", "nll", "barrier", "stability", "correct"} <= set(parts)
    assert parts["barrier"] != 0.0
    stats = method.epoch_stats(model)["variance"]
    assert set(stats) == {"features.1", "head"}
    # No step yet: every variance is its initial value, which the first batch calibrated to
    # init_scale x that layer's input variance (not the 0.01 placeholder).
    for v in stats.values():
        assert abs(v["mean"] - v["init"]) < 1e-6 * v["init"] and abs(v["init"] - 1e-2) > 1e-4


def test_dipnet_variance_lr_gets_its_own_group(digits):
    model, method = _build("dipnet", digits, variance_lr=0.05)
    opt = method.make_optimizer(model, RunConfig(lr=1e-3))
    variance_ids = {id(p) for p in dipnet.variance_parameters(model)}
    lrs = {any(id(p) in variance_ids for p in g["params"]): g["lr"] for g in opt.param_groups}
    assert lrs == {False: 1e-3, True: 0.05}
    with pytest.raises(UserError, match="variance_lr"):
        _build("dipnet", digits, variance_lr=-1)


class _Recorder(nn.Module):
    """Wraps a model and keeps the last input it saw."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.inner(x)


def _seen_by_model(name, digits, x, **params):
    model, method = _build(name, digits, **params)
    rec = _Recorder(model)
    torch.manual_seed(0)
    method.training_loss(rec, x, torch.zeros(len(x), dtype=torch.long))
    return rec.seen


def test_randomized_smoothing_and_input_noise_levels(digits):
    x = torch.full((256, 1, 8, 8), 0.5)
    for name, sigma in (("rs", 0.25), ("input_noise", 0.1)):  # Cohen et al.; DIPNet's init std
        seen = _seen_by_model(name, digits, x)
        # std of 16,384 draws: relative error ~ 1/sqrt(2*16384) = 0.6%; allow 5%
        assert abs(float((seen - x).std()) - sigma) < 0.05 * sigma


def test_cutout_zeroes_half_side_squares(digits):
    x = torch.ones(200, 1, 8, 8)
    seen = _seen_by_model("cutout", digits, x)
    zeros = (seen == 0).flatten(1).sum(1)
    # a 4x4 square (half of 8 px) per image, clipped at the border: 4..16 pixels, never more
    assert int(zeros.max()) == 16 and int(zeros.min()) >= 4
    seen = _seen_by_model("cutout", digits, x, length=2)
    assert int((seen == 0).flatten(1).sum(1).max()) == 4


def test_mixup_and_cutmix_mix_pairs(digits):
    # two constant images, 0 and 1: mixup gives one lam for the batch
    x = torch.cat([torch.zeros(32, 1, 8, 8), torch.ones(32, 1, 8, 8)])
    seen = _seen_by_model("mixup", digits, x)
    values = torch.unique(seen.round(decimals=5))
    assert len(values) <= 4  # 0, 1, lam, 1 - lam
    seen = _seen_by_model("cutmix", digits, x, p=1.0)
    # pasted boxes: pixels stay exactly 0 or 1, and some images received a box of the other
    assert set(torch.unique(seen).tolist()) <= {0.0, 1.0}
    mixed = ((seen.flatten(1).min(1).values == 0) & (seen.flatten(1).max(1).values == 1)).sum()
    assert int(mixed) > 0


def test_dropout_is_off_in_eval_and_on_in_training(digits):
    model, method = _build("dropout", digits)
    x = digits.test.x[:8]
    plain = create_model("mlp", digits.input_shape, 10, hidden=[64])
    plain.load_state_dict(model.state_dict())
    model.eval()
    assert torch.equal(model(x), plain.eval()(x))  # inverted dropout: eval is the plain net
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), plain(x))


def test_sam_uses_pytorch_optimizer_and_takes_the_sharpness_step(digits):
    from pytorch_optimizer import SAM

    model, method = _build("sam", digits)
    opt = method.make_optimizer(model, RunConfig(lr=1e-2, optimizer="sgd", momentum=0.0))
    assert isinstance(opt, SAM) and opt.param_groups[0]["rho"] == 0.05  # Foret et al.
    x, y = digits.train.x[:64], digits.train.y[:64]
    # SAM's update is the SGD step with the gradient taken at w + rho * g / |g|.
    ref, _ = _build("standard", digits)
    ref.load_state_dict(model.state_dict())
    F.cross_entropy(ref(x), y).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.add_(0.05 * g / norm)
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    expected = [p0 - 1e-2 * p.grad for p0, p in zip(model.state_dict().values(),
                                                      ref.parameters())]
    method.train_step(model, opt, x, y)
    for got, want in zip(model.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_bad_method_params_are_clear_errors():
    with pytest.raises(UserError, match="unknown method 'adversarial'"):
        get_method("adversarial")
    with pytest.raises(UserError, match=r"no parameter\(s\) \['sgima'\]"):
        get_method("rs", sgima=0.5)
    with pytest.raises(UserError, match="rho=-1"):
        get_method("sam", rho=-1)
    with pytest.raises(UserError, match="DIPConfig.alpha"):
        get_method("dipnet", alpha=0)


# ---------------------------------------------------------------------- perturbations
def test_gaussian_perturbation_is_clipped_noise():
    torch.manual_seed(0)
    x = torch.full((10000,), 0.5)
    out = gaussian(x, 0.2)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # at 0.5 the clip at 2.5 sigma barely matters: std 0.2 within 3%
    assert abs(float(out.std()) - 0.2) < 0.006
    assert torch.equal(perturb_batch("none", x, None, 0.2), x)


def test_fgsm_perturbation_is_an_eps_sign_step_that_raises_the_loss(digits):
    torch.manual_seed(0)
    model = create_model("mlp", digits.input_shape, 10, hidden=[64])
    x, y = digits.train.x[:128], digits.train.y[:128]
    model.train()
    adv = fgsm(model, x, y, 0.2)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert float((adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    # away from the [0, 1] border every pixel moved by exactly eps
    inner = (x > 0.2) & (x < 0.8)
    assert torch.allclose((adv - x).abs()[inner], torch.full_like(x[inner], 0.2), atol=1e-6)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    with pytest.raises(UserError, match="unknown training perturbation"):
        perturb_batch("pgd", x, y, 0.2, model)
