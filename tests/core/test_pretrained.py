"""save_pretrained / from_pretrained (PEFT-style folders), load_state_dict, summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import dipnet
from dipnet import pretrained

import small_models

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Sequential:
    return small_models.mlp(6, 16, 3, seed=seed)


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def trained(model: nn.Module, config: dipnet.DIPConfig | None = None) -> nn.Module:
    """A projected model whose variances differ per feature (as after training)."""
    dipnet.project(model, config or dipnet.DIPConfig())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dipnet.variance_parameters(model):
            p.add_(torch.randn(p.shape, generator=gen))
    return model


def same_variances(a: nn.Module, b: nn.Module) -> bool:
    va, vb = dipnet.variances(a), dipnet.variances(b)
    return va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)


def outputs(model: nn.Module, x: torch.Tensor, sample: bool) -> torch.Tensor:
    model.eval()
    torch.manual_seed(5)
    if sample:
        with dipnet.sampling(model), torch.no_grad():
            return model(x)
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("make,shape", [(mlp, (5, 6)), (convnet, (5, 2, 6, 6))])
def test_projections_round_trip_into_a_plain_model(tmp_path: Path, make, shape) -> None:
    config = dipnet.DIPConfig(m=2, gamma=0.05, alpha=0.2)
    model = trained(make(), config)
    dipnet.save_pretrained(model, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "dip_projections.safetensors", "dipnet_config.json"]

    fresh = make()  # the same pretrained weights (same seed), no projections
    assert dipnet.from_pretrained(fresh, tmp_path / "run") is fresh
    assert same_variances(model, fresh)
    assert dipnet.get_config(fresh).to_dict() == config.to_dict()
    x = torch.randn(*shape)
    assert torch.equal(outputs(model, x, False), outputs(fresh, x, False))
    assert torch.equal(outputs(model, x, True), outputs(fresh, x, True))


def test_weights_are_saved_only_when_asked_and_then_restored(tmp_path: Path) -> None:
    model = trained(mlp(seed=0))
    dipnet.save_pretrained(model, tmp_path / "adapter")
    other = mlp(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    dipnet.from_pretrained(other, tmp_path / "adapter")
    # Projections only: the host weights stay the model's own.
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())

    dipnet.save_pretrained(model, tmp_path / "full", save_weights=True)
    meta = json.loads((tmp_path / "full" / "dipnet_config.json").read_text())
    assert meta["weights_file"] == "model.safetensors"
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "full" / "model.safetensors")) == set(mlp().state_dict())
    fresh = mlp(seed=1)
    dipnet.from_pretrained(fresh, tmp_path / "full")
    x = torch.randn(4, 6)
    assert torch.equal(outputs(model, x, False), outputs(fresh, x, False))
    not_loaded = mlp(seed=1)
    dipnet.from_pretrained(not_loaded, tmp_path / "full", load_weights=False)
    assert torch.equal(not_loaded[0].weight, mlp(seed=1)[0].weight)


class Tied(nn.Module):
    """An encoder and a decoder sharing one weight (as tied embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 4, bias=False)
        self.dec = nn.Linear(4, 5, bias=False)
        self.dec.weight = self.enc.weight  # the same Parameter under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x) @ self.dec.weight


def test_tied_weights_are_stored_once_and_load_tied(tmp_path: Path) -> None:
    # safetensors refuses tensors that share memory; the save stores one and records the alias.
    torch.manual_seed(0)
    model = trained(Tied(), dipnet.DIPConfig(placement="custom", target_modules=["enc"]))
    dipnet.save_pretrained(model, tmp_path, save_weights=True)
    from safetensors.torch import load_file

    assert len(load_file(tmp_path / "model.safetensors")) == 1  # stored once
    fresh = Tied()
    torch.manual_seed(3)
    fresh.enc.weight.data.normal_()
    dipnet.from_pretrained(fresh, tmp_path)
    assert torch.equal(fresh.enc.weight, model.enc.weight)
    assert fresh.dec.weight is fresh.enc.weight


def test_an_already_projected_model_with_the_same_layout_loads(tmp_path: Path) -> None:
    model = trained(mlp())
    dipnet.save_pretrained(model, tmp_path)
    target = dipnet.project(mlp(), dipnet.DIPConfig(alpha=0.5))
    dipnet.from_pretrained(target, tmp_path)
    assert same_variances(model, target)
    assert dipnet.get_config(target).alpha == 0.1  # the saved config is now the model's


def test_a_trainer_folder_with_only_the_projections_file_loads(tmp_path: Path) -> None:
    # dipnet.hf.DIPTrainer.save_model writes dip_projections.safetensors beside the HF files.
    model = trained(mlp())
    dipnet.save_projections(model, tmp_path / "dip_projections.safetensors")
    fresh = dipnet.from_pretrained(mlp(), tmp_path)
    assert same_variances(model, fresh)


def test_project_fn_projects_the_plain_model(tmp_path: Path) -> None:
    dipnet.save_pretrained(trained(mlp()), tmp_path)
    calls = []

    def project_fn(model: nn.Module, config: dipnet.DIPConfig) -> nn.Module:
        calls.append(config.placement)
        return dipnet.project(model, config)

    dipnet.from_pretrained(mlp(), tmp_path, project_fn=project_fn)
    assert calls == ["layers"]


def test_exp_parameterization_survives_the_round_trip(tmp_path: Path) -> None:
    model = trained(mlp(), dipnet.DIPConfig(parameterization="exp", variance_floor=1e-4))
    dipnet.save_pretrained(model, tmp_path)
    fresh = dipnet.from_pretrained(mlp(), tmp_path)
    assert same_variances(model, fresh)
    softplus_model = dipnet.project(mlp(), dipnet.DIPConfig(parameterization="softplus",
                                                            variance_floor=1e-4))
    with pytest.raises(dipnet.ProjectionFileError, match="parameterization: saved 'exp'"):
        dipnet.from_pretrained(softplus_model, tmp_path)


# ---------------------------------------------------------------------- errors
def test_saving_a_plain_model_or_into_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(dipnet.NotProjectedError, match="dipnet.project"):
        dipnet.save_pretrained(mlp(), tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(dipnet.ProjectionFileError, match="not a folder"):
        dipnet.save_pretrained(trained(mlp()), tmp_path / "file")


def _saved(tmp_path: Path, **kwargs) -> Path:
    folder = tmp_path / "saved"
    dipnet.save_pretrained(trained(mlp()), folder, **kwargs)
    return folder


def _break_json(folder: Path, **changes) -> None:
    path = folder / "dipnet_config.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,message", [
    (lambda f: None, None),  # baseline: loads
    (lambda f: (f / "dipnet_config.json").write_text("{not json"), "cannot read"),
    (lambda f: _break_json(f, format="other"), "not a dipnet config"),
    (lambda f: _break_json(f, config={"alpah": 1}), "saved config is invalid"),
    (lambda f: _break_json(f, projections_file="../elsewhere.safetensors"),
     "file name inside the folder"),
    (lambda f: (f / "dip_projections.safetensors").unlink(), "is missing"),
    (lambda f: (f / "dip_projections.safetensors").write_bytes(b"\x00" * 12), "cannot read"),
    (lambda f: (f / "model.safetensors").unlink(), "is missing"),
    (lambda f: _break_json(f, config={"placement": "custom", "target_modules": ["nothing"]}),
     "does not fit this model"),
])
def test_damaged_folders_give_one_clear_error_and_leave_the_model_plain(
        tmp_path: Path, damage, message) -> None:
    folder = _saved(tmp_path, save_weights=True)
    damage(folder)
    model = mlp(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if message is None:
        dipnet.from_pretrained(model, folder)
        assert dipnet.projections(model)
        return
    with pytest.raises(dipnet.ProjectionFileError, match=message) as info:
        dipnet.from_pretrained(model, folder)
    assert "\n" not in str(info.value)
    assert not dipnet.projections(model) and dipnet.get_config(model) is None
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_missing_folder_and_other_architectures_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(dipnet.ProjectionFileError, match="not a folder.*save_pretrained"):
        dipnet.from_pretrained(mlp(), tmp_path / "nowhere")
    with pytest.raises(dipnet.ProjectionFileError, match="holds no saved DIPNet"):
        dipnet.from_pretrained(mlp(), tmp_path)
    folder = _saved(tmp_path, save_weights=True)
    wider = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(dipnet.ProjectionFileError, match="do not fit this model"):
        dipnet.from_pretrained(wider, folder)
    assert not dipnet.projections(wider)
    with pytest.raises(dipnet.ProjectionFileError, match="does not fit this model"):
        dipnet.from_pretrained(wider, folder, load_weights=False)
    assert not dipnet.projections(wider)
    projected_elsewhere = dipnet.project(mlp(), dipnet.DIPConfig(placement="custom",
                                                                 target_modules=["2"]))
    var_before = dipnet.variances(projected_elsewhere)
    with pytest.raises(dipnet.ProjectionFileError, match="not in the model"):
        dipnet.from_pretrained(projected_elsewhere, folder, load_weights=False)
    assert list(dipnet.projections(projected_elsewhere)) == ["2"]
    assert torch.equal(dipnet.variances(projected_elsewhere)["2"], var_before["2"])


@pytest.mark.parametrize("failing", ["dip_projections", "model"])
def test_a_failed_save_leaves_the_previous_save_and_no_temporaries(tmp_path: Path, monkeypatch,
                                                                   failing: str) -> None:
    folder = _saved(tmp_path, save_weights=True)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import safetensors.torch

    real = safetensors.torch.save_file
    written = []

    def save_file(tensors, filename, metadata=None):
        written.append(filename)
        if len(written) == (1 if failing == "dip_projections" else 2):
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(OSError, match="disk full"):
        dipnet.save_pretrained(trained(mlp(seed=4)), folder, save_weights=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert all(oct(p.stat().st_mode)[-3:] == "644" for p in folder.iterdir())


# ---------------------------------------------------------------------- state dicts
def test_a_projected_state_dict_loads_into_a_plain_model() -> None:
    model = trained(mlp())
    state = model.state_dict()
    plain = mlp(seed=3)
    # What torch says (documented in docs/pretrained.md with the call that fixes it).
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*dip_projection.raw_variance"):
        plain.load_state_dict(state)
    result = dipnet.load_state_dict(plain, state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert same_variances(model, plain)
    assert torch.equal(plain[0].weight, model[0].weight)


def test_a_plain_state_dict_loads_into_a_projected_model() -> None:
    model = trained(mlp())
    var_before = dipnet.variances(model)
    source = mlp(seed=7)
    result = dipnet.load_state_dict(model, source.state_dict())
    assert result.missing_keys == []  # the projections are not "missing"
    assert torch.equal(model[0].weight, source[0].weight)
    assert same_variances(model, model) and all(
        torch.equal(v, dipnet.variances(model)[k]) for k, v in var_before.items())
    with pytest.raises(RuntimeError, match="missing keys"):
        dipnet.load_state_dict(model, {"0.weight": source[0].weight})


def test_state_dict_with_another_parameterization_needs_its_config() -> None:
    config = dipnet.DIPConfig(parameterization="exp")
    model = trained(mlp(), config)
    plain = mlp()
    dipnet.load_state_dict(plain, model.state_dict(), config=config)
    assert same_variances(model, plain)


def test_state_dict_that_does_not_fit_is_a_clear_error_and_changes_nothing() -> None:
    state = trained(mlp()).state_dict()
    wider = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(dipnet.ProjectionFileError, match="projection sizes do not fit"):
        dipnet.load_state_dict(wider, state)
    assert not dipnet.projections(wider)
    with pytest.raises(dipnet.ProjectionFileError, match="config the state_dict was trained"):
        dipnet.load_state_dict(mlp(), state, config=dipnet.DIPConfig(
            placement="custom", target_modules=["2"]))
    no_layer = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(dipnet.ProjectionFileError, match="layers this model does not have"):
        dipnet.load_state_dict(no_layer, state)
    assert not dipnet.projections(no_layer)


# ---------------------------------------------------------------------- summary
def test_summary_counts_projections_parameters_and_variances() -> None:
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.04,
                                                   parameterization="softplus"))
    with torch.no_grad():
        raw = dipnet.projections(model)["2"].raw_variance
        raw[0] = pretrained_raw(0.09)  # one feature of the second layer moved
    s = dipnet.summary_dict(model)
    own = 6 * 16 + 16 + 16 * 3 + 3
    assert (s["num_projections"], s["num_features"], s["parameters_added"]) == (2, 22, 22)
    assert s["model_parameters"] == own and s["total_parameters"] == own + 22
    assert math.isclose(s["percent_added"], 100 * 22 / own)
    assert s["placement"] == "layers" and s["config"]["init_variance"] == 0.04
    first, second = s["layers"]
    assert (first["name"], first["module"], first["num_features"]) == ("0", "Linear", 6)
    assert math.isclose(first["variance_mean"], 0.04, rel_tol=1e-5)
    assert math.isclose(second["variance_max"], 0.09, rel_tol=1e-5)
    assert math.isclose(second["variance_min"], 0.04, rel_tol=1e-5)
    assert math.isclose(s["variance"]["mean"], (21 * 0.04 + 0.09) / 22, rel_tol=1e-5)
    json.dumps(s)  # plain values
    for p in (model[0].weight, model[0].bias):  # frozen, as a pretrained layer under PEFT
        p.requires_grad_(False)
    assert dipnet.summary_dict(model)["trainable_parameters"] == own - (6 * 16 + 16) + 22

    text = dipnet.summary(model)
    assert "2 projections" in text and "22 parameters added" in text
    assert f"of the model's {own:,}" in text
    rows = [line.split() for line in text.splitlines()[3:]]
    assert [r[0] for r in rows] == ["0", "2"] and rows[1][-1] == "0.09"


def pretrained_raw(variance: float) -> float:
    """The softplus raw value of ``variance`` (floor 1e-6)."""
    v = variance - 1e-6
    return v + math.log(-math.expm1(-v))


def test_summary_of_a_token_model_and_of_a_plain_model() -> None:
    torch.manual_seed(0)
    tokens = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    dipnet.project(tokens, dipnet.DIPConfig(placement="input"))
    tokens.eval()
    s = dipnet.summary_dict(tokens)
    assert s["layers"][0]["on"] == "output" and s["layers"][0]["module"] == "Embedding"
    assert s["layers"][0]["sampling"] is False
    assert "output (dim -1)" in dipnet.summary(tokens)
    plain = dipnet.summary(mlp())
    assert plain.startswith("no DIPNet projections") and "dipnet.project" in plain
    assert dipnet.summary_dict(mlp())["num_projections"] == 0
