"""One rule for the optimizer's parameter groups: a harness method's groups are
`dipnet.parameter_groups` (variances apart, no weight decay on them), with the run's weight
decay on the weights (issue 21: the harness had a second copy of the rule)."""

from __future__ import annotations

import pytest
import torch

import dipnet
from dipnet.experiments.zoo import methods

import small_models


def _ids(groups: list[dict]) -> list[tuple[list[int], dict]]:
    return [([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
            for g in groups]


@pytest.mark.parametrize("name,params", [("dipnet", {}), ("dipnet", {"variance_lr": None}),
                                         ("dipnet", {"variance_lr": 0.03}),
                                         ("dipnet", {"learn_variance": False}),
                                         ("fixed_noise", {})])
def test_a_dipnet_methods_groups_are_the_librarys(name: str, params: dict) -> None:
    method = methods.get_method(name, init_variance=0.05, **params)
    model = method.prepare_model(small_models.mlp(6, 16, 3, seed=0), num_train=10)
    model[0].weight.requires_grad_(False)  # a frozen weight stays out of the optimizer
    got = method.parameter_groups(model, weight_decay=0.01)
    want = dipnet.parameter_groups(model)
    want[0] = {"params": [p for p in want[0]["params"] if p.requires_grad],
               "weight_decay": 0.01}
    assert _ids(got) == _ids(want)
    assert len(got) == (1 if params.get("learn_variance") is False or name == "fixed_noise"
                        else 2)
    if len(got) == 2:
        assert got[1]["weight_decay"] == 0.0
        assert got[1].get("lr") == method.dip_config.variance_lr
    assert all(p is not model[0].weight for g in got for p in g["params"])
    torch.optim.AdamW(got, lr=1e-3)  # a valid optimizer set-up
