"""Config validation, targeting rules and errors, modes, saving and loading."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dipnet

import small_models

torch.set_num_threads(1)


def mlp() -> nn.Sequential:
    return small_models.mlp(6, 16, 16, 3, seed=0)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [
    ("placement", "everywhere"), ("init_variance", 0.0), ("init_variance", -1.0),
    ("alpha", 0), ("beta", float("nan")), ("gamma", -0.1), ("m", 0), ("k", 1.5),
    ("parameterization", "sigmoid"), ("barrier_scaling", "mean"), ("stability_on", "loss"),
    ("target_modules", "(unclosed"), ("target_modules", 3), ("variance_floor", -1e-3),
])
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(dipnet.DIPConfigError, match=f"DIPConfig.{field}"):
        dipnet.DIPConfig(**{field: value})


def test_config_combinations_are_checked() -> None:
    with pytest.raises(dipnet.DIPConfigError, match="m >= 2"):
        dipnet.DIPConfig(gamma=0.05, m=1)
    with pytest.raises(dipnet.DIPConfigError, match="target_modules or target_types"):
        dipnet.DIPConfig(placement="custom")
    with pytest.raises(dipnet.DIPConfigError, match="must exceed"):
        dipnet.DIPConfig(init_variance=1e-3, variance_floor=1e-2)


def test_config_round_trips_through_a_dict() -> None:
    cfg = dipnet.DIPConfig(placement="custom", target_types=[nn.Linear], m=3, gamma=0.01)
    again = dipnet.DIPConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert again.target_types == ["Linear"]
    with pytest.raises(dipnet.DIPConfigError, match="unknown DIPConfig field"):
        dipnet.DIPConfig.from_dict({"alpah": 0.1})


# ---------------------------------------------------------------------------- targeting
def test_target_by_name_suffix_regex_and_type_with_exclusions() -> None:
    model = mlp()
    names = lambda cfg: list(dipnet.projections(dipnet.project(mlp(), cfg)))  # noqa: E731
    assert names(dipnet.DIPConfig()) == ["0", "2", "4"]
    assert names(dipnet.DIPConfig(placement="custom", target_modules=["2"])) == ["2"]
    assert names(dipnet.DIPConfig(placement="custom", target_modules=r"[02]")) == ["0", "2"]
    assert names(dipnet.DIPConfig(placement="custom", target_types=["Linear"],
                                  exclude_modules=["4"])) == ["0", "2"]
    assert names(dipnet.DIPConfig(placement="input")) == ["0"]
    assert names(dipnet.DIPConfig(exclude_modules=r"4")) == ["0", "2"]
    assert dipnet.projections(model) == {}


def test_target_that_matches_nothing_names_candidates() -> None:
    model = mlp()
    with pytest.raises(dipnet.TargetError, match=r"matched no module; candidates: 0, 2, 4"):
        dipnet.project(model, dipnet.DIPConfig(placement="custom", target_modules=["fc9"]))
    assert dipnet.projections(model) == {}  # nothing was touched
    with pytest.raises(dipnet.TargetError, match="found no repeated blocks"):
        dipnet.project(model, dipnet.DIPConfig(placement="blocks"))
    with pytest.raises(dipnet.TargetError, match="leaves no module"):
        dipnet.project(model, dipnet.DIPConfig(exclude_modules=r".*"))


def test_embedding_cannot_be_a_target() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(dipnet.TargetError, match="token ids"):
        dipnet.project(model, dipnet.DIPConfig(placement="custom", target_modules=["0"]))


def test_projecting_twice_is_refused() -> None:
    model = dipnet.project(mlp())
    with pytest.raises(dipnet.AlreadyProjectedError, match="dipnet.remove"):
        dipnet.project(model)


def test_wrong_input_shape_gives_a_clear_error() -> None:
    model = dipnet.project(nn.Conv2d(3, 4, 3), dipnet.DIPConfig())
    with pytest.raises(dipnet.ProjectionShapeError, match=r"expected 3 features on axis 1"):
        model(torch.randn(2, 5, 8, 8))


# ---------------------------------------------------------------------------- modes
def test_deterministic_switches_sampling_off_in_train_mode() -> None:
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.5))
    x = torch.randn(4, 6)
    model.eval()
    ref = model(x)
    model.train()
    with dipnet.deterministic(model):
        assert torch.equal(model(x), ref)
    assert not torch.equal(model(x), ref)


def test_eval_mode_has_no_hooks_left() -> None:
    """The eval path is the original code path: no hook overhead at all."""
    model = dipnet.project(mlp())
    model.eval()
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    model.train()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 3


def test_deepcopy_keeps_projection_and_host_together() -> None:
    model = dipnet.project(mlp())
    clone = copy.deepcopy(model)
    for host, proj in dipnet.projections(clone).items():
        assert proj._host is dict(clone.named_modules())[host]
    clone.eval()
    clone.train()  # must re-hook the clone's modules, not the original's
    assert sum(len(m._forward_pre_hooks) for m in clone.modules()) == 3
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 3


def test_variances_report_the_configured_initial_value() -> None:
    for param in ("softplus", "exp"):
        model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.03,
                                                       parameterization=param))
        for v in dipnet.variances(model).values():
            assert torch.allclose(v, torch.full_like(v, 0.03), rtol=1e-5)


# ---------------------------------------------------------------------------- predict
def test_predict_deterministic_and_monte_carlo() -> None:
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.5))
    x = torch.randn(5, 6)
    model.eval()
    det = dipnet.predict(model, x, k=0)
    assert torch.allclose(det.probs, model(x).softmax(-1))
    assert torch.equal(det.mutual_information, torch.zeros(5))
    torch.manual_seed(1)
    mc = dipnet.predict(model, x, k=16, keep_samples=True)
    assert mc.samples is not None and mc.samples.shape == (16, 5, 3)
    expected = mc.samples.softmax(-1).mean(0)  # probabilities are averaged, not logits
    assert torch.allclose(mc.probs, expected, atol=1e-6)
    ent = -(expected * expected.log()).sum(-1)
    mean_ent = -(mc.samples.softmax(-1) * mc.samples.log_softmax(-1)).sum(-1).mean(0)
    assert torch.allclose(mc.entropy, ent, atol=1e-5)
    assert torch.allclose(mc.mutual_information, ent - mean_ent, atol=1e-5)
    assert (mc.mutual_information > 0).all()
    assert model.training is False  # mode restored


# ---------------------------------------------------------------------------- saving
def test_projection_parameters_round_trip_through_state_dict() -> None:
    a = dipnet.project(mlp())
    with torch.no_grad():
        for p in dipnet.variance_parameters(a):
            p.uniform_(-3, 0)
    b = dipnet.project(mlp())
    b.load_state_dict(a.state_dict())
    for (n, pa), (_, pb) in zip(dipnet.projections(a).items(), dipnet.projections(b).items()):
        assert torch.equal(pa.variance, pb.variance), n


def test_pretrained_weights_of_the_plain_model_still_load() -> None:
    plain_state = mlp().state_dict()
    model = dipnet.project(mlp())
    missing, unexpected = model.load_state_dict(plain_state, strict=False)
    assert unexpected == [] and all("dip_projection" in k for k in missing)


def test_save_and_load_projections_only(tmp_path) -> None:
    a = dipnet.project(mlp(), dipnet.DIPConfig(placement="custom", target_modules=["2", "4"]))
    with torch.no_grad():
        for p in dipnet.variance_parameters(a):
            p.normal_()
    path = tmp_path / "proj.safetensors"
    dipnet.save_projections(a, path)
    b = dipnet.load_projections(mlp(), path)  # projects with the saved config
    assert list(dipnet.projections(b)) == ["2", "4"]
    for pa, pb in zip(dipnet.projections(a).values(), dipnet.projections(b).values()):
        assert torch.equal(pa.variance, pb.variance)
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_a_bad_projections_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(dipnet.ProjectionFileError, match="not found"):
        dipnet.load_projections(mlp(), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(dipnet.ProjectionFileError, match="cannot read"):
        dipnet.load_projections(mlp(), bad)
    path = tmp_path / "p.safetensors"
    dipnet.save_projections(dipnet.project(mlp()), path)
    other = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(dipnet.ProjectionFileError, match="does not fit"):
        dipnet.load_projections(other, path)
    assert dipnet.projections(other) == {}  # left unchanged


def test_parameter_groups_exempt_variances_from_weight_decay() -> None:
    model = dipnet.project(mlp())
    groups = dipnet.parameter_groups(model, variance_lr=0.05)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.05
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.5)
    before = dipnet.variances(model)
    for _ in range(20):  # zero gradients: only weight decay could move anything
        opt.zero_grad()
        sum(p.sum() * 0 for p in model.parameters()).backward()
        opt.step()
    for name, v in dipnet.variances(model).items():
        assert torch.equal(v, before[name])


# ---------------------------------------------------------------------------- modes restored
def test_remove_in_train_mode_leaves_no_hook_and_a_deterministic_model() -> None:
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.5))
    plain = mlp()
    model.train()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 3
    dipnet.remove(model)
    assert all(len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == 0
               for m in model.modules())
    x = torch.randn(4, 6)
    assert torch.equal(model(x), plain(x))  # train mode, and no noise left anywhere
    assert dipnet.get_config(model) is None


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("training", [True, False])
def test_predict_restores_the_callers_mode(k: int, training: bool) -> None:
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.5))
    model.train(training)
    dipnet.predict(model, torch.randn(4, 6), k=k)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    # The projections' hooks follow the restored mode (sampling only in train mode).
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == (3 if training else 0)
    assert all(p.mode == "auto" for p in dipnet.projections(model).values())


@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_variance_floor_is_added_to_every_variance(param: str) -> None:
    cfg = dipnet.DIPConfig(init_variance=1.0, variance_floor=0.5, parameterization=param)
    model = dipnet.project(mlp(), cfg)
    for proj in dipnet.projections(model).values():
        torch.testing.assert_close(proj.variance, torch.ones(proj.num_features))
        with torch.no_grad():
            proj.raw_variance.fill_(-50.0)  # the learned part vanishes: only the floor is left
        torch.testing.assert_close(proj.variance, torch.full((proj.num_features,), 0.5))


def test_recipes_build_their_fields_and_name_their_evidence():
    from pathlib import Path

    from dipnet.recipes import RECIPES

    root = Path(__file__).resolve().parents[2]
    assert set(RECIPES) == {"scratch", "finetune", "robust"}
    for name, r in RECIPES.items():
        cfg = dipnet.DIPConfig.recipe(name)
        assert all(getattr(cfg, k) == v for k, v in r.fields.items())
        # every recipe points at a committed study
        cited = [w.strip("(),") for w in r.evidence.split() if w.startswith("docs/results/")]
        assert cited and all((root / c).exists() for c in cited), (name, cited)
    assert dipnet.DIPConfig.recipe("scratch").learn_variance is False
    assert dipnet.DIPConfig.recipe("finetune").learn_variance is False  # the ViT study
    assert dipnet.DIPConfig.recipe("scratch", init_scale=0.3).init_scale == 0.3
    with pytest.raises(dipnet.DIPConfigError, match="unknown DIPConfig recipe"):
        dipnet.DIPConfig.recipe("fast")
    with pytest.raises(dipnet.DIPConfigError, match="unknown DIPConfig field"):
        dipnet.DIPConfig.recipe("scratch", colour=1)


def test_project_freezes_the_variances_of_a_frozen_config_and_training_leaves_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cfg = dipnet.DIPConfig(learn_variance=False, init_variance=0.05)
    dipnet.project(model, cfg)
    var = dipnet.variance_parameters(model)
    assert var and not any(p.requires_grad for p in var)
    before = [p.detach().clone() for p in var]
    # even an optimizer over ALL parameters (a plain loop) cannot move a frozen variance
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loss_fn = dipnet.DIPLoss(cfg, num_train=32)
    x, y = torch.randn(32, 6), torch.randint(3, (32,))
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, x, y).total.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, dipnet.variance_parameters(model)))


@pytest.mark.parametrize("first", ["dipnet.NonFiniteInputError",
                                   "__import__('dipnet.predict').predict"])
def test_an_export_named_like_its_module_survives_the_import_of_the_module(first: str) -> None:
    # Importing the module dipnet.predict (directly, or through dipnet.NonFiniteInputError)
    # makes Python bind it on the package as `dipnet.predict`, over the function of that name
    # (found in issue 21: a test calling dipnet.predict after dipnet.NonFiniteInputError
    # failed when run alone).
    import os
    import subprocess
    import sys

    code = (f"import dipnet; {first}\n"
            "print(callable(dipnet.predict), type(dipnet.predict).__name__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "..", "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.split() == ["True", "function"]
