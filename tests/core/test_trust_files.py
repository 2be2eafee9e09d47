"""Every file that enters or leaves dipnet obeys one finiteness rule, and nothing loads in part.

`save_pretrained`, `save_projections`, `from_pretrained`, `load_state_dict` and
`load_projections` refuse NaN / Inf in weights and in variances alike (`dipnet.inject.
nonfinite_tensors` is the one rule), and `from_pretrained` loads everything it was asked to or
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import dipnet
import small_models

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Sequential:
    return small_models.mlp(6, 16, 3, seed=seed)


def projected(seed: int = 0, **config) -> nn.Sequential:
    return dipnet.project(mlp(seed), dipnet.DIPConfig(**config))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


def _poison(path: Path, key_part: str, value: float = float("nan")) -> None:
    """Rewrite a safetensors file with one element of the first tensor named ``key_part``."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sorted(tensors) if key_part in k)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(path), metadata=meta)


# ---------------------------------------------------------------------- saving
@pytest.mark.parametrize("what", ["variance", "weight"])
def test_save_pretrained_refuses_non_finite_values_and_writes_nothing(tmp_path: Path,
                                                                     what: str) -> None:
    model = projected()
    with torch.no_grad():
        target = (dipnet.variance_parameters(model)[0] if what == "variance"
                  else model[0].weight)
        target.view(-1)[3] = float("nan")
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite") as info:
        dipnet.save_pretrained(model, tmp_path / "out", save_weights=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_save_projections_refuses_non_finite_variances(tmp_path: Path) -> None:
    model = projected()
    with torch.no_grad():
        dipnet.variance_parameters(model)[1].view(-1)[0] = float("inf")
    with pytest.raises(dipnet.ProjectionFileError, match=r"non-finite.*2\.dip_projection"):
        dipnet.save_projections(model, tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_previous_save_survives_a_refused_one(tmp_path: Path) -> None:
    model = projected()
    dipnet.save_pretrained(model, tmp_path, save_weights=True)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        model[2].weight.view(-1)[0] = float("nan")
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite"):
        dipnet.save_pretrained(model, tmp_path, save_weights=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


# ---------------------------------------------------------------------- loading
@pytest.mark.parametrize("file,key_part,value", [
    ("model.safetensors", "weight", float("nan")),
    ("model.safetensors", "bias", float("-inf")),
    ("dip_projections.safetensors", "raw_variance", float("nan")),
])
def test_from_pretrained_refuses_non_finite_files(tmp_path: Path, file: str, key_part: str,
                                                  value: float) -> None:
    dipnet.save_pretrained(projected(), tmp_path, save_weights=True)
    _poison(tmp_path / file, key_part, value)
    model = mlp(seed=3)
    before = state(model)
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite") as info:
        dipnet.from_pretrained(model, tmp_path)
    assert "\n" not in str(info.value) and file in str(info.value)
    assert not dipnet.projections(model) and unchanged(model, before)


def test_exp_variances_that_overflow_are_refused_on_every_path(tmp_path: Path) -> None:
    # raw 200 is finite, but exp(200) is inf in float32: the variance is what must be finite.
    model = projected(parameterization="exp")
    with torch.no_grad():
        dipnet.variance_parameters(model)[0].view(-1)[0] = 200.0
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite"):
        dipnet.save_pretrained(model, tmp_path / "a")
    sd = model.state_dict()
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite"):
        dipnet.load_state_dict(mlp(), sd, config=dipnet.DIPConfig(parameterization="exp"))


@pytest.mark.parametrize("key", ["0.weight", "2.bias", "0.dip_projection.raw_variance"])
@pytest.mark.parametrize("into_projected", [False, True])
def test_load_state_dict_refuses_non_finite_values(key: str, into_projected: bool) -> None:
    sd = state(projected())
    sd[key].view(-1)[0] = float("nan")
    model = projected(seed=4) if into_projected else mlp(seed=4)
    before = state(model)
    with pytest.raises(dipnet.ProjectionFileError, match=f"non-finite.*{key}") as info:
        dipnet.load_state_dict(model, sd)
    assert "\n" not in str(info.value)
    assert bool(dipnet.projections(model)) == into_projected and unchanged(model, before)


def test_load_projections_uses_the_same_rule(tmp_path: Path) -> None:
    dipnet.save_projections(projected(), tmp_path / "p.safetensors")
    _poison(tmp_path / "p.safetensors", "raw_variance", float("inf"))
    model = mlp()
    with pytest.raises(dipnet.ProjectionFileError, match="non-finite"):
        dipnet.load_projections(model, tmp_path / "p.safetensors")
    assert not dipnet.projections(model)


def test_integer_buffers_are_not_checked() -> None:
    # BatchNorm's num_batches_tracked is an integer tensor: no NaN is possible, nothing refused.
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    dipnet.project(model)
    assert dipnet.load_state_dict(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)),
                                  model.state_dict()).missing_keys == []


# ---------------------------------------------------------------------- partial loads
def test_from_pretrained_refuses_weights_it_cannot_load_without_the_config(tmp_path: Path) -> None:
    dipnet.save_pretrained(projected(), tmp_path, save_weights=True)
    (tmp_path / "dipnet_config.json").unlink()
    model = mlp(seed=5)
    before = state(model)
    with pytest.raises(dipnet.ProjectionFileError,
                       match=r"dipnet_config.json is missing.*load_weights=False") as info:
        dipnet.from_pretrained(model, tmp_path)
    assert "\n" not in str(info.value)
    assert not dipnet.projections(model) and unchanged(model, before)
    # Asked for the projections only, it loads them.
    dipnet.from_pretrained(model, tmp_path, load_weights=False)
    assert dipnet.projections(model) and torch.equal(model[0].weight, before["0.weight"])


def test_a_projections_only_folder_still_loads(tmp_path: Path) -> None:
    # A folder with only the projections file (no weights were saved): nothing else was asked.
    source = projected()
    dipnet.save_projections(source, tmp_path / "dip_projections.safetensors")
    model = dipnet.from_pretrained(mlp(), tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(dipnet.variance_parameters(model),
                                                 dipnet.variance_parameters(source)))


# ---------------------------------------------------------------------- not a model
@pytest.mark.parametrize("call", [
    lambda: dipnet.project("resnet18"),
    lambda: dipnet.project({"0.weight": torch.zeros(2)}),
    lambda: dipnet.load_state_dict("model.pt", {}),
    lambda: dipnet.load_state_dict(mlp(), "model.pt"),
    lambda: dipnet.load_state_dict(mlp(), {"0.weight": [1.0, 2.0]}),
    lambda: dipnet.load_state_dict(mlp(), mlp()),
    lambda: dipnet.from_pretrained("model", "folder"),
])
def test_things_that_are_not_a_model_or_a_state_dict_get_one_line(call) -> None:
    with pytest.raises(TypeError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and ("nn.Module" in text or "state_dict" in text), text
