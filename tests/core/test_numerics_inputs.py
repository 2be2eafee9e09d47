"""Bad inputs give one clear dipnet error, the same for every prediction mode (issue 9, items
8-10): non-finite inputs, wrong dtype / shape, damaged projections files, a loss in eval mode,
and a trajectory count that cannot fit in memory."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import dipnet
from dipnet import objective

import small_models

torch.set_num_threads(1)


def mlp() -> nn.Sequential:
    return small_models.mlp(4, 8, 3, seed=0)


# ---------------------------------------------------------------------------- predict inputs
@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_refused_naming_the_count(k: int, bad: float) -> None:
    model = dipnet.project(mlp())
    x = torch.randn(5, 4)
    x[1, 2] = bad
    x[3, 0] = bad
    with pytest.raises(dipnet.NonFiniteInputError, match=r"2 non-finite value") as info:
        dipnet.predict(model, x, k=k)
    assert isinstance(info.value, ValueError)
    assert "example 1" in str(info.value)  # the first bad example, so the user can find it


def test_non_finite_values_in_a_mapping_are_refused_but_masks_are_not_checked() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + attn_mask.clamp_min(-1.0)

    model = dipnet.project(Kw())
    mask = torch.zeros(2, 3)
    mask[0, 1] = -float("inf")  # additive masks legitimately hold -inf
    assert torch.isfinite(dipnet.predict(model, {"x": torch.randn(2, 4), "attn_mask": mask},
                                         k=0).probs).all()
    x = torch.randn(2, 4)
    x[0, 0] = float("nan")
    with pytest.raises(dipnet.NonFiniteInputError, match=r"1 non-finite value.*'x'"):
        dipnet.predict(model, {"x": x, "attn_mask": mask}, k=2)


@pytest.mark.parametrize("bad", [
    torch.randn(2, 4, dtype=torch.float64),   # wrong float dtype
    torch.randint(0, 3, (2, 4)),              # integer input to a float model
    torch.randn(2, 5),                        # wrong feature count
    torch.randn(2, 3, 4).transpose(1, 2),     # features on the wrong axis
])
def test_bad_inputs_give_the_same_dipnet_error_for_every_k(bad: torch.Tensor) -> None:
    model = dipnet.project(mlp())
    errors = []
    for k in (0, 1, 4):
        with pytest.raises(ValueError) as info:
            dipnet.predict(model, bad, k=k)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] == errors[2], errors
    assert errors[0][0] in (dipnet.PredictInputError, dipnet.ProjectionShapeError)
    assert "DIPNet" in errors[0][1] or "dipnet" in errors[0][1]


def test_float64_model_accepts_float64_and_deterministic_prediction_is_unchanged() -> None:
    model = dipnet.project(mlp().double())
    x = torch.randn(3, 4, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        ref = model(x).softmax(-1)
    torch.testing.assert_close(dipnet.predict(model, x, k=0).probs, ref.float())
    assert dipnet.predict(model, x, k=2).probs.shape == (3, 3)


def test_predict_on_an_unprojected_model_still_works() -> None:
    model = mlp().eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(dipnet.predict(model, x, k=0).probs, model(x).softmax(-1))


# ---------------------------------------------------------------------------- projections file
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 200.0])
@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
def test_projections_file_with_non_finite_variances_is_refused(tmp_path, bad: float,
                                                               parameterization: str) -> None:
    cfg = dipnet.DIPConfig(parameterization=parameterization)
    path = tmp_path / "p.safetensors"
    dipnet.save_projections(dipnet.project(mlp(), cfg), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key][1] = bad
    save_file(tensors, str(path), metadata=meta)
    if bad == 200.0 and parameterization == "softplus":
        dipnet.load_projections(mlp(), path)  # softplus(200) = 200: a large but finite variance
        return
    fresh = mlp()
    with pytest.raises(dipnet.ProjectionFileError, match=r"non-finite"):
        dipnet.load_projections(fresh, path)
    assert dipnet.projections(fresh) == {}  # left unchanged
    projected = dipnet.project(mlp(), cfg)
    before = dipnet.variances(projected)
    with pytest.raises(dipnet.ProjectionFileError, match=r"non-finite"):
        dipnet.load_projections(projected, path)
    for name, v in dipnet.variances(projected).items():
        assert torch.equal(v, before[name])


def test_projections_file_with_an_invalid_saved_config_is_a_file_error(tmp_path) -> None:
    path = tmp_path / "p.safetensors"
    dipnet.save_projections(dipnet.project(mlp()), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    for config in ('{"alpha": -1}', "{not json", None):
        if config is None:
            meta.pop("config")
        else:
            meta["config"] = config
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(dipnet.ProjectionFileError):
            dipnet.load_projections(mlp(), path)


# ---------------------------------------------------------------------------- DIPLoss misuse
def test_stability_loss_on_a_model_in_eval_mode_warns_once() -> None:
    cfg = dipnet.DIPConfig(m=3, gamma=0.1)
    model = dipnet.project(mlp(), cfg)
    loss_fn = dipnet.DIPLoss(cfg, num_train=100)
    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    model.eval()
    with pytest.warns(dipnet.DIPLossWarning, match=r"not sampling.*stability"):
        parts = loss_fn(model, x, y)
    assert parts.stability.item() == 0.0  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(model, x, y)  # once per DIPLoss, not every step
        model.train()
        dipnet.DIPLoss(cfg, num_train=100)(model, x, y)  # sampling: no warning
        model.eval()
        dipnet.DIPLoss(dipnet.DIPConfig(m=3), num_train=100)(model, x, y)  # gamma = 0: none


def test_huge_m_is_refused_before_allocating() -> None:
    cfg = dipnet.DIPConfig(m=10**6)
    model = dipnet.project(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)), cfg)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 3, (64,))
    # 64 x 3 x 32 x 32 floats = 786 kB per copy: 786 GB for a million copies.
    with pytest.raises(dipnet.BatchTooLargeError, match=r"m=1000000.*lower DIPConfig.m"):
        dipnet.DIPLoss(cfg, num_train=100)(model, x, y)
    # An explicit chunk= that cannot fit is refused the same way; without chunk= predict runs
    # as many copies per pass as fit (tests/core/test_trust_inputs.py).
    with pytest.raises(dipnet.BatchTooLargeError, match=r"k=1000000.*chunk"):
        dipnet.predict(model, x, k=10**6, chunk=10**6)
    objective.check_copies_fit(x, 10, "test")


def test_copies_bound_uses_the_available_memory(monkeypatch) -> None:
    x = torch.zeros(10, 1000)  # 40 kB
    monkeypatch.setattr(objective, "available_bytes", lambda device: 10**6)
    objective.check_copies_fit(x, 20, "DIPLoss with m=20")  # 0.8 MB fits in 1 MB
    with pytest.raises(dipnet.BatchTooLargeError, match=r"30 copies"):
        objective.check_copies_fit(x, 30, "DIPLoss with m=30")
    monkeypatch.setattr(objective, "available_bytes", lambda device: None)
    objective.check_copies_fit(x, 10**9, "unknown memory: no check")
