"""Loud warnings for the two silent ways a plain training loop misuses a projected model.

A user who trains a projected model with their own loop (``Adam(model.parameters())`` and
``F.cross_entropy``, as a PEFT user would) skips what `DIPLoss` and ``DIPTrainer`` do for them:

- the relative start (``DIPConfig(init_variance=None)``) is never calibrated, so every layer
  trains from the 0.01 placeholder, a large noise for one layer and none for another;
- the variances sit in the weights' parameter group, so they train at the weights' learning
  rate (and weight decay) instead of ``DIPConfig.variance_lr``: they barely move.

Both are detected where they happen (the projection's training-mode hook, and a global
optimizer step pre-hook that looks at each optimizer once) and reported once with the two-line
fix: ``dipnet.calibrate(model, batch)`` and ``torch.optim.X(dipnet.parameter_groups(model))``.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

if TYPE_CHECKING:
    from dipnet.config import DIPConfig
    from dipnet.projection import GaussianProjection

# Set on each trained variance parameter: the learning rate its model's config asks for.
_MARK = "_dipnet_variance_lr"

UNCALIBRATED_FIX = ("call dipnet.calibrate(model, batch) once before training (DIPLoss and "
                    "DIPTrainer do it on their first batch), or give DIPConfig(init_variance=...)")
GROUPS_FIX = "build it with torch.optim.X(dipnet.parameter_groups(model), lr=...)"


class DIPMisuseWarning(UserWarning):
    """A projected model is trained in a way that silently defeats DIPNet (see `dipnet.misuse`)."""


@dataclass
class Guard:
    """What the projections of one model share: whether their start is relative, the variance
    learning rate their config asks for, and which warnings were already given."""

    relative: bool
    variance_lr: float | None
    count: int = 0  # how many projections the model was given
    warned: set[str] = field(default_factory=set)

    @classmethod
    def for_config(cls, config: "DIPConfig", count: int) -> "Guard":
        """The guard for a model given ``count`` projections by ``config``."""
        return cls(relative=config.relative_init, variance_lr=config.variance_lr, count=count)


_checked_optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
_hook_handle: Any = None


def training_pass(proj: "GaussianProjection") -> None:
    """Called by a projection each time it samples in training mode (``mode="auto"``).

    Warns once per model if the model trains while its relative start is uncalibrated, and marks
    the variance parameter so that the optimizer check can recognise it.
    """
    guard: Guard | None = proj.__dict__.get("_guard")
    if guard is None:
        return
    raw = proj.raw_variance
    if raw.requires_grad and getattr(raw, _MARK, False) is False:
        # Marked here, not at construction: deepcopy and torch.load build new Parameters.
        setattr(raw, _MARK, guard.variance_lr)
        _ensure_optimizer_hook()
    if guard.relative and not proj.calibrated and "uncalibrated" not in guard.warned:
        guard.warned.add("uncalibrated")
        warnings.warn(
            "dipnet: this projected model is training with uncalibrated variances: its config "
            "starts them relative to each layer's activations (init_variance=None), but nothing "
            f"set them, so every layer starts at the 0.01 placeholder; {UNCALIBRATED_FIX}.",
            DIPMisuseWarning, stacklevel=4)


def _ensure_optimizer_hook() -> None:
    global _hook_handle
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_pre_hook(check_optimizer)


def check_optimizer(optimizer: torch.optim.Optimizer, args: Any = (), kwargs: Any = None) -> None:
    """Warn once per optimizer whose parameter groups mix trained DIPNet variances with other
    parameters, when the model's config gives the variances a learning rate of their own.

    Registered as a global optimizer step pre-hook (torch calls it with the optimizer and the
    step's arguments); returns None so the step runs unchanged.
    """
    if optimizer in _checked_optimizers:
        return
    _checked_optimizers.add(optimizer)
    for group in optimizer.param_groups:
        params = group["params"]
        marked = [p for p in params if getattr(p, _MARK, False) is not False and p.requires_grad]
        wanted = {getattr(p, _MARK) for p in marked} - {None}
        if marked and len(marked) < len(params) and wanted:
            lr = ", ".join(f"{v:g}" for v in sorted(wanted))
            warnings.warn(
                f"dipnet: the optimizer holds {len(marked)} DIPNet variance parameter(s) in one "
                f"group with {len(params) - len(marked)} other parameter(s): they train at the "
                f"weights' learning rate {group.get('lr')} (and weight decay "
                f"{group.get('weight_decay', 0)}) instead of their own variance_lr={lr}; "
                f"{GROUPS_FIX}.", DIPMisuseWarning, stacklevel=3)
            return


def missing_projections(projs: "dict[str, GaussianProjection]") -> int:
    """How many of the projections these ones were created with are no longer in the model
    (PEFT's own ``merge_and_unload`` drops those on LoRA layers); warns once per model if any.

    Args:
        projs: the projections found in a model (`dipnet.projections`).
    Returns:
        The number missing (0 for projections created without `dipnet.project`).
    """
    found: dict[int, list] = {}
    for proj in projs.values():
        guard = proj.__dict__.get("_guard")
        if guard is not None:
            found.setdefault(id(guard), [guard, 0])[1] += 1
    missing = 0
    for guard, n in found.values():
        if n < guard.count:
            missing += guard.count - n
            if "missing" not in guard.warned:
                guard.warned.add("missing")
                warnings.warn(
                    f"dipnet: {guard.count - n} of the model's {guard.count} DIPNet projections "
                    "are gone (PEFT's merge_and_unload drops those on LoRA layers); merge with "
                    "dipnet.hf.merge_and_unload(model), which keeps them.",
                    DIPMisuseWarning, stacklevel=3)
    return missing
