"""`DIPConfig.chunks` (issue 10 item 4): m trajectories in chunks, the one-pass gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dipnet
from dipnet import noise, objective

import small_models


def mlp() -> nn.Module:
    return small_models.mlp(20, 32, 32, 5, flatten=True)


def _step(base: nn.Module, m: int, chunks: int, gamma: float, x: torch.Tensor, y: torch.Tensor
          ) -> tuple[dipnet.LossParts, list[torch.Tensor]]:
    model = dipnet.project(copy.deepcopy(base), dipnet.DIPConfig(m=m, chunks=chunks, gamma=gamma,
                                                                 init_variance=0.05))
    xx = x.clone().requires_grad_()
    torch.manual_seed(3)
    parts = dipnet.DIPLoss(num_train=100)(model, xx, y)
    parts.total.backward()
    return parts, [xx.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("m,chunks,gamma", [(4, 2, 0.0), (3, 2, 0.0), (4, 4, 0.1), (5, 2, 0.1)])
def test_chunked_gradients_equal_the_one_pass_gradients(m, chunks, gamma) -> None:
    """gamma = 0 and gamma > 0 alike: the stability term sees all m outputs in both cases."""
    torch.manual_seed(0)
    base = mlp()
    x, y = torch.rand(6, 20), torch.randint(0, 5, (6,))
    one, g_one = _step(base, m, 1, gamma, x, y)
    split, g_split = _step(base, m, chunks, gamma, x, y)
    assert torch.equal(one.outputs, split.outputs)  # every trajectory drew the same noise
    assert one.total.item() == pytest.approx(split.total.item(), rel=1e-6)
    if gamma > 0:
        assert split.stability.item() > 0
    for a, b in zip(g_one, g_split):
        # Measured: at most 3e-8 apart (the chunks' gradients add up in another order).
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # Not vacuous: another seed gives other gradients.
    torch.manual_seed(4)
    other = dipnet.project(copy.deepcopy(base), dipnet.DIPConfig(m=m, init_variance=0.05))
    dipnet.DIPLoss(num_train=100)(other, x, y).total.backward()
    assert not torch.allclose(next(other.parameters()).grad, g_one[1], rtol=1e-3, atol=1e-6)


def test_chunks_keep_only_the_inputs_and_outputs_of_each_pass() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 5))
    x, y = torch.rand(32, 64), torch.randint(0, 5, (32,))
    kept = {}
    for chunks in (1, 4):
        cfg = dipnet.DIPConfig(m=8, chunks=chunks)
        model = dipnet.project(copy.deepcopy(base), cfg)
        with noise.options(regenerate=True):
            kept[chunks], parts = noise.saved_tensor_bytes(
                lambda: dipnet.DIPLoss(cfg, num_train=100)(model, x, y),
                list(model.parameters()))
        parts.total.backward()  # the recomputation runs, one chunk at a time
        assert all(p.grad is not None for p in dipnet.variance_parameters(model))
    assert kept[4] < 0.2 * kept[1]


def test_batchnorm_statistics_are_updated_once_per_chunk_not_again_in_backward() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))
    cfg = dipnet.DIPConfig(m=4, chunks=2)
    model = dipnet.project(base, cfg)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))
    dipnet.DIPLoss(cfg, num_train=100)(model, x, y).total.backward()
    assert int(model[1].num_batches_tracked) == 2
    before = model[1].running_mean.clone()
    with torch.no_grad():
        dipnet.DIPLoss(cfg, num_train=100)(model, x, y)  # no backward: no recomputation
    assert int(model[1].num_batches_tracked) == 4
    assert not torch.equal(before, model[1].running_mean)


def test_chunks_are_validated_and_named_in_the_memory_error(monkeypatch) -> None:
    with pytest.raises(dipnet.DIPConfigError, match=r"chunks=3.*1 to m=2"):
        dipnet.DIPConfig(m=2, chunks=3)
    with pytest.raises(dipnet.DIPConfigError, match=r"chunks=0"):
        dipnet.DIPConfig(m=2, chunks=0)
    cfg = dipnet.DIPConfig(m=4, chunks=2)
    assert dipnet.DIPConfig.from_dict(cfg.to_dict()) == cfg
    model = dipnet.project(mlp(), dipnet.DIPConfig(m=8))
    x, y = torch.rand(10, 20), torch.randint(0, 5, (10,))  # 800 bytes a copy
    monkeypatch.setattr(objective, "available_bytes", lambda device: 3000)
    with pytest.raises(dipnet.BatchTooLargeError, match=r"m=8.*DIPConfig\.chunks"):
        dipnet.DIPLoss(dipnet.DIPConfig(m=8), num_train=100)(model, x, y)
    # 8 trajectories in 4 passes: 2 copies (1.6 kB) per pass fit.
    dipnet.DIPLoss(dipnet.DIPConfig(m=8, chunks=4), num_train=100)(model, x, y)


def test_dip_trainer_refuses_chunks(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from dipnet.hf import DIPTrainer, project_model

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=8, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0))
    project_model(model, dipnet.DIPConfig(placement="blocks", m=2, chunks=2))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                          use_cpu=True)
    with pytest.raises(dipnet.errors.UserError, match="chunks=2 applies to dipnet.DIPLoss"):
        DIPTrainer(model=model, args=args, train_dataset=[], num_train=10)


def test_chunks_average_the_models_own_loss_over_trajectories() -> None:
    """Hugging Face style: no targets, the model's own .loss per pass, weighted by its share."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    ids = torch.randint(0, 32, (2, 8))
    runs = []
    for chunks in (1, 2):  # m = 3: passes of 2 and 1 trajectories
        cfg = dipnet.DIPConfig(placement="blocks", m=3, chunks=chunks, init_variance=0.05)
        model = dipnet.project(copy.deepcopy(base), cfg).train()
        torch.manual_seed(5)
        parts = dipnet.DIPLoss(cfg, num_train=100)(model, {"input_ids": ids, "labels": ids})
        parts.total.backward()
        runs.append((parts.nll.item(), [p.grad for p in model.parameters() if p.grad is not None]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
