"""`VarianceMap` is the one raw <-> lambda map: every reader of lambda agrees with it.

Issue 21: the map was written six times (projection, file loader, compiled op and its
backward); these tests compared each copy with `VarianceMap` before the copies went, and now
guard that every path still reads lambda through it.
"""

from __future__ import annotations

import pytest
import torch

import dipnet
from dipnet import inject, noise
from dipnet.parameterization import DEFAULT_FLOOR, DEFAULT_PARAMETERIZATION, VarianceMap

RAW = torch.tensor([-30.0, -5.0, -1.0, 0.0, 0.5, 3.0, 20.0, 80.0])


@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
@pytest.mark.parametrize("floor", [1e-6, 1e-3])
def test_every_reader_of_lambda_agrees_with_the_variance_map(parameterization: str,
                                                             floor: float) -> None:
    vmap = VarianceMap.of(parameterization, floor)
    proj = dipnet.GaussianProjection(RAW.numel(), parameterization=parameterization,
                                     variance_floor=floor)
    with torch.no_grad():
        proj.raw_variance.copy_(RAW)
    want = vmap.variance(RAW)
    torch.testing.assert_close(proj.variance_of(RAW), want, rtol=0, atol=0)
    torch.testing.assert_close(proj.variance.detach(), want, rtol=0, atol=0)
    # The compiled path's opaque op computes sqrt(lambda); its backward d lambda / d raw.
    raw = RAW.clone().requires_grad_(True)
    std = noise.compiled_std(raw, floor, parameterization)
    torch.testing.assert_close(std.detach() ** 2, want, rtol=1e-6, atol=0)
    std.sum().backward()
    assert raw.grad is not None
    torch.testing.assert_close(raw.grad * 2 * std.detach(), vmap.derivative(RAW))
    torch.testing.assert_close(proj.variance_derivative(), vmap.derivative(RAW), rtol=0, atol=0)


@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
def test_the_derivative_is_the_derivative_of_the_map(parameterization: str) -> None:
    vmap = VarianceMap.of(parameterization, 1e-6)
    raw = RAW.double().requires_grad_(True)
    vmap.variance(raw).sum().backward()
    assert raw.grad is not None
    torch.testing.assert_close(raw.grad, vmap.derivative(raw.detach()))


@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
def test_the_inverse_round_trips_and_the_projection_uses_it(parameterization: str) -> None:
    vmap = VarianceMap.of(parameterization, 1e-6)
    target = torch.tensor([1e-5, 1e-3, 0.01, 0.1, 1.0, 30.0, 1e4])
    raw = vmap.raw(target)
    # float32 round trip; measured worst relative error 2.4e-7 (exp) and 4.8e-7 (softplus).
    torch.testing.assert_close(vmap.variance(raw), target, rtol=2e-6, atol=0)
    proj = dipnet.GaussianProjection(target.numel(), parameterization=parameterization)
    torch.testing.assert_close(proj.raw_from_variance(target), raw, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceed variance_floor"):
        vmap.raw(1e-6)


@pytest.mark.parametrize("parameterization", ["softplus", "exp"])
def test_the_file_loader_refuses_exactly_the_non_finite_variances(parameterization: str) -> None:
    proj = dipnet.GaussianProjection(3, parameterization=parameterization)
    vmap = VarianceMap.of(parameterization, proj.variance_floor)
    for raw in (torch.tensor([0.0, 1.0, 80.0]), torch.tensor([0.0, 200.0, 1.0]),
                torch.tensor([float("nan"), 0.0, 0.0])):
        finite = bool(torch.isfinite(raw).all() and torch.isfinite(vmap.variance(raw)).all())
        cfg = dipnet.DIPConfig(parameterization=parameterization)
        got = inject.nonfinite_tensors({"0.dip_projection.raw_variance": raw}, config=cfg)
        assert (got == []) == finite, raw


def test_the_projection_and_the_config_share_their_defaults() -> None:
    proj = dipnet.GaussianProjection(2)
    config = dipnet.DIPConfig()
    assert proj.parameterization == config.parameterization == DEFAULT_PARAMETERIZATION
    assert proj.variance_floor == config.variance_floor == DEFAULT_FLOOR


def test_a_bad_map_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown parameterization"):
        VarianceMap.of("square", 1e-6)
    with pytest.raises(ValueError, match="must be > 0"):
        VarianceMap("exp", 0.0)
