"""One Monte Carlo rule: `dipnet.predict`, the evaluation `Predictor` and a training `Method`
average the k trajectories' probabilities the same way (`dipnet.predict.average_probs`).

Issue 21: the rule was written three times, so the accuracy in metrics.json (Method) and the
one in evaluation.json (Predictor) came from different code. These tests compared the copies
before they went and keep guarding that the three agree.
"""

from __future__ import annotations

from typing import Iterator

import torch

import dipnet
from dipnet.evaluation import predictors
from dipnet.experiments.zoo import methods
from dipnet.predict import average_log_probs, average_probs, entropy

import small_models

torch.set_num_threads(1)

K, B = 5, 7


def _model_and_inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    model = dipnet.project(small_models.mlp(6, 16, 4, seed=0), dipnet.DIPConfig(init_variance=0.5))
    return model.eval(), torch.randn(B, 6, generator=torch.Generator().manual_seed(1))


def _replay(trajectories: torch.Tensor) -> Iterator[torch.Tensor]:
    yield from trajectories


class _Replayed(methods.Method):
    """A method whose sampled trajectories are given (one per `sample_logits` call)."""

    default_prediction = "sampled"

    def __init__(self, trajectories: torch.Tensor) -> None:
        super().__init__()
        self._next = _replay(trajectories)

    def sample_logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return next(self._next)


def test_predict_predictor_and_method_average_the_same_trajectories_alike() -> None:
    model, x = _model_and_inputs()
    torch.manual_seed(3)
    pred = dipnet.predict(model, x, k=K, keep_samples=True)
    samples = pred.samples
    assert samples is not None and samples.shape == (K, B, 4)
    # The evaluation's predictor, one trajectory per pass, replaying the same logits.
    replay = _replay(samples)
    predictor = predictors.Predictor("sampled", lambda _: next(replay), stochastic=True, k=K,
                                     chunk=B)
    log_p = predictor.log_probs(x)
    probs = _Replayed(samples).predictive_probs(model, x, k=K)
    torch.testing.assert_close(log_p, pred.log_probs, rtol=0, atol=0)
    # Method averages in probability space: the same rule up to float32 round-off (measured
    # 6e-8 at most on this batch).
    torch.testing.assert_close(probs, pred.probs, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(pred.probs, samples[0].softmax(-1))  # k trajectories differ


def test_predict_and_the_evaluation_predictor_draw_the_same_trajectories_for_a_seed() -> None:
    model, x = _model_and_inputs()
    sampled = [p for p in predictors.model_predictors(model, k=K) if p.stochastic][0]
    torch.manual_seed(3)
    pred = dipnet.predict(model, x, k=K, keep_samples=True)
    torch.manual_seed(3)
    log_p = sampled.log_probs(x)  # one stacked pass of K * B rows, as predict
    torch.testing.assert_close(log_p, pred.log_probs, rtol=0, atol=0)


def test_average_probs_is_the_mean_of_the_softmax() -> None:
    logits = torch.randn(K, B, 4, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(average_probs(logits), logits.softmax(-1).mean(0))
    torch.testing.assert_close(average_log_probs(torch.log_softmax(logits, -1)),
                               logits.softmax(-1).mean(0).log())
    # A class masked with -inf in every trajectory keeps probability 0, not NaN.
    logits[..., 0] = -float("inf")
    assert bool((average_probs(logits)[..., 0] == 0).all())


def test_the_evaluation_entropy_is_the_prediction_entropy() -> None:
    logits = torch.randn(K, B, 4, generator=torch.Generator().manual_seed(2)) * 3
    logits[0, :, 1] = -float("inf")  # a masked class: 0 * log 0 counts 0, not NaN
    log_ps = torch.log_softmax(logits, -1)
    want = entropy(log_ps)
    assert bool(torch.isfinite(want).all())
    torch.testing.assert_close(predictors.entropy(log_ps), want, rtol=0, atol=0)
    torch.testing.assert_close(want, -(log_ps.exp() * log_ps).nan_to_num(0.0).sum(-1))
