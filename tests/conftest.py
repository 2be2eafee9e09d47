"""Fixtures shared by the test modules: the small models (built by `small_models`)."""

from __future__ import annotations

from typing import Callable

import pytest
from torch import nn

from small_models import mlp


@pytest.fixture
def make_mlp() -> Callable[..., nn.Sequential]:
    """`small_models.mlp`: ``make_mlp(6, 16, 3, seed=0)`` builds a seeded 6-16-3 ReLU MLP."""
    return mlp

