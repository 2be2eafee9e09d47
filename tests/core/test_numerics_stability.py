"""One definition of the stability term for the core `DIPLoss` and `DIPTrainer` (issue 9,
item 16), `stability_on="probs"`, and the variance floor (item 15).

The definition: the unbiased variance across the m trajectories, summed over the last (class /
vocabulary) axis, averaged over the positions that count (examples for a classifier; for token
outputs the positions whose label is not -100, shifted by one for a causal LM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dipnet

import small_models

torch.set_num_threads(1)


def _by_hand(outputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    m = outputs.shape[0]
    mean = outputs.mean(0)
    var = ((outputs - mean) ** 2).sum(0) / (m - 1)  # unbiased, per element
    per_position = var.sum(-1)
    if mask is None:
        return per_position.mean()
    return per_position[mask].mean()


def test_stability_on_token_outputs_averages_over_counted_positions() -> None:
    torch.manual_seed(0)
    out = torch.randn(3, 2, 5, 4)  # (m, B, T, V)
    mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, False]])
    torch.testing.assert_close(dipnet.stability(out, mask), _by_hand(out, mask))
    torch.testing.assert_close(dipnet.stability(out), _by_hand(out, None))
    # Masked positions do not matter at all.
    out2 = out.clone()
    out2[:, 0, 2:] += 50 * torch.randn(3, 3, 4)
    torch.testing.assert_close(dipnet.stability(out2, mask), dipnet.stability(out, mask))
    assert dipnet.stability(out, torch.zeros(2, 5, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="mask"):
        dipnet.stability(out, mask[:, :3])


def test_stability_of_a_classifier_is_the_per_example_mean() -> None:
    torch.manual_seed(0)
    out = torch.randn(4, 6, 3)
    torch.testing.assert_close(dipnet.stability(out), _by_hand(out, None))
    scalar = torch.randn(4, 6)  # one output per example, no class axis
    torch.testing.assert_close(dipnet.stability(scalar), scalar.var(0).mean())


def test_token_mask_follows_the_labels_and_the_causal_shift() -> None:
    labels = torch.tensor([[5, 6, -100, 7], [-100, 1, 2, -100]])
    assert dipnet.token_mask(labels, shift=False).tolist() == [[True, True, False, True],
                                                               [False, True, True, False]]
    # Causal LM: position t predicts label t+1; the last position predicts nothing.
    assert dipnet.token_mask(labels, shift=True).tolist() == [[True, False, True, False],
                                                              [True, True, False, False]]


def test_dip_loss_with_token_targets_ignores_minus_100_positions() -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=3, gamma=0.5, barrier_scaling="unscaled", init_variance=0.3)
    model = dipnet.project(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 6)), cfg)
    x = torch.randn(2, 5, 4)
    y = torch.randint(0, 6, (2, 5))
    y[0, 3:] = -100
    parts = dipnet.DIPLoss(cfg)(model, x, y)
    expected = _by_hand(parts.outputs.detach(), y != -100)
    torch.testing.assert_close(parts.stability.detach(), expected)
    assert not torch.allclose(expected, _by_hand(parts.outputs.detach(), None))


@pytest.mark.parametrize("stability_on", ["logits", "probs"])
def test_stability_on_probs_uses_the_softmax(stability_on: str) -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=4, gamma=0.1, init_variance=0.5, stability_on=stability_on,
                           barrier_scaling="unscaled")
    model = dipnet.project(nn.Sequential(nn.Linear(4, 3)), cfg)
    with torch.no_grad():
        model[0].weight.mul_(5)  # large logits: variances of logits and probs differ a lot
    parts = dipnet.DIPLoss(cfg)(model, torch.randn(5, 4), torch.randint(0, 3, (5,)))
    f = parts.outputs.softmax(-1) if stability_on == "probs" else parts.outputs
    torch.testing.assert_close(parts.stability, _by_hand(f, None))
    other = parts.outputs if stability_on == "probs" else parts.outputs.softmax(-1)
    assert abs(parts.stability.item() - _by_hand(other, None).item()) > 0.05


def test_core_loss_and_trainer_agree_on_a_padded_token_batch(tmp_path) -> None:
    """The audit measured 1.69 (core) vs 0.19 (trainer) for one gamma on one batch."""
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from dipnet.hf import DIPTrainer, project_model

    cfg = dipnet.DIPConfig(placement="blocks", m=3, gamma=0.5, init_variance=0.05)
    model = project_model(small_models.tiny_llama(), cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 40, (4, 10), generator=g)
    labels = ids.clone()
    labels[:, 6:] = -100
    labels[0, :3] = -100
    batch = {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}
    model.train()
    torch.manual_seed(7)
    core = dipnet.DIPLoss(cfg, num_train=100)(model, dict(batch))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                             per_device_train_batch_size=4)
    tr = DIPTrainer(model=model, args=args, train_dataset=[batch] * 4, dip_config=cfg,
                    num_train=100)
    model.train()
    torch.manual_seed(7)  # the same noise draws
    with torch.no_grad():
        tr.compute_loss(model, dict(batch))
    assert tr._dip_sums["dip_stability"] == pytest.approx(core.stability.item(), rel=1e-5)
    # And it is the masked mean: position t counts when label t+1 is not -100.
    expected = _by_hand(core.outputs.detach(), dipnet.token_mask(labels, shift=True))
    assert core.stability.item() == pytest.approx(expected.item(), rel=1e-5)
    assert core.stability.item() > 0


# ---------------------------------------------------------------------------- variance floor
@pytest.mark.parametrize("floor", [0.0, -1e-9])
def test_variance_floor_must_be_positive(floor: float) -> None:
    with pytest.raises(dipnet.DIPConfigError, match=r"DIPConfig.variance_floor.*> 0"):
        dipnet.DIPConfig(variance_floor=floor)
    with pytest.raises(ValueError, match="variance_floor"):
        dipnet.GaussianProjection(4, variance_floor=floor)
