"""The DIPNet training objective: m trajectories in one batched pass, barrier, stability."""

from __future__ import annotations

import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dipnet.batching import Batch, batch_size_of, repeat_batch  # re-exported: their old home
from dipnet.config import DIPConfig
from dipnet.inject import NotProjectedError, get_config, projections, unwrap
from dipnet.trajectories import chunk_sizes, run_trajectories


class BatchTooLargeError(ValueError):
    """m (or k) copies of a batch cannot fit in the memory of its device; nothing was allocated."""


class DIPLossWarning(UserWarning):
    """`DIPLoss` was used in a way that silently changes what it computes."""


# ---------------------------------------------------------------------- memory bound on copies
def available_bytes(device: torch.device) -> int | None:
    """Memory that can still be allocated on ``device``, in bytes; None where it cannot be told.

    CUDA: free device memory plus what the caching allocator holds unused. CPU: the kernel's
    MemAvailable, bounded by the cgroup (container) limit when there is one.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _batch_tensors(inputs: Any, batch_size: int) -> list[torch.Tensor]:
    # The tensors `repeat_batch` copies: those whose first axis is the batch.
    if isinstance(inputs, torch.Tensor):
        return [inputs] if inputs.dim() > 0 and inputs.shape[0] == batch_size else []
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _batch_tensors(v, batch_size)]
    if isinstance(inputs, (list, tuple)):
        return [t for v in inputs for t in _batch_tensors(v, batch_size)]
    return []


def check_copies_fit(inputs: Any, copies: int, what: str,
                     fix: str = "use fewer copies or a smaller batch") -> None:
    """Refuse ``copies`` stacked copies of a batch whose inputs alone exceed the free memory.

    The forward pass needs far more than its inputs, so this only catches the hopeless cases
    (``DIPConfig(m=10**6)``) with a clear message instead of an out-of-memory error.

    Args:
        inputs: the batch (tensor, mapping or sequence).
        copies: how many copies would be stacked along the batch axis.
        what: the caller and its count, for the message (``"DIPLoss with m=8"``).
        fix: what the user can change.
    Raises:
        BatchTooLargeError: the copies need more bytes than `available_bytes` reports.
    """
    tensors = _batch_tensors(inputs, batch_size_of(inputs))
    if copies <= 1 or not tensors:
        return
    need = copies * sum(t.numel() * t.element_size() for t in tensors)
    device = tensors[0].device
    free = available_bytes(device)
    if free is not None and need > free:
        raise BatchTooLargeError(
            f"{what}: {copies} copies of this batch need {need / 1e9:.3g} GB for the inputs "
            f"alone, more than the {free / 1e9:.3g} GB available on {device}; {fix}."
        )


def check_trajectories_fit(inputs: Any, config: DIPConfig) -> None:
    """`check_copies_fit` for the copies one `DIPLoss` pass stacks (m / chunks of them).

    Raises:
        BatchTooLargeError: naming m (and chunks) and how to lower them.
    """
    per_pass = max(chunk_sizes(config.m, config.chunks))
    check_copies_fit(inputs, per_pass, f"DIPLoss with m={config.m}"
                     + (f", chunks={config.chunks}" if config.chunks > 1 else ""),
                     "set DIPConfig.chunks (runs the m trajectories in that many passes, "
                     "m/chunks copies each), lower DIPConfig.m or the batch size")


@dataclass
class LossParts:
    """The DIPNet loss and its parts, for one mini-batch.

    Attributes:
        total: nll + barrier + gamma * stability; call ``.backward()`` on it.
        nll: mean negative log-likelihood over the m trajectories.
        barrier: the (scaled) variance barrier alpha*sum(lambda) - beta*sum(ln lambda).
        stability: the unscaled stability term (see `stability`: the unbiased variance across
            trajectories summed over classes, averaged over the counted examples / positions);
            0 when m = 1.
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

    def __repr__(self) -> str:
        # The parts as numbers and the outputs by shape: the default repr printed every logit.
        parts = ", ".join(f"{k}={v:.4g}" for k, v in self.as_floats().items())
        shape = tuple(self.outputs.shape) if isinstance(self.outputs, torch.Tensor) else None
        return f"LossParts({parts}, outputs=<shape {shape}>)"


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
    parts: list[tuple[torch.Tensor, int]] = []  # (variances, divisor)
    if reduction == "sum":
        # One set of ops per group of alike layers, not per layer: with many projections the
        # per-layer ops cost more time than the noise itself (benchmarks/bench_overhead.py).
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for p in projs:
            key = (p.raw_variance.device, p.raw_variance.dtype, p.parameterization,
                   p.variance_floor)
            groups.setdefault(key, []).append(p)
        for group in groups.values():
            raw = (torch.cat([p.raw_variance for p in group]) if len(group) > 1
                   else group[0].raw_variance)
            parts.append((group[0].variance_of(raw), 1))
    else:
        parts = [(p.variance, p.num_features) for p in projs]
    total: torch.Tensor | None = None
    for v, divisor in parts:
        layer = alpha * v.sum() - beta * torch.log(v).sum()
        if divisor != 1:
            layer = layer / divisor
        total = layer if total is None else total + layer.to(total.device)
    assert total is not None
    return total


def scaled_barrier(model: nn.Module, config: DIPConfig, num_train: int | None) -> torch.Tensor:
    """The barrier as it enters the loss: `barrier` with the config's weights and reduction,
    divided by the training-set size N under ``barrier_scaling="elbo"``.

    Raises:
        ValueError: ELBO scaling without a positive ``num_train``.
        NotProjectedError: the model has no projections.
    """
    b = barrier(model, *config.barrier_weights(), config.barrier_reduction)
    if config.barrier_scaling == "elbo":
        if num_train is None or num_train < 1:
            raise ValueError("barrier_scaling='elbo' divides the barrier by the training-set "
                             f"size: num_train must be >= 1, got {num_train}")
        b = b / float(num_train)
    return b


def dip_terms(model: nn.Module, nll: torch.Tensor, outputs: torch.Tensor, config: DIPConfig,
              num_train: int | None = None, mask: torch.Tensor | None = None, *,
              micro_batches: int = 1, stability_count: torch.Tensor | float | None = None
              ) -> LossParts:
    """The DIPNet objective of one batch: ``nll + barrier + gamma * stability``.

    The one definition `DIPLoss` and `dipnet.hf.DIPTrainer` both use: the barrier scaled by
    `scaled_barrier`, the stability term of `stability` on the logits or (``stability_on=
    "probs"``) the probabilities, over the positions in ``mask``.

    Args:
        model: the projected model (its variances give the barrier).
        nll: the negative log-likelihood, averaged over the m trajectories (a scalar).
        outputs: the trajectories' outputs, shape (m, B, ...); read only for gamma > 0, m > 1.
        config: alpha, beta, gamma, m, barrier_scaling, barrier_reduction, stability_on.
        num_train: the training-set size N (needed for ``barrier_scaling="elbo"``).
        mask: the positions the stability term counts (`counted_positions`); None: all.
        micro_batches: under gradient accumulation, the micro-batches of one optimizer step;
            the barrier, counted once per step, is split evenly over them.
        stability_count: under gradient accumulation, the counted positions of the whole
            accumulated batch: this micro-batch's stability sum is divided by it (so the parts
            add up to the big batch's mean) instead of by its own count.
    Returns:
        `LossParts`: ``total`` to call backward on; ``barrier`` (per optimizer step) and
        ``stability`` (this batch's own mean) as logged.
    Raises:
        ValueError: as `scaled_barrier`, or a mask of the wrong shape.
    """
    bar = scaled_barrier(model, config, num_train)
    if config.gamma > 0 and config.m > 1:
        f = outputs.softmax(-1) if config.stability_on == "probs" else outputs
        total_var, count = stability_sum(f, mask)
        stab = total_var / count.clamp_min(1)
        stab_loss = stab if stability_count is None else total_var / stability_count
    else:
        stab = stab_loss = nll.new_zeros(())
    bar_loss = bar if micro_batches == 1 else bar / micro_batches
    # gamma = 0 adds an exact 0: leaving it out saves two autograd ops per step.
    total = (nll + bar_loss + config.gamma * stab_loss if config.gamma > 0
             else nll + bar_loss)
    return LossParts(total=total, nll=nll, barrier=bar, stability=stab, outputs=outputs)


def stability(outputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The stability penalty: the unbiased variance across the m trajectories, summed over the
    last (class / vocabulary) axis, averaged over the positions that count.

    For classifier outputs (m, B, C) that is the mean over examples; for token outputs
    (m, B, T, V) the mean over the (B, T) positions where ``mask`` is True (`token_mask`: the
    positions whose label is not -100), so padding never enters it and gamma means the same for
    any sequence length. Outputs (m, B) with no class axis: the mean variance over examples.
    `DIPLoss` and `dipnet.hf.DIPTrainer` both use this definition.

    Args:
        outputs: shape (m, B, ...), m >= 2 (m < 2 gives 0).
        mask: boolean, shape ``outputs.shape[1:-1]``; None counts every position.
    Returns:
        A scalar tensor (0 when no position counts).
    Raises:
        ValueError: a mask of the wrong shape.
    """
    total, count = stability_sum(outputs, mask)
    return total / count.clamp_min(1)


def stability_sum(outputs: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of `stability`: (summed variance over the counted positions, their count).

    Under gradient accumulation the sum of each micro-batch is divided by the count of the
    whole accumulated batch, which gives the big-batch mean.
    """
    m = outputs.shape[0]
    per_position_shape = outputs.shape[1:] if outputs.dim() == 2 else outputs.shape[1:-1]
    if mask is not None and tuple(mask.shape) != tuple(per_position_shape):
        raise ValueError(f"stability mask has shape {tuple(mask.shape)}, expected "
                         f"{tuple(per_position_shape)} (the outputs without m and the class axis)")
    if m < 2:
        zero = outputs.new_zeros((), dtype=torch.float32)
        return zero, zero
    var = outputs.float().var(dim=0, unbiased=True)  # (B, ...)
    if outputs.dim() > 2:
        var = var.sum(-1)
    if mask is None:
        return var.sum(), var.new_tensor(float(var.numel()))
    mask = mask.to(device=var.device, dtype=torch.bool)
    return (var * mask).sum(), mask.sum().to(var.dtype)


def token_mask(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """The positions that count for `stability`: label not -100; for a causal LM (``shift``)
    position t predicts label t+1, so it counts when label t+1 does, and the last never does.

    Args:
        labels: integer labels, shape (B,) or (B, T).
        shift: True for a causal LM whose loss shifts the labels (`shifts_labels`).
    Returns:
        A boolean tensor of the labels' shape.
    """
    if not shift or labels.dim() < 2:
        return labels != -100
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., :-1] = labels[..., 1:] != -100
    return mask


def counted_positions(labels: Any, outputs: torch.Tensor, shift: bool) -> torch.Tensor | None:
    """The positions the stability term averages over: `token_mask` of integer labels shaped
    like the outputs' positions (``outputs.shape[1:-1]``); None (every position counts) for
    anything else, such as a classifier's per-example labels or float targets.

    Args:
        labels: the batch's labels (or targets), or None.
        outputs: the trajectories' outputs, shape (m, B, ..., C).
        shift: True for a causal LM (`shifts_labels`).
    """
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point()
            or tuple(labels.shape) != tuple(outputs.shape[1:-1])):
        return None
    return token_mask(labels, shift)


def shifts_labels(model: nn.Module) -> bool:
    """True for a Hugging Face causal LM (its own loss at position t targets label t+1).

    Needs no transformers import: a model that is not from transformers answers False.
    """
    if "transformers" not in sys.modules:
        return False
    inner = unwrap(model)
    if any(c.__name__ == "PeftModel" for c in type(inner).__mro__):
        inner = inner.get_base_model()
    if getattr(getattr(inner, "config", None), "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    if LOSS_MAPPING.get(getattr(inner, "loss_type", None)) is ForCausalLMLoss:
        return True
    return type(inner).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


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
    With ``DIPConfig.chunks = c > 1`` the m copies run in c passes under activation
    checkpointing (one more forward pass, one chunk's activations alive at a time), with the
    same loss and gradients (`dipnet.trajectories`).

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
        BatchTooLargeError: at call time, if m copies of the batch's inputs alone exceed the
            memory free on their device (before anything is allocated).
        NonFiniteInputError: at call time, inputs holding NaN or Inf (count and example named).
        ValueError: at call time, targets that do not fit (`check_targets`).
    Warns:
        DIPLossWarning: once per `DIPLoss`, if gamma > 0 and m > 1 but no projection samples
            (the model is in eval mode): the stability term is then identically 0. A warning,
            not an error, because computing the loss in eval mode (a validation loss) is
            legitimate; only its stability part is meaningless there.
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
        self._calibration_checked: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()

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
        return scaled_barrier(model, self.resolve_config(model), self.num_train)

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
        if not torch.compiler.is_compiling():
            _check_finite_inputs(inputs)  # before the calibration would turn NaN into variances
        if config.relative_init and model not in self._calibration_checked:
            # The first training batch sets the initial variances relative to each layer's
            # activation scale (DIPConfig.init_scale), unless that already happened.
            from dipnet.monitor import maybe_calibrate

            maybe_calibrate(model, inputs, config, **forward_kwargs)
            self._calibration_checked.add(model)
        m = config.m
        chunks = config.chunks
        b = batch_size_of(inputs)
        if not torch.compiler.is_compiling():  # reads /proc: not traceable
            check_trajectories_fit(inputs, config)
        if config.gamma > 0 and m > 1:
            self._warn_if_not_sampling(model)
        # chunks > 1: passes of m/chunks copies under activation checkpointing (trajectories.py)
        out, own_loss = run_trajectories(model, inputs, m, b, chunks, self.output_fn,
                                         forward_kwargs)
        if out.shape[0] != m * b:
            raise ValueError(
                f"model output has {out.shape[0]} rows, expected m*B = {m}*{b}; DIPLoss needs "
                "outputs with the batch on axis 0"
            )
        outputs = out.reshape(m, b, *out.shape[1:])
        if targets is None and self.criterion is None:
            if own_loss is None:
                raise ValueError("no targets given and the model returned no .loss")
            nll = own_loss
        else:
            if targets is None:
                raise ValueError("a criterion was given but no targets")
            if not torch.compiler.is_compiling():
                check_targets(targets, b, outputs, default_criterion=self.criterion is None)
            rep_targets = repeat_batch(targets, m, b)
            crit = self.criterion or _cross_entropy
            nll = crit(out, rep_targets)
            if nll.dim() > 0:
                nll = nll.mean()
        mask = (self._counted(model, inputs, targets, outputs) if config.gamma > 0 and m > 1
                else None)
        return dip_terms(model, nll, outputs, config, self.num_train, mask)

    @staticmethod
    def _counted(model: nn.Module, inputs: Batch, targets: torch.Tensor | None,
                 outputs: torch.Tensor) -> torch.Tensor | None:
        # The positions the stability term averages over: those whose target is not -100 (the
        # model's own labels, shifted for a causal LM, when no targets are given).
        shift = False
        labels = targets
        if labels is None and isinstance(inputs, Mapping):
            labels = inputs.get("labels")
            shift = shifts_labels(model)
        return counted_positions(labels, outputs, shift)

    def _warn_if_not_sampling(self, model: nn.Module) -> None:
        if getattr(self, "_warned_not_sampling", False):
            return
        if not any(p.sampling for p in projections(model).values()):
            self._warned_not_sampling = True
            warnings.warn(
                "DIPLoss: the model's projections are not sampling (eval mode or "
                "dipnet.deterministic), so the m trajectories are identical and the stability "
                "term is 0; call model.train() before computing the training loss.",
                DIPLossWarning, stacklevel=3)


def _check_finite_inputs(inputs: Batch) -> None:
    from dipnet._util.inputs import check_finite_inputs

    check_finite_inputs(inputs, "DIPLoss")


def check_targets(targets: Any, batch_size: int, outputs: torch.Tensor,
                  default_criterion: bool = True) -> None:
    """Refuse targets `DIPLoss` cannot use, in the user's terms (their batch size, not m x B).

    Every criterion needs one target per example (axis 0 = the batch). The default
    cross-entropy also needs class indices (an integer tensor of the outputs' shape without
    the class axis, values in 0..C-1 or -100 = ignored) or class probabilities (a float tensor
    of the outputs' shape, finite, >= 0, each row summing to 1).

    Args:
        targets: what was passed as targets.
        batch_size: B, the examples in the batch.
        outputs: the model outputs, shape (m, B, ..., C).
        default_criterion: whether the default cross-entropy is in use.
    Raises:
        ValueError: one line naming the problem and how to fix it.
    """
    if not isinstance(targets, torch.Tensor):
        if default_criterion:
            raise ValueError(f"DIPLoss: targets must be a tensor of class indices or class "
                             f"probabilities, got {type(targets).__name__}.")
        return
    count = targets.shape[0] if targets.dim() else None
    if count != batch_size:
        held = f"{count} examples" if count is not None else "a single 0-d value"
        raise ValueError(f"DIPLoss: the targets hold {held} but the batch has {batch_size}; "
                         "pass one target per example (targets[i] for inputs[i]).")
    if not default_criterion:
        return
    classes, positions = outputs.shape[-1], tuple(outputs.shape[1:-1])
    if targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"DIPLoss: targets are {str(targets.dtype).replace('torch.', '')}; "
                         "class indices must be an integer tensor (targets.long()).")
    if targets.is_floating_point():
        _check_soft_targets(targets, positions, tuple(outputs.shape[1:]))
        return
    if tuple(targets.shape) != positions:
        raise ValueError(f"DIPLoss: targets of shape {tuple(targets.shape)} do not fit the "
                         f"outputs: class indices need shape {tuple(positions)} (one per "
                         f"example{' and position' if len(positions) > 1 else ''}).")
    wrong = (targets != -100) & ((targets < 0) | (targets >= classes))
    if bool(wrong.any()):
        label = int(targets[wrong].reshape(-1)[0])
        raise ValueError(f"DIPLoss: label {label} is outside 0..{classes - 1} (the model has "
                         f"{classes} classes; -100 marks a target to ignore); check the labels "
                         "or the model's number of outputs.")


def _check_soft_targets(targets: torch.Tensor, positions: tuple[int, ...],
                        expected: tuple[int, ...]) -> None:
    if tuple(targets.shape) == positions:
        raise ValueError(f"DIPLoss: targets of shape {tuple(targets.shape)} are "
                         f"{str(targets.dtype).replace('torch.', '')}: class indices must be "
                         f"integers (targets.long()); class probabilities need shape "
                         f"{tuple(expected)}.")
    if tuple(targets.shape) != expected:
        raise ValueError(f"DIPLoss: soft targets of shape {tuple(targets.shape)} do not fit the "
                         f"outputs: class probabilities need shape {tuple(expected)}.")
    t = targets.detach().float()
    finite = torch.isfinite(t)
    # One host sync for the three checks.
    nonfinite, negative, off = torch.stack([
        (~finite).any(), (t < 0).any(),
        ((t.where(finite, 0).sum(-1) - 1).abs() > 1e-3).any()]).tolist()
    if nonfinite:
        raise ValueError("DIPLoss: the soft targets hold NaN or Inf; clean or drop those "
                         "examples first.")
    if negative:
        raise ValueError("DIPLoss: the soft targets hold negative values; class probabilities "
                         "must be >= 0 and sum to 1 over the classes.")
    if off:
        raise ValueError("DIPLoss: the soft targets do not sum to 1 over the classes (beyond "
                         "1e-3); normalise them (targets / targets.sum(-1, keepdim=True)).")


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dim() > 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100)
    return F.cross_entropy(logits, targets)
