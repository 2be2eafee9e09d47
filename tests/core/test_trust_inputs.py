"""DIPLoss checks its targets and inputs, predict and the evaluation check k, in dipnet's words.

Each message names the problem in the user's terms: their batch size (not m x B), the class
range of their model, NaN inputs as NaN inputs (not a variance error from the calibration).
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import dipnet
from dipnet import objective

# `from dipnet import predict` is the function; the module is what the memory tests patch.
predict_module = importlib.import_module("dipnet.predict")

torch.set_num_threads(1)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def loss(model: nn.Module, x: torch.Tensor, y, **config) -> dipnet.LossParts:
    cfg = dipnet.DIPConfig(m=config.pop("m", 4), **config)
    return dipnet.DIPLoss(cfg, num_train=100)(model, x, y)


def one_line(info: pytest.ExceptionInfo) -> str:
    text = str(info.value)
    assert "\n" not in text and text.startswith("DIPLoss"), text
    return text


# ---------------------------------------------------------------------- targets
@pytest.mark.parametrize("targets,message", [
    (torch.zeros(5, dtype=torch.long), r"5 examples.*batch has 4"),
    (torch.zeros(3, dtype=torch.long), r"3 examples.*batch has 4"),
    (torch.tensor([0, 1, 3, 2]), r"label 3.*0\.\.2.*3 classes"),
    (torch.tensor([0, -1, 1, 2]), r"label -1.*0\.\.2"),
    (torch.zeros(4, 2, dtype=torch.long), r"shape \(4, 2\).*\(4,\)"),
    (torch.tensor([0.0, 1.0, 2.0, 1.0]), r"float.*class indices.*long"),
    (torch.tensor([True, False, True, False]), r"bool"),
    (torch.full((4, 3), 0.5), r"soft targets.*sum to 1"),
    (torch.tensor([[1.0, 0, 0]] * 3 + [[float("nan"), 0, 1]]), r"soft targets.*NaN"),
    (torch.tensor([[1.5, -0.5, 0]] * 4), r"soft targets.*negative"),
    (torch.full((4, 4), 0.25), r"soft targets.*shape \(4, 4\).*\(4, 3\)"),
])
def test_bad_targets_are_named_in_the_users_terms(targets: torch.Tensor, message: str) -> None:
    model = dipnet.project(mlp())
    with pytest.raises(ValueError, match=message) as info:
        loss(model, torch.randn(4, 4), targets)
    text = one_line(info)
    assert "16" not in text and "20" not in text  # never m x B (m = 4)


def test_good_targets_still_load_hard_soft_and_ignored() -> None:
    model = dipnet.project(mlp())
    x = torch.randn(4, 4)
    loss(model, x, torch.tensor([0, 1, 2, -100]))
    loss(model, x, torch.softmax(torch.randn(4, 3), -1))
    # Token targets (B, T) for outputs (B, T, C).
    seq = dipnet.project(nn.Sequential(nn.Linear(4, 3)))
    loss(seq, torch.randn(2, 5, 4), torch.randint(0, 3, (2, 5)))


def test_a_custom_criterion_still_gets_the_batch_size_check() -> None:
    model = dipnet.project(mlp())
    cfg = dipnet.DIPConfig(m=2)
    fn = dipnet.DIPLoss(cfg, num_train=100, criterion=lambda out, y: ((out - y) ** 2).mean())
    fn(model, torch.randn(4, 4), torch.randn(4, 3))  # any targets the criterion takes
    with pytest.raises(ValueError, match=r"6 examples.*batch has 4") as info:
        fn(model, torch.randn(4, 4), torch.randn(6, 3))
    one_line(info)


@pytest.mark.parametrize("relative_init", [True, False])
def test_nan_inputs_are_reported_as_nan_inputs(relative_init: bool) -> None:
    config = {} if relative_init else {"init_variance": 0.01}
    model = dipnet.project(mlp(), dipnet.DIPConfig(**config))
    x = torch.randn(4, 4)
    x[2, 1] = float("nan")
    with pytest.raises(dipnet.NonFiniteInputError, match=r"NaN.*example 2") as info:
        loss(model, x, torch.tensor([0, 1, 2, 0]), **config)
    text = one_line(info)
    assert "variance" not in text


# ---------------------------------------------------------------------- k
@pytest.mark.parametrize("k", [1.5, True, False, "3", -1, 2.0])
def test_predict_refuses_a_k_that_is_not_a_whole_number(k) -> None:
    model = dipnet.project(mlp())
    with pytest.raises(ValueError, match=r"k must be a whole number >= 0") as info:
        dipnet.predict(model, torch.randn(2, 4), k=k)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("chunk", [0, 2.0, True])
def test_predict_refuses_a_chunk_that_is_not_a_positive_whole_number(chunk) -> None:
    with pytest.raises(ValueError, match=r"chunk must be a whole number >= 1"):
        dipnet.predict(dipnet.project(mlp()), torch.randn(2, 4), k=2, chunk=chunk)


def test_numpy_integers_are_whole_numbers() -> None:
    import numpy as np

    out = dipnet.predict(dipnet.project(mlp()), torch.randn(2, 4), k=np.int64(3))
    assert out.probs.shape == (2, 3)


def test_a_large_k_runs_in_passes_that_fit_the_memory(monkeypatch) -> None:
    # 1 MB free: 200 copies of a (2, 4) batch with its activations would not fit in one pass
    # (copy_bytes measures them), so predict runs as many passes as fit and keeps only the
    # running average. Each pass is checked by check_copies_fit, so a pass that did not fit
    # would raise.
    model = dipnet.project(mlp())
    x = torch.randn(2, 4)
    per_copy = predict_module.copy_bytes(model, x)
    assert per_copy >= x.numel() * 4 * 3  # inputs, hidden layer and output at least
    budget = per_copy * 40  # MEMORY_FRACTION 0.25: 10 copies per pass
    monkeypatch.setattr(objective, "available_bytes", lambda device: budget)
    monkeypatch.setattr(predict_module, "available_bytes", lambda device: budget)
    assert predict_module.auto_chunk(model, x, 200) == 10
    calls = []
    original = predict_module.mc_logits
    monkeypatch.setattr(predict_module, "mc_logits",
                        lambda *a, **kw: calls.append(a[2]) or original(*a, **kw))
    torch.manual_seed(0)
    out = dipnet.predict(model, x, k=200)
    assert calls == [10] * 20
    assert torch.allclose(out.probs.sum(-1), torch.ones(2))
    # The same estimator as one pass: with the same noise (one pass of 200 copies draws it in
    # another order) the averages agree to sampling error; measured |diff| < 0.03 at k=200.
    monkeypatch.setattr(objective, "available_bytes", lambda device: None)
    monkeypatch.setattr(predict_module, "available_bytes", lambda device: None)
    one_pass = dipnet.predict(model, x, k=200)
    assert (out.probs - one_pass.probs).abs().max() < 0.05
    assert (out.mutual_information - one_pass.mutual_information).abs().max() < 0.05


def test_chunked_average_equals_the_formula_on_the_same_trajectories(monkeypatch) -> None:
    # keep_samples returns the trajectories the passes drew: the running average over passes
    # must be exactly log mean softmax of those (up to float round-off).
    model = dipnet.project(mlp())
    x = torch.randn(3, 4)
    out = dipnet.predict(model, x, k=7, chunk=3, keep_samples=True)
    assert out.samples.shape == (7, 3, 3)
    log_ps = torch.log_softmax(out.samples, -1)
    expected = torch.logsumexp(log_ps, 0) - torch.log(torch.tensor(7.0))
    assert torch.allclose(out.log_probs, expected, atol=1e-6)
    mean_ent = -(log_ps.exp() * log_ps).sum(-1).mean(0)
    assert torch.allclose(out.mutual_information, (out.entropy - mean_ent).clamp_min(0),
                          atol=1e-6)


def test_keep_samples_refuses_logits_that_cannot_fit(monkeypatch) -> None:
    model = dipnet.project(mlp())
    x = torch.randn(2, 4)
    budget = predict_module.copy_bytes(model, x) * 40
    monkeypatch.setattr(objective, "available_bytes", lambda device: budget)
    monkeypatch.setattr(predict_module, "available_bytes", lambda device: budget)
    with pytest.raises(dipnet.BatchTooLargeError, match=r"keep_samples=True.*k=100000"):
        dipnet.predict(model, x, k=100_000, keep_samples=True)


def test_the_memory_probe_leaves_the_callers_noise_stream_alone() -> None:
    model = dipnet.project(mlp())
    x = torch.randn(2, 4)
    torch.manual_seed(3)
    predict_module.copy_bytes(model, x)
    after_probe = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after_probe)
