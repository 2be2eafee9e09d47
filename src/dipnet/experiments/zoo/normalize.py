"""Input normalisation as the model's first layer: a run's ``normalize: {mean, std}`` setting.

A model that expects standardised inputs gets ``(x - mean) / std`` inside it, so everything
outside the model keeps working in [0, 1] pixel units: the data, the training perturbations, the
methods' input noise, every attack (epsilon stays in pixel units) and every corruption. The
normalisation comes from the run's ``normalize`` setting or, when that is not set, from the
``mean`` / ``std`` arrays of a user's .npz file (`dipnet.experiments.zoo.data.DatasetSplits`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from dipnet.experiments.zoo.data import check_normalization


class InputNormalization(nn.Module):
    """``(x - mean) / std`` with per-channel (or per-element, or scalar) statistics.

    The statistics are non-persistent buffers: the state dict holds only the wrapped model's
    weights, and the statistics come back from the run's settings when it is loaded.
    """

    def __init__(self, mean: Sequence[Any], std: Sequence[Any],
                 input_shape: Sequence[int]) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        m, s = (torch.as_tensor(v, dtype=torch.float32) for v in (mean, std))
        self.register_buffer("mean", _broadcastable(m, shape), persistent=False)
        self.register_buffer("std", _broadcastable(s, shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A model behind its input normalisation: ``net(normalize(x))``. Weights live under
    ``net.`` in the state dict."""

    def __init__(self, net: nn.Module, normalize: InputNormalization) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.net(self.normalize(x), *args, **kwargs)


def _broadcastable(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    # one value; one per channel (C,) -> (C, 1, 1) for images; or the whole example shape
    if v.numel() == 1:
        return v.reshape(())
    if tuple(v.shape) == shape:
        return v
    return v.reshape((shape[0],) + (1,) * (len(shape) - 1))


def resolve_normalization(setting: dict[str, Any] | None, data_normalize: dict | None,
                          input_shape: Sequence[int]) -> dict[str, list] | None:
    """The normalisation a run uses: its own ``normalize`` setting, else its data's, else None.

    Raises:
        UserError: statistics whose shape does not fit ``input_shape`` (see
            `dipnet.experiments.zoo.data.check_normalization`).
    """
    chosen = setting if setting else data_normalize
    if not chosen:
        return None
    return check_normalization(chosen["mean"], chosen["std"], tuple(input_shape),
                               "the run's normalize setting" if setting else "the data set")


def with_normalization(model: nn.Module, normalize: dict[str, list] | None,
                       input_shape: Sequence[int]) -> nn.Module:
    """``model`` behind an `InputNormalization` (``model`` itself when ``normalize`` is None)."""
    if not normalize:
        return model
    return NormalizedModel(model, InputNormalization(normalize["mean"], normalize["std"],
                                                     input_shape))
