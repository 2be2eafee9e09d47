"""The zoo's Hugging Face ViT (`hf_vit`): built from a config, fine-tuned from a run's weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")

from dipnet import DIPConfig, project, projections  # noqa: E402
from dipnet.errors import UserError  # noqa: E402
from dipnet.experiments.zoo.models import create_model  # noqa: E402

SMALL = dict(patch_size=7, hidden=16, depth=2, heads=2)


def _saved(tmp_path, model) -> str:
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_it_maps_images_to_logits_and_its_blocks_are_found():
    torch.manual_seed(0)
    model = create_model("hf_vit", (1, 28, 28), 10, **SMALL)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    project(model, DIPConfig(placement="blocks", init_variance=0.01))
    # one projection per encoder layer (ViTLayer), the residual stream the paper perturbs
    assert len(projections(model)) == SMALL["depth"]


def test_it_starts_from_a_runs_weights_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    source = create_model("hf_vit", (1, 28, 28), 10, **SMALL)
    path = _saved(tmp_path, source)
    torch.manual_seed(1)
    kept = create_model("hf_vit", (1, 28, 28), 10, weights=path, new_head=False, **SMALL)
    fresh = create_model("hf_vit", (1, 28, 28), 5, weights=path, **SMALL)
    src, k, f = source.state_dict(), kept.state_dict(), fresh.state_dict()
    for key in src:
        assert torch.equal(src[key], k[key]), key
        if not key.startswith("net.classifier."):
            assert torch.equal(src[key], f[key]), key
    assert f["net.classifier.weight"].shape == (5, SMALL["hidden"])


def test_weights_of_another_shape_or_no_file_are_one_clear_error(tmp_path):
    path = _saved(tmp_path, create_model("hf_vit", (1, 28, 28), 10, **SMALL))
    with pytest.raises(UserError, match="do not fit this hf_vit"):
        create_model("hf_vit", (1, 28, 28), 10, weights=path, patch_size=7, hidden=32, depth=2,
                     heads=2)
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="cannot read ViT weights"):
        create_model("hf_vit", (1, 28, 28), 10, weights=str(tmp_path / "bad.safetensors"),
                     **SMALL)
