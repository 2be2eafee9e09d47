"""`attacks.accuracy_curve`: the one rule every attack curve follows (FGSM / PGD and the ART
attacks): a deterministic prediction's curve is cumulative, a sampled one is scored per eps."""

from __future__ import annotations

import torch

from dipnet.evaluation.attacks import accuracy_curve, clean_correct
from dipnet.evaluation.predictors import deterministic_predictor, sampled_predictor

# Four points, all right when clean. Under attack at eps 0.1 points 0 and 1 break; at eps 0.2
# the (weaker, say, or differently started) attack breaks only point 2.
CLEAN = torch.tensor([True, True, True, True])
BROKEN = {0.1: torch.tensor([False, False, True, True]),
          0.2: torch.tensor([True, True, False, True])}


def _score(calls: list):
    def score(eps: float, still: torch.Tensor | None) -> torch.Tensor:
        calls.append((eps, None if still is None else still.tolist()))
        return BROKEN[eps].clone()
    return score


def test_a_deterministic_curve_keeps_every_point_broken_at_a_smaller_eps_broken() -> None:
    calls: list = []
    pred = deterministic_predictor(lambda x: x)
    curve = accuracy_curve(pred, [0.0, 0.1, 0.2], CLEAN, _score(calls))
    assert [(eps, ok.tolist()) for eps, ok in curve] == [
        (0.0, [True, True, True, True]),
        (0.1, [False, False, True, True]),
        (0.2, [False, False, False, True])]   # 0 and 1 stay broken: the curve never rises
    # the attack is told which points still stand (the broken ones need no second attack)
    assert calls == [(0.1, [True, True, True, True]), (0.2, [False, False, True, True])]


def test_a_sampled_curve_scores_each_eps_on_its_own() -> None:
    calls: list = []
    pred = sampled_predictor(lambda x: x, k=4)
    curve = accuracy_curve(pred, [0.0, 0.1, 0.2], CLEAN, _score(calls))
    assert [ok.tolist() for _, ok in curve] == [[True] * 4, BROKEN[0.1].tolist(),
                                                BROKEN[0.2].tolist()]
    assert calls == [(0.1, None), (0.2, None)]


def test_cumulative_false_turns_the_rule_off_for_a_deterministic_prediction_too() -> None:
    pred = deterministic_predictor(lambda x: x)
    curve = accuracy_curve(pred, [0.1, 0.2], CLEAN, _score([]), cumulative=False)
    assert [ok.tolist() for _, ok in curve] == [BROKEN[0.1].tolist(), BROKEN[0.2].tolist()]


def test_clean_correct_reads_the_given_log_probs_instead_of_predicting() -> None:
    pred = deterministic_predictor(lambda x: (_ for _ in ()).throw(AssertionError("predicted")))
    lp = torch.log_softmax(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), -1)
    got = clean_correct(pred, torch.zeros(3, 2), torch.tensor([0, 0, 0]), 2, lp)
    assert got.tolist() == [True, False, True]
