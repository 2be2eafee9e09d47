"""The DIPNet training objective: m trajectories in one batched pass, barrier, stability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import DIPConfig
from .inject import NotProjectedError, get_config, projections

Batch = torch.Tensor | Mapping[str, Any]


@dataclass
class LossParts:
    """The DIPNet loss and its parts, for one mini-batch.

    Attributes:
        total: nll + barrier + gamma * stability; call ``.backward()`` on it.
        nll: mean negative log-likelihood over the m trajectories.
        barrier: the (scaled) variance barrier alpha*sum(lambda) - beta*sum(ln lambda).
        stability: the unscaled stability term (mean over examples of the summed unbiased
            variance across trajectories); 0 when m = 1.
        outputs: the model outputs, shape (m, B, ...) (the logits, or what ``output_fn`` picks).
    """

    total: torch.Tensor
    nll: torch.Tensor
    barrier: torch.Tensor
    stability: torch.Tensor
    outputs: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """The scalar parts as floats, for logging."""
        return {k: float(getattr(self, k).detach()) for k in ("total", "nll", "barrier",
                                                              "stability")}


def batch_size_of(inputs: Batch) -> int:
    """The batch size of a tensor or of the first tensor in a mapping.

    Raises:
        ValueError: if there is no tensor to read it from.
    """
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch axis; got a 0-d tensor")
        return inputs.shape[0]
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("inputs hold no tensor with a batch axis")


def repeat_batch(inputs: Any, m: int, batch_size: int | None = None) -> Any:
    """Stack ``m`` copies of a batch along axis 0, trajectory-major: row j*B + i is copy j of i.

    Tensors whose first axis is the batch are repeated; dicts/lists are handled recursively;
    anything else (flags, a scalar tensor) is passed through.
    """
    if m == 1:
        return inputs
    if batch_size is None:
        batch_size = batch_size_of(inputs)
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() > 0 and inputs.shape[0] == batch_size:
            return inputs.repeat(m, *([1] * (inputs.dim() - 1)))
        return inputs
    if isinstance(inputs, Mapping):
        # A plain dict even for a BatchEncoding: the result is only ever splatted into forward().
        return {k: repeat_batch(v, m, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(repeat_batch(v, m, batch_size) for v in inputs)
    return inputs


def barrier(model: nn.Module, alpha: float, beta: float, reduction: str = "sum") -> torch.Tensor:
    """alpha * sum(lambda) - beta * sum(ln lambda) over all projections' variances (unscaled).

    Args:
        model: a projected model.
        alpha, beta: the barrier weights.
        reduction: ``"sum"`` over every feature of every layer, or ``"mean"``: the mean over
            each layer's features, summed over layers (`DIPConfig.barrier_reduction`).
    Raises:
        NotProjectedError: if the model has no projections.
        ValueError: an unknown reduction.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    projs = list(projections(model).values())
    if not projs:
        raise NotProjectedError("model has no DIPNet projections; call dipnet.project first.")
    total = projs[0].raw_variance.new_zeros(())
    for p in projs:
        v = p.variance
        layer = alpha * v.sum() - beta * torch.log(v).sum()
        total = total + (layer / v.numel() if reduction == "mean" else layer)
    return total


def stability(outputs: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the unbiased variance across trajectories, summed over outputs.

    Args:
        outputs: shape (m, B, ...), m >= 2.
    Returns:
        A scalar tensor.
    """
    m = outputs.shape[0]
    if m < 2:
        return outputs.new_zeros(())
    var = outputs.float().var(dim=0, unbiased=True)  # (B, ...)
    return var.reshape(var.shape[0], -1).sum(dim=1).mean()


def _default_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"cannot find the logits in a model output of type {type(out).__name__}; "
            "pass output_fn= to DIPLoss"
        )
    return logits


class DIPLoss(nn.Module):
    """The DIPNet objective of paper Eq. 3-4, computed with ONE batched forward pass.

    ``loss_fn(model, inputs, targets)`` repeats the batch m times along axis 0 (each copy draws
    its own noise in every projection, so trajectories and examples are independent), runs the
    model once, and returns `LossParts`. Note that BatchNorm layers then see m x B rows.

    Args:
        config: the `DIPConfig` (alpha, beta, gamma, m, barrier_scaling, stability_on). Default:
            the config the model was projected with, looked up at call time.
        num_train: the training-set size N, needed for ``barrier_scaling="elbo"``.
        criterion: ``criterion(outputs, targets) -> per-example or mean loss``; default
            cross-entropy over the last axis (targets are class indices, -100 ignored).
            ``None`` with ``targets=None`` at call time uses the model's own ``.loss`` output
            (Hugging Face models given ``labels``).
        output_fn: picks the tensor the criterion and the stability term see from the model
            output; default: the tensor itself, or ``.logits``.
    Raises:
        ValueError: at construction if ``barrier_scaling="elbo"`` and ``num_train`` is missing.
    """

    def __init__(
        self,
        config: DIPConfig | None = None,
        num_train: int | None = None,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_train = num_train
        if config is not None:
            self._check_scaling(config)
        self.criterion = criterion
        self.output_fn = output_fn or _default_output

    def _check_scaling(self, config: DIPConfig) -> None:
        if config.barrier_scaling == "elbo" and (self.num_train is None or self.num_train < 1):
            raise ValueError(
                "barrier_scaling='elbo' divides the barrier by the training-set size: pass "
                "num_train=len(train_dataset) to DIPLoss, or use barrier_scaling='unscaled'."
            )

    def resolve_config(self, model: nn.Module) -> DIPConfig:
        """The config in use: the one given, else the one the model was projected with."""
        config = self.config or get_config(model)
        if config is None:
            raise NotProjectedError("model has no DIPNet projections; call dipnet.project first.")
        if self.config is None:
            self._check_scaling(config)
        return config

    def scaled_barrier(self, model: nn.Module) -> torch.Tensor:
        """The barrier as it enters the loss (divided by N under the ELBO scaling)."""
        config = self.resolve_config(model)
        b = barrier(model, config.alpha, config.beta, config.barrier_reduction)
        if config.barrier_scaling == "elbo":
            b = b / float(self.num_train)  # type: ignore[arg-type]
        return b

    def forward(self, model: nn.Module, inputs: Batch, targets: torch.Tensor | None = None,
                **forward_kwargs: Any) -> LossParts:
        """Run m trajectories in one pass and return the loss parts.

        Args:
            model: the projected model (in train mode for the projections to sample).
            inputs: a tensor (passed positionally) or a mapping (passed as keyword arguments).
            targets: per-example targets; ``None`` to use the model's own loss (the mapping then
                holds ``labels``, repeated along with the inputs).
            forward_kwargs: extra keyword arguments for the model, not repeated.
        """
        config = self.resolve_config(model)
        m = config.m
        b = batch_size_of(inputs)
        stacked = repeat_batch(inputs, m, b)
        if isinstance(stacked, Mapping):
            raw = model(**stacked, **forward_kwargs)
        else:
            raw = model(stacked, **forward_kwargs)
        out = self.output_fn(raw)
        if out.shape[0] != m * b:
            raise ValueError(
                f"model output has {out.shape[0]} rows, expected m*B = {m}*{b}; DIPLoss needs "
                "outputs with the batch on axis 0"
            )
        outputs = out.reshape(m, b, *out.shape[1:])
        if targets is None and self.criterion is None:
            loss = getattr(raw, "loss", None)
            if loss is None and isinstance(raw, Mapping):
                loss = raw.get("loss")
            if loss is None:
                raise ValueError("no targets given and the model returned no .loss")
            nll = loss
        else:
            if targets is None:
                raise ValueError("a criterion was given but no targets")
            rep_targets = repeat_batch(targets, m, b)
            crit = self.criterion or _cross_entropy
            nll = crit(out, rep_targets)
            if nll.dim() > 0:
                nll = nll.mean()
        bar = self.scaled_barrier(model)
        if config.gamma > 0 and m > 1:
            f = outputs.softmax(-1) if config.stability_on == "probs" else outputs
            stab = stability(f)
        else:
            stab = nll.new_zeros(())
        total = nll + bar + config.gamma * stab
        return LossParts(total=total, nll=nll, barrier=bar, stability=stab, outputs=outputs)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dim() > 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100)
    return F.cross_entropy(logits, targets)
