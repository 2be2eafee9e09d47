"""Merging a PEFT model's LoRA adapters without losing the DIPNet projections on them.

PEFT's ``merge_and_unload()`` replaces each LoRA layer by its base layer. A projection attached to
a LoRA layer (``placement="layers"`` projects the LoRA layer as a whole) goes with the replaced
module, silently: GPT-2 with LoRA on ``c_attn`` keeps 7 of its 9 projections. `merge_and_unload`
here moves each such projection onto the base layer that takes the LoRA layer's place.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from dipnet.errors import UserError
from dipnet.inject import _CONFIG_ATTR, get_config, projections
from dipnet.misuse import DIPMisuseWarning


def merge_and_unload(model: nn.Module, **merge_kwargs: Any) -> nn.Module:
    """``model.merge_and_unload()`` for a projected PEFT model, keeping every projection.

    Args:
        model: a ``peft.PeftModel`` projected with ``dipnet.hf.project_model``.
        merge_kwargs: passed to PEFT's ``merge_and_unload`` (``safe_merge``, ``adapter_names``).
    Returns:
        The merged base model (a plain ``transformers`` model), holding the same projections,
        with the same variances, under the base model's module names, and the same `DIPConfig`.
    Raises:
        UserError: ``model`` is not a PEFT model.
    Warns:
        DIPMisuseWarning: a projection found no module to move to (it is then lost).
    """
    if not callable(getattr(model, "merge_and_unload", None)) or not callable(
            getattr(model, "get_base_model", None)):
        raise UserError(f"merge_and_unload needs a peft.PeftModel, got {type(model).__name__}; "
                        "a plain model has no adapters to merge.")
    config = get_config(model)
    base = model.get_base_model()
    prefix = next(name for name, module in model.named_modules() if module is base)
    prefix = f"{prefix}." if prefix else ""
    before = projections(model)
    merged = model.merge_and_unload(**merge_kwargs)
    kept = {id(p) for p in projections(merged).values()}
    modules = dict(merged.named_modules())
    lost = []
    for name, proj in before.items():
        if id(proj) in kept:
            continue
        short = name[len(prefix):] if name.startswith(prefix) else name
        host = modules.get(short)
        if host is None:
            lost.append(name)
            continue
        proj.detach()  # from the LoRA layer, which is no longer in the model
        proj.attach(host)
    if lost:
        warnings.warn(f"dipnet: {len(lost)} projection(s) found no module after the merge and are "
                      f"lost (e.g. {lost[0]!r})", DIPMisuseWarning, stacklevel=2)
    if config is not None:
        object.__setattr__(merged, _CONFIG_ATTR, config)
    return merged
