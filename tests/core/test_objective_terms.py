"""One DIPNet objective: `DIPLoss` and `DIPTrainer` compute the same loss from `dip_terms`.

Issue 21: the trainer re-derived the ELBO barrier scaling, the stability term and its mask
next to `DIPLoss`. These tests compared the two (same model, batch and noise) before the copy
went, and keep guarding that they agree: every part, the total and the gradients.
"""

from __future__ import annotations

import pytest
import torch

import dipnet
from dipnet import objective

import small_models

torch.set_num_threads(1)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 40, (4, 10), generator=g)
    labels = ids.clone()
    labels[:, 7:] = -100  # padding
    labels[0, :2] = -100
    return {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("stability_on", ["logits", "probs"])
@pytest.mark.parametrize("counted", [False, True], ids=["uncounted", "num_items"])
def test_dip_loss_and_dip_trainer_agree_on_one_batch(tmp_path, stability_on: str,
                                                     counted: bool) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from dipnet.hf import DIPTrainer, project_model

    cfg = dipnet.DIPConfig(placement="blocks", m=3, gamma=0.5, init_variance=0.05,
                           stability_on=stability_on)
    model = project_model(small_models.tiny_llama(), cfg)
    batch = _batch()
    model.train()
    torch.manual_seed(7)
    core = dipnet.DIPLoss(cfg, num_train=100)(model, dict(batch))
    core.total.backward()
    core_grads = _grads(model)

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                             per_device_train_batch_size=4)
    trainer = DIPTrainer(model=model, args=args, train_dataset=[batch] * 4, dip_config=cfg,
                         num_train=100)
    model.train()
    # The Trainer's own count of the accumulated batch (one micro-batch here): the labels
    # after the causal shift.
    items = batch["labels"][:, 1:].ne(-100).sum() if counted else None
    torch.manual_seed(7)  # the same noise draws
    total = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
    total.backward()
    trainer_grads = _grads(model)

    parts = trainer._dip_sums
    assert parts["dip_nll"] == pytest.approx(core.nll.item(), rel=1e-6)
    assert parts["dip_barrier"] == pytest.approx(core.barrier.item(), rel=1e-6)
    assert parts["dip_stability"] == pytest.approx(core.stability.item(), rel=1e-6)
    assert core.stability.item() > 0 and core.barrier.item() != 0
    assert total.item() == pytest.approx(core.total.item(), rel=1e-6)
    assert len(trainer_grads) == len(core_grads) > 0
    for a, b in zip(trainer_grads, core_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_dip_terms_is_the_objective_of_dip_loss() -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=4, gamma=0.3, init_variance=0.05)
    model = dipnet.project(small_models.mlp(6, 16, 3), cfg)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    torch.manual_seed(3)
    parts = dipnet.DIPLoss(cfg, num_train=50)(model, x, y)
    terms = objective.dip_terms(model, parts.nll, parts.outputs, cfg, num_train=50)
    for name in ("total", "nll", "barrier", "stability"):
        torch.testing.assert_close(getattr(terms, name), getattr(parts, name), rtol=0, atol=0)
    # The parts by their definitions: the ELBO barrier is divided by N.
    bar = dipnet.barrier(model, *cfg.barrier_weights()) / 50
    torch.testing.assert_close(terms.barrier, bar)
    torch.testing.assert_close(terms.total, parts.nll + bar + cfg.gamma * terms.stability)


def test_the_counted_positions_follow_the_labels_or_count_everything() -> None:
    out = torch.zeros(2, 3, 5, 7)  # (m, B, T, V)
    labels = torch.tensor([[1, 2, -100, -100, -100]] * 3)
    torch.testing.assert_close(objective.counted_positions(labels, out, shift=False),
                               labels != -100)
    torch.testing.assert_close(objective.counted_positions(labels, out, shift=True)[0],
                               torch.tensor([True, False, False, False, False]))
    # Labels that do not match the positions (a classifier's), or float targets: every one.
    assert objective.counted_positions(torch.tensor([1, 2, 0]), out, shift=False) is None
    assert objective.counted_positions(labels.float(), out, shift=False) is None
    assert objective.counted_positions(None, out, shift=False) is None


def test_unwrap_reaches_the_model_inside_nested_wrappers() -> None:
    from dipnet.experiments.zoo import methods
    from dipnet.inject import unwrap

    model = small_models.mlp(4, 3)
    wrapped = torch.nn.DataParallel(torch.nn.DataParallel(model))
    assert unwrap(wrapped) is model and unwrap(model) is model
    assert methods.unwrap is unwrap  # the harness uses the same one
