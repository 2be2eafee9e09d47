"""The model zoo: every registered model builds, runs forward/backward on each input kind, and
takes DIPNet projections; user factories load; bad names and parameters are clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dipnet
from dipnet.errors import UserError
from dipnet.experiments.zoo.models import count_parameters, create_model, list_models

torch.set_num_threads(1)
IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def tiny_factory(input_shape, num_classes, width=3):
    """A user's model, loaded as 'test_experiments_models:tiny_factory'."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width),
                         nn.ReLU(), nn.Linear(width, num_classes))


# Pretrained models take the input shape they were trained on, and say so for any other.
FIXED_SHAPE = {"ccexam_cnn": (1, 28, 28)}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_every_model_runs_on_every_image_shape(name, shape):
    if name in FIXED_SHAPE and tuple(shape) != FIXED_SHAPE[name]:
        with pytest.raises(UserError, match="takes"):
            create_model(name, shape, 7)
        return
    torch.manual_seed(0)
    model = create_model(name, shape, 7)
    x = torch.rand(4, *shape)
    out = model(x)
    assert out.shape == (4, 7)
    out.sum().backward()
    # every parameter receives a gradient (no dead branches)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("placement", ["layers", "blocks", "input"])
def test_every_model_takes_dipnet_projections(name, placement):
    torch.manual_seed(0)
    model = create_model(name, (1, 28, 28), 10)
    if placement == "blocks" and name in ("mlp", "ccexam_cnn"):
        # plain stacks have no repeated blocks: a clear error naming layers, model untouched
        with pytest.raises(dipnet.TargetError, match="no repeated blocks.*features"):
            dipnet.project(model, dipnet.DIPConfig(placement=placement))
        assert not dipnet.projections(model)
        return
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    before = model(x)
    dipnet.project(model, dipnet.DIPConfig(placement=placement))
    assert len(dipnet.projections(model)) >= 1
    assert torch.allclose(model(x), before)  # eval mode: exactly the original model
    with dipnet.sampling(model):
        assert not torch.allclose(model(x), before)


def test_model_sizes_are_small_and_depth_is_configurable():
    # sized for 2 CPU cores: documented in the factories' docstrings
    assert count_parameters(create_model("resnet8", (1, 28, 28), 10)) == 77_754
    r20 = create_model("resnet", (3, 32, 32), 10, depth=20)
    assert sum(isinstance(m, nn.Conv2d) for m in r20.modules()) == 19 + 2  # + 2 shortcut convs
    assert count_parameters(create_model("vit", (1, 28, 28), 10)) < 200_000
    vit2 = create_model("vit", (1, 28, 28), 10, patch_size=7)
    assert vit2.pos_embed.shape[1] == 16 + 1
    mlp = create_model("mlp", (40,), 10, hidden=[32, 16])
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]


def test_mlp_takes_vectors_but_conv_models_refuse_them():
    assert create_model("mlp", (40,), 10)(torch.rand(2, 40)).shape == (2, 10)
    with pytest.raises(UserError, match="needs image inputs"):
        create_model("resnet", (40,), 10)


def test_user_factory_by_import_path():
    model = create_model("test_experiments_models:tiny_factory", (1, 8, 8), 5, width=4)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(UserError, match="cannot load model factory"):
        create_model("no_such_pkg.mod:f", (1, 8, 8), 5)


def test_bad_names_and_params_are_clear_errors():
    with pytest.raises(UserError, match="unknown model 'alexnet'; choose one of"):
        create_model("alexnet", (1, 8, 8), 10)
    with pytest.raises(UserError, match=r"no parameter\(s\) \['hiden'\]"):
        create_model("mlp", (1, 8, 8), 10, hiden=[3])
    with pytest.raises(UserError, match="depth must be 6n\\+2"):
        create_model("resnet", (1, 8, 8), 10, depth=10)
    with pytest.raises(UserError, match="does not divide"):
        create_model("vit", (1, 28, 28), 10, patch_size=5)
