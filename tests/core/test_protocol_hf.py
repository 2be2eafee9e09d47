"""The study protocol under Hugging Face (issue 17, section 5): DIPTrainer's gradient
accumulation gives the big-batch step on every loss path with the stability term on.

tests/core/test_hf_trainer.py compares accumulated and big-batch steps for the NLL and barrier on
every loss path, and for the stability term on the model's own loss; here the stability term
goes through the other two paths (a compute_loss_func and the Trainer's label smoother), where
its sum is normalised by the accumulated batch's count too.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import dipnet  # noqa: E402
from test_hf_trainer import (_assert_same_params, _one_sgd_step,  # noqa: E402,F401
                             noise_from_content)


@pytest.mark.parametrize("path", ["compute_loss_func", "label_smoothing"])
def test_stability_under_accumulation_matches_big_batch_on_every_loss_path(
        tmp_path, noise_from_content, path):
    cfg = dipnet.DIPConfig(placement="blocks", m=noise_from_content, gamma=5.0,
                           init_variance=0.01)
    big = _one_sgd_step(tmp_path, "llama", 1, 4, cfg, True, path)
    small = _one_sgd_step(tmp_path, "llama", 2, 2, cfg, True, path)
    _assert_same_params(small, big)
    # The stability term moved the variances: the comparison is not vacuous.
    plain = _one_sgd_step(tmp_path, "llama", 1, 4, dipnet.DIPConfig(
        placement="blocks", m=noise_from_content, init_variance=0.01), True, path)
    var = [k for k in big if "dip_projection" in k]
    assert any((big[k] - plain[k]).abs().max() > 1e-4 for k in var)
