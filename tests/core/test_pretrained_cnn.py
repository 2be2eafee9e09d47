"""The pretrained ccexam MNIST CNN in the model zoo (the fine-tuning setting)."""

from __future__ import annotations

import pytest
import torch

from dipnet.errors import UserError
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.zoo.models import create_model

pytest.importorskip("ccexam")


def test_pretrained_weights_are_loaded_and_head_is_new():
    data = load_dataset("mnist", None, 0.0, 0, 100, None)
    torch.manual_seed(0)
    kept = create_model("ccexam_cnn", data.input_shape, 10, new_head=False).eval()
    fresh = create_model("ccexam_cnn", data.input_shape, 10).eval()
    x, y = data.test.x[:500], data.test.y[:500]
    with torch.no_grad():
        acc_kept = float((kept(x).argmax(-1) == y).float().mean())
        acc_fresh = float((fresh(x).argmax(-1) == y).float().mean())
    # The shipped weights classify MNIST (98.65% on the first 2,000 test images, measured);
    # a fresh random head is at chance (~10%), while the feature weights are the same.
    assert acc_kept > 0.95
    assert acc_fresh < 0.4
    assert torch.equal(kept.features[0].weight, fresh.features[0].weight)
    assert create_model("ccexam_cnn", (1, 28, 28), 5).classifier[2].out_features == 5
    with pytest.raises(UserError, match="1x28x28"):
        create_model("ccexam_cnn", (3, 32, 32), 10)
