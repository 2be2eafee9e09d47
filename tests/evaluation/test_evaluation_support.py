"""Small real models for the evaluation tests: MLPs trained in-test on scikit-learn digits.

Imported by the other tests/test_evaluation_*.py files; the one test here checks that the
models really learned (the other tests mean little on an untrained net).
"""

from __future__ import annotations

import functools

import torch
from sklearn.datasets import load_digits
from torch import nn

import dipnet

import small_models


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], shape (N, 64); a fixed 1400 / 397 train / test split."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(model: nn.Module, loss_fn, epochs: int = 150) -> nn.Module:
    xtr, ytr, _, _ = digits_split()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):  # full batch: ~0.3 s on one core
        opt.zero_grad()
        loss_fn(model, xtr, ytr).backward()
        opt.step()
    model.eval()
    return model


def mlp(width: int = 64) -> nn.Sequential:
    return small_models.mlp(64, width, width, 10)


@functools.lru_cache(maxsize=1)
def standard_mlp() -> nn.Module:
    """A plain MLP trained on digits (about 97 % test accuracy)."""
    torch.manual_seed(0)
    return _train(mlp(), lambda m, x, y: nn.functional.cross_entropy(m(x), y))


@functools.lru_cache(maxsize=1)
def dipnet_mlp() -> nn.Module:
    """A DIPNet MLP (projections before every Linear, variance init 0.05) trained on digits."""
    torch.manual_seed(0)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.05, m=2))
    loss = dipnet.DIPLoss(num_train=1400)
    return _train(model, lambda m, x, y: loss(m, x, y).total)


def test_models_learned():
    _, _, xte, yte = digits_split()
    for model in (standard_mlp(), dipnet_mlp()):
        acc = (model(xte).argmax(-1) == yte).float().mean().item()
        assert acc > 0.9, acc
