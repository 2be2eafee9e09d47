"""Batched Monte Carlo prediction (k trajectories stacked on the batch axis) is the same
estimator as the Python loop over trajectories, within the row budget; the shared clean-pass
summary equals the per-part computations it replaces."""

from __future__ import annotations

import math

import pytest
import torch

from dipnet.evaluation.ood import ood_scores, scores_from_summary
from dipnet.evaluation.predictors import (GPU_ROWS, Predictor, activation_size, default_rows,
                                          entropy, model_predictors,
                                          predict_log_probs, predict_samples, predict_summary,
                                          sample_logits_looped)
from test_evaluation_support import digits_split, dipnet_mlp


def _counting(pred: Predictor) -> tuple[Predictor, list[int]]:
    rows: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        rows.append(x.shape[0])
        return pred.logits_fn(x)

    return Predictor(pred.name, fn, pred.stochastic, pred.k, pred.chunk), rows


def test_batched_trajectories_are_the_looped_estimator():
    torch.set_num_threads(1)
    _, _, x, _ = digits_split()
    x = x[:50]
    _, samp = model_predictors(dipnet_mlp(), k=8)
    n = 400
    samp.chunk = 50 * 40  # 40 trajectories per pass: 10 passes
    torch.manual_seed(0)
    with torch.no_grad():
        batched = samp.sample_logits(x, n)
        looped = sample_logits_looped(samp, x, n)
    assert batched.shape == looped.shape == (n, 50, 10)
    # Same distribution: per-logit means within 5 standard errors of each other (measured: the
    # largest |z| of the 500 logits is 2.9 - 3.8 over seeds 0-4, as for 500 normal draws) ...
    se = ((batched.var(0) + looped.var(0)) / n).sqrt()
    z = (batched.mean(0) - looped.mean(0)).abs() / se.clamp_min(1e-6)
    assert z.max() < 5.0, z.max()
    # ... and the same spread. Measured: the ratio of the mean per-logit variances is
    # 0.994 - 1.002 over seeds 0-4 (n = 400 draws of 500 logits); 10 % is far outside that.
    ratio = (batched.var(0).mean() / looped.var(0).mean()).item()
    assert 0.9 < ratio < 1.1, ratio
    # Copies stacked in one pass draw independent noise: trajectory 0 and 1 of a pass differ
    # by as much as two looped trajectories do.
    d_batched = (batched[0] - batched[1]).pow(2).mean().item()
    d_looped = (looped[0] - looped[1]).pow(2).mean().item()
    assert d_batched > 0.5 * d_looped > 0


@pytest.mark.parametrize("chunk,b,k,expected", [
    (250, 100, 8, [200, 200, 200, 200]),      # 2 copies of the batch per pass
    (512, 100, 8, [500, 300]),                 # 5 + 3
    (1000, 300, 8, [900, 900, 600]),           # 3 + 3 + 2
    (100, 300, 4, [300, 300, 300, 300]),       # a budget below one batch: one copy per pass
])
def test_row_budget_is_respected(chunk, b, k, expected):
    _, samp = model_predictors(dipnet_mlp(), k=k)
    samp.chunk = chunk
    counted, rows = _counting(samp)
    x = digits_split()[2][:b]
    with torch.no_grad():
        out = counted.sample_logits(x)
    assert rows == expected and out.shape == (k, b, 10)


def test_default_budget_depends_on_the_device_and_the_activation_size():
    _, samp = model_predictors(dipnet_mlp(), k=16)
    counted, rows = _counting(samp)
    assert counted.chunk is None
    x = digits_split()[2][:300]
    rng = torch.random.get_rng_state()
    assert activation_size(samp.logits_fn, x) == 64  # the MLP 64-64-64-10: 64 per row
    assert torch.equal(rng, torch.random.get_rng_state())  # the probe draws no noise
    with torch.no_grad():
        counted.sample_logits(x)
    # The probe (7 rows), then 1e6 / 64 = 15,625 rows on a CPU: all 16 copies of 300 in one pass.
    assert rows == [7, 4800] and default_rows("cpu", 64) == 15625
    # A ResNet-8 on 28 x 28 images keeps 16 x 28 x 28 values per row: 79 rows, i.e. one
    # batch per pass; a GPU stacks everything up to GPU_ROWS.
    assert default_rows("cpu", 16 * 28 * 28) == 79 and default_rows("cuda:0", 16 * 28 * 28) == GPU_ROWS


def test_prediction_summary_matches_the_separate_computations():
    _, _, x, _ = digits_split()
    x = x[:120]
    det, samp = model_predictors(dipnet_mlp(), k=6)
    for p in (det, samp):
        torch.manual_seed(3)
        s = predict_summary(p, x, batch_size=50)
        torch.manual_seed(3)
        lp = predict_log_probs(p, x, batch_size=50)
        torch.manual_seed(3)
        samples = predict_samples(p, x, batch_size=50).float()
        assert torch.equal(s.log_probs, lp)  # same trajectories, same formula
        ent = entropy(torch.log_softmax(samples, -1)).mean(0)
        assert torch.allclose(s.trajectory_entropy, ent, atol=1e-6)
        var = samples.var(0).sum(-1) if p.stochastic else torch.zeros(len(x))
        assert torch.allclose(s.output_variance, var, atol=1e-6)
        torch.manual_seed(3)
        direct = ood_scores(p, x, batch_size=50)
        shared = scores_from_summary(s, p.stochastic)
        assert set(direct) == set(shared) == ({"msp", "entropy", "mutual_information"} if p.stochastic
                                              else {"msp", "entropy"})
        for key in direct:
            assert torch.allclose(torch.from_numpy(direct[key]), torch.from_numpy(shared[key]), atol=1e-6)
    assert samp.stochastic and s.output_variance.mean() > 0


def test_entropy_of_masked_classes_is_finite():
    log_p = torch.log(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(entropy(log_p), torch.tensor([math.log(2), 0.0]))
