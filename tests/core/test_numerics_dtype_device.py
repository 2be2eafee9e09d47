"""Variances keep float32 under half-precision casts, projections live on their host's device,
unbatched conv inputs are projected along the channel axis (issue 9, items 12, 13, 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dipnet

import small_models

torch.set_num_threads(1)


def mlp() -> nn.Sequential:
    return small_models.mlp(4, 8, 3, seed=0)


def _variance_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {p.raw_variance.dtype for p in dipnet.projections(model).values()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", ["project_then_cast", "cast_then_project"])
def test_half_precision_model_keeps_float32_variances(dtype: torch.dtype, order: str) -> None:
    model = mlp()
    if order == "project_then_cast":
        dipnet.project(model, dipnet.DIPConfig(init_variance=0.0123))
        model.to(dtype)
    else:
        model.to(dtype)
        dipnet.project(model, dipnet.DIPConfig(init_variance=0.0123))
    assert _variance_dtypes(model) == {torch.float32}
    assert model[0].weight.dtype == dtype  # the model itself was cast
    for v in dipnet.variances(model).values():
        # bf16 would round 0.0123 to 0.01233 (3 significant digits); float32 keeps it exactly.
        assert torch.allclose(v, torch.full_like(v, 0.0123), rtol=1e-6)
    model.train()
    x = torch.randn(3, 4, dtype=dtype)
    out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(p.raw_variance.grad.dtype == torch.float32
               for p in dipnet.projections(model).values())


def test_half_and_bfloat16_methods_and_float64_cast() -> None:
    model = dipnet.project(mlp())
    model.half()
    assert _variance_dtypes(model) == {torch.float32}
    model.bfloat16()
    assert _variance_dtypes(model) == {torch.float32}
    model.double()  # widening is followed: a float64 model gets float64 variances
    assert _variance_dtypes(model) == {torch.float64}
    model.float()
    assert _variance_dtypes(model) == {torch.float32}


def test_to_device_still_moves_the_variances() -> None:
    model = dipnet.project(mlp())
    model.to("meta", torch.bfloat16)
    for p in dipnet.projections(model).values():
        assert p.raw_variance.device.type == "meta" and p.raw_variance.dtype == torch.float32
    model.to_empty(device="cpu")
    assert all(p.raw_variance.device.type == "cpu" for p in dipnet.projections(model).values())


def test_cast_with_swap_semantics_also_keeps_float32() -> None:
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model = dipnet.project(mlp())
        model.to(torch.bfloat16)
        assert _variance_dtypes(model) == {torch.float32}
        assert isinstance(model[0].dip_projection.raw_variance, nn.Parameter)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def test_projection_is_created_on_its_host_device() -> None:
    """A model split over devices: each projection sits with its own layer. The meta device
    stands in for a second accelerator (no data, but a distinct device)."""
    model = mlp()
    model[2].to("meta")
    dipnet.project(model)
    projs = dipnet.projections(model)
    assert projs["0"].raw_variance.device.type == "cpu"
    assert projs["2"].raw_variance.device.type == "meta"


def test_projection_of_a_parameterless_host_uses_its_buffers_then_the_model() -> None:
    class Host(nn.Module):
        def __init__(self, buffer_device: str | None) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4, elementwise_affine=False)  # no parameters
            if buffer_device is not None:
                self.register_buffer("scale", torch.ones(4, device=buffer_device))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x)

    cfg = dipnet.DIPConfig(placement="custom", target_modules=["1"])
    model = nn.Sequential(nn.Linear(4, 4), Host("meta"), nn.Linear(4, 2))
    dipnet.project(model, cfg)
    assert dipnet.projections(model)["1"].raw_variance.device.type == "meta"  # its buffer
    model = nn.Sequential(nn.Linear(4, 4).to("meta"), Host(None), nn.Linear(4, 2))
    dipnet.project(model, cfg)
    assert dipnet.projections(model)["1"].raw_variance.device.type == "meta"  # the model's


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv1d(3, 2, 1), (3, 3)),           # unbatched (C, L) with L == C
    (nn.Conv2d(3, 2, 1), (3, 3, 3)),        # unbatched (C, H, W)
    (nn.Conv1d(3, 2, 1), (5, 3, 3)),        # batched (N, C, L)
])
def test_conv_input_is_projected_along_the_channel_axis(conv: nn.Module,
                                                        shape: tuple[int, ...]) -> None:
    model = dipnet.project(conv)
    proj = dipnet.projections(model)[""]
    proj.set_variance(torch.tensor([0.01, 4.0, 0.01]))  # only channel 1 is noisy
    channel_axis = 0 if len(shape) == conv.weight.dim() - 1 else 1
    x = torch.zeros(shape)
    torch.manual_seed(0)
    with torch.no_grad():
        noise = torch.stack([proj.project(x) for _ in range(400)])  # (400, *shape)
    per_channel = noise.var(0).movedim(channel_axis, 0).reshape(3, -1).mean(1)
    # 400 draws: the sample variance is within 15 % of the truth (its sd is 7 %).
    assert per_channel[1] == pytest.approx(4.0, rel=0.15)
    assert per_channel[0] == pytest.approx(0.01, rel=0.15)
    assert per_channel[2] == pytest.approx(0.01, rel=0.15)
    model.train()
    assert model(torch.randn(shape)).shape[channel_axis] == 2  # the hook accepts both forms


def test_unbatched_conv_with_wrong_channel_count_is_refused() -> None:
    model = dipnet.project(nn.Conv1d(3, 2, 1))
    model.train()
    with pytest.raises(dipnet.ProjectionShapeError, match=r"expected 3 features"):
        model(torch.randn(4, 3))  # unbatched (C=4, L=3): the channel axis is 0
