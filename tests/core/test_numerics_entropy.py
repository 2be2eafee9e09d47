"""Entropy and mutual information stay finite when logits hold -inf (masked classes); issue 9,
item 14. Reference values come from the distribution over the unmasked classes only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dipnet

torch.set_num_threads(1)


def _masked(out: torch.Tensor) -> torch.Tensor:
    # Class 2 of 4 can never occur: a vocabulary mask, as constrained decoding uses.
    return out.masked_fill(torch.tensor([False, False, True, False]), -float("inf"))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


@pytest.mark.parametrize("k", [0, 1, 6])
def test_masked_classes_give_finite_entropy_and_mutual_information(k: int) -> None:
    torch.manual_seed(0)
    model = dipnet.project(nn.Sequential(nn.Linear(5, 4)), dipnet.DIPConfig(init_variance=0.5))
    x = torch.randn(3, 5)
    pred = dipnet.predict(model, x, k=k, keep_samples=True, output_fn=_masked)
    for name in ("probs", "entropy", "mutual_information"):
        assert torch.isfinite(getattr(pred, name)).all(), name
    assert (pred.probs[:, 2] == 0).all()
    kept = pred.samples[..., [0, 1, 3]].softmax(-1)  # (k', B, 3): the unmasked classes only
    mean_p = kept.mean(0)
    torch.testing.assert_close(pred.entropy, _entropy(mean_p), atol=1e-5, rtol=1e-5)
    expected_mi = _entropy(mean_p) - _entropy(kept).mean(0)
    torch.testing.assert_close(pred.mutual_information, expected_mi.clamp_min(0), atol=1e-5,
                               rtol=1e-5)
    if k > 1:
        assert (pred.mutual_information > 0).all()
    assert (pred.entropy <= math.log(3) + 1e-6).all()  # three live classes at most


def test_a_single_live_class_has_zero_entropy() -> None:
    model = dipnet.project(nn.Sequential(nn.Linear(5, 3)))
    only_first = lambda out: out.masked_fill(torch.tensor([False, True, True]), -float("inf"))  # noqa: E731
    pred = dipnet.predict(model, torch.randn(2, 5), k=4, output_fn=only_first)
    assert torch.equal(pred.entropy, torch.zeros(2))
    assert torch.equal(pred.mutual_information, torch.zeros(2))
    assert torch.equal(pred.labels, torch.zeros(2, dtype=torch.long))
