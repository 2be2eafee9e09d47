"""`VarianceMap`: the one map between a projection's raw parameters and its variances lambda.

A projection learns ``raw`` and reads ``lambda = g(raw) + floor``, with ``g = exp`` (a learned
log-variance: a step changes lambda by a fixed factor at every scale) or ``g = softplus``
(bounded gradients for large variances). The projection, its sampling op for
``torch.compile`` (`dipnet.noise`), the barrier and the file loader all read lambda through
this module, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F

Parameterization = Literal["softplus", "exp"]
PARAMETERIZATIONS: tuple[Parameterization, ...] = ("softplus", "exp")

# The defaults of `DIPConfig` and of a `GaussianProjection` built by hand: one constant each,
# so the two cannot drift apart again.
DEFAULT_PARAMETERIZATION: Parameterization = "exp"
DEFAULT_FLOOR = 1e-6


@dataclass(frozen=True)
class VarianceMap:
    """``lambda = g(raw) + floor`` with ``g`` = softplus or exp, its inverse and derivative.

    Args:
        parameterization: ``"exp"`` or ``"softplus"`` (see `DIPConfig.parameterization`).
        floor: added to every variance, > 0, so that ln(lambda) stays finite.
    Raises:
        ValueError: an unknown parameterization, or a floor that is not > 0.
    """

    parameterization: Parameterization = DEFAULT_PARAMETERIZATION
    floor: float = DEFAULT_FLOOR

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.parameterization!r}; expected "
                             "'softplus' or 'exp'")
        if not self.floor > 0:
            raise ValueError(f"variance_floor must be > 0 (it keeps ln(variance) finite), "
                             f"got {self.floor}")

    @classmethod
    def of(cls, parameterization: str, floor: float) -> "VarianceMap":
        """The map for a parameterization given as a plain string (a config field)."""
        return cls(cast(Parameterization, parameterization), float(floor))

    @property
    def softplus(self) -> bool:
        """True for the softplus parameterization."""
        return self.parameterization == "softplus"

    def variance(self, raw: torch.Tensor) -> torch.Tensor:
        """lambda for raw parameter values ``raw`` (differentiable, elementwise)."""
        base = F.softplus(raw) if self.softplus else torch.exp(raw)
        return base + self.floor

    def raw(self, variance: torch.Tensor | float) -> torch.Tensor:
        """The raw value that gives ``variance`` (the inverse of `variance`), float32.

        Raises:
            ValueError: a variance not above the floor.
        """
        excess = torch.as_tensor(variance, dtype=torch.float32) - self.floor
        if not bool((excess > 0).all()):
            raise ValueError(f"variances must exceed variance_floor={self.floor}")
        if self.softplus:
            # softplus^-1(y) = log(exp(y) - 1) = y + log(-expm1(-y)), finite for large y.
            return excess + torch.log(-torch.expm1(-excess))
        return torch.log(excess)

    def derivative(self, raw: torch.Tensor) -> torch.Tensor:
        """d lambda / d raw at ``raw``: sigmoid(raw) for softplus, exp(raw) for exp."""
        return torch.sigmoid(raw) if self.softplus else torch.exp(raw)
