"""Which modules get a projection, and how many features their input has.

All of this runs before the model is touched, so a bad config never leaves a half-projected
model behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from dipnet.config import DIPConfig

# Layers whose *input* a projection precedes under placement="layers". Attention and recurrent
# modules are projected as a whole: nn.MultiheadAttention does not call its own out_proj as a
# module, and nn.LSTM has no sub-layers, so their insides are never targets.
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)
_OPAQUE_TYPES = (nn.MultiheadAttention, nn.RNNBase)


class TargetError(ValueError):
    """A target pattern matched nothing, or matched a module that cannot be projected."""


@dataclass(frozen=True)
class Target:
    """A module to project: its name, the feature axis and size, and input vs output side.

    ``batched_ndim`` is set for a conv layer (or a block that starts with one): the number of
    axes of a batched input, so an input with one axis fewer is read as one unbatched example.
    """

    name: str
    num_features: int
    feature_dim: int
    on: str = "input"
    batched_ndim: int | None = None


def _is_hf_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D (GPT-2's "linear" layers): weight is (in, out).
    return type(module).__name__ == "Conv1D" and hasattr(module, "nx")


def is_layer(module: nn.Module) -> bool:
    """True for the layers that placement="layers" projects (Linear, Conv, RNN, attention)."""
    return isinstance(module, (nn.Linear, nn.Bilinear) + _CONV_TYPES + _OPAQUE_TYPES) or (
        _is_hf_conv1d(module)
    )


def input_features(module: nn.Module) -> tuple[int, int] | None:
    """(feature_dim, num_features) of a module's input, or None if it cannot be told.

    Known layers answer directly; any other module (a transformer or residual block) answers
    with its first descendant, in registration order, that is a known layer or a norm.
    """
    layer = input_layer(module)
    return None if layer is None else _own_input_features(layer)


def input_layer(module: nn.Module) -> nn.Module | None:
    """The module that decides `input_features`: ``module`` itself if it is a known layer or
    norm, else its first such descendant in registration order; None if there is none."""
    if _own_input_features(module) is not None:
        return module
    if isinstance(module, nn.Embedding):
        return None
    for child in module.children():
        found = input_layer(child)
        if found is not None:
            return found
    return None


def batched_ndim(module: nn.Module) -> int | None:
    """Axes of a batched input for a conv layer, or a block whose input layer is one (3 for
    Conv1d: (N, C, L)); None for layers that take no unbatched input, or whose features are last.
    """
    layer = input_layer(module)
    if isinstance(layer, _CONV_TYPES):
        return len(layer.kernel_size) + 2  # (N, C, *spatial)
    return None


def _own_input_features(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return -1, module.in_features
    if isinstance(module, nn.Bilinear):
        return -1, module.in1_features
    if isinstance(module, _CONV_TYPES):
        return 1, module.in_channels
    if _is_hf_conv1d(module):
        return -1, int(module.weight.shape[0])
    if isinstance(module, nn.MultiheadAttention):
        return -1, module.embed_dim  # (L, N, E) or (N, L, E): features last either way
    if isinstance(module, nn.RNNBase):
        return -1, module.input_size
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return -1, module.normalized_shape[0]
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
        return 1, getattr(module, "num_features", None) or module.num_channels
    if type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
        if module.weight.dim() == 1:
            return -1, int(module.weight.shape[0])
    return None


def _matches(name: str, patterns: str | list[str] | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _type_matches(module: nn.Module, types: list | None) -> bool:
    if not types:
        return False
    for t in types:
        if isinstance(t, str):
            if type(module).__name__ == t:
                return True
        elif isinstance(module, t):
            return True
    return False


def _find_blocks(model: nn.Module) -> list[str]:
    """Names of the elements of every ModuleList / Sequential whose >= 2 elements share a class.

    Only the outermost such containers count, so a block's own inner stacks are not blocks.
    """
    blocks: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            children = list(module.named_children())
            classes = {type(c) for _, c in children}
            if len(children) >= 2 and len(classes) == 1 and any(
                True for _ in children[0][1].children()
            ):
                blocks.extend(f"{prefix}{n}" for n, _ in children)
                return
        for n, child in module.named_children():
            visit(child, f"{prefix}{n}.")

    visit(model, "")
    return blocks


def find_input_embedding(model: nn.Module) -> str | None:
    """Name of the token embedding of a token model (``get_input_embeddings`` if it exists)."""
    getter = getattr(model, "get_input_embeddings", None)
    emb = None
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            emb = None
    # Vision models answer get_input_embeddings() with a patch embedding (a conv): their input
    # is pixels, projected in front of the first layer like any other float input.
    if emb is not None and not isinstance(emb, nn.Embedding):
        return None
    for name, module in model.named_modules():
        if emb is not None and module is emb:
            return name
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            return name
    return None


def _candidates(model: nn.Module, limit: int = 12) -> str:
    names = [n for n, m in model.named_modules() if n and is_layer(m)]
    more = "" if len(names) <= limit else f", ... ({len(names)} in all)"
    return ", ".join(names[:limit]) + more


def resolve_targets(model: nn.Module, config: DIPConfig) -> list[Target]:
    """Decide every projection `project` would insert, without touching the model.

    Returns:
        The targets, in module registration order.
    Raises:
        TargetError: if nothing matches, a pattern matches nothing, or a matched module's
            input size cannot be determined. The message names candidate modules.
    """
    modules = dict(model.named_modules())
    chosen: dict[str, Target] = {}

    def add(name: str, on: str = "input") -> None:
        target = _target_of(model, modules[name], name, on, config.exclude_modules)
        if target is not None:
            chosen[name] = target

    for name, on in _placement_names(model, modules, config.placement):
        add(name, on)

    explicit_hits = 0
    if config.target_modules is not None or config.target_types:
        for name, module in modules.items():
            if _matches(name, config.target_modules) or _type_matches(module, config.target_types):
                explicit_hits += 1
                if name not in chosen:
                    add(name)
        if explicit_hits == 0:
            raise TargetError(
                f"target_modules={config.target_modules!r} / target_types={config.target_types!r} "
                f"matched no module; candidates: {_candidates(model)}"
            )

    if not chosen:
        raise TargetError(
            f"DIPConfig(placement={config.placement!r}, exclude_modules="
            f"{config.exclude_modules!r}) leaves no module to project; candidates: "
            f"{_candidates(model)}"
        )
    order = {name: i for i, name in enumerate(modules)}
    return sorted(chosen.values(), key=lambda t: order[t.name])


def _target_of(model: nn.Module, module: nn.Module, name: str, on: str,
               exclude: str | list[str] | None) -> Target | None:
    """The projection of module ``name`` (at its ``on``: input or output), None if
    ``exclude`` (`DIPConfig.exclude_modules`) names it.

    Raises:
        TargetError: an embedding's input (token ids), or an input size that cannot be told.
    """
    if _matches(name, exclude):
        return None
    if on == "input" and isinstance(module, nn.Embedding):
        raise TargetError(
            f"module '{name}' is an nn.Embedding: its input is token ids, which cannot be "
            "projected. Use placement='input' (projects the embedding output) or 'blocks'."
        )
    if on == "output":
        emb = module
        found = (-1, emb.embedding_dim) if isinstance(emb, nn.Embedding) else None
    else:
        found = input_features(module)
    if found is None:
        raise TargetError(
            f"cannot tell the input size of module '{name}' ({type(module).__name__}); "
            f"target a Linear/Conv layer or a block that contains one, e.g. {_candidates(model)}"
        )
    return Target(name=name, feature_dim=found[0], num_features=found[1], on=on,
                  batched_ndim=batched_ndim(module) if on == "input" else None)


def _placement_names(model: nn.Module, modules: dict[str, nn.Module],
                     placement: str) -> list[tuple[str, str]]:
    """(module name, "input" or "output") of every projection ``placement`` asks for
    (none for ``"custom"``: the explicit targets name them).

    Raises:
        TargetError: ``"blocks"`` without repeated blocks, ``"input"`` without a layer.
    """
    if placement == "layers":
        names: list[tuple[str, str]] = []
        opaque: list[str] = []
        for name, module in modules.items():
            if any(o == "" or name.startswith(o + ".") for o in opaque):
                continue
            if isinstance(module, _OPAQUE_TYPES):
                opaque.append(name)
            if is_layer(module):
                names.append((name, "input"))
        return names
    if placement == "blocks":
        blocks = _find_blocks(model)
        if not blocks:
            raise TargetError(
                "placement='blocks' found no repeated blocks (a ModuleList/Sequential of >= 2 "
                "modules of one class). Use placement='layers', or name the blocks with "
                f"placement='custom', target_modules=[...]; layers here: {_candidates(model)}"
            )
        return [(name, "input") for name in blocks]
    if placement == "input":
        emb_name = find_input_embedding(model)
        if emb_name is not None:
            return [(emb_name, "output")]
        first = next((n for n, m in modules.items() if is_layer(m)), None)
        if first is None:
            raise TargetError(
                "placement='input' found no Linear/Conv/recurrent/attention layer to project "
                "the input of; name one with placement='custom', target_modules=[...]."
            )
        return [(first, "input")]
    return []


def iter_names(targets: Iterable[Target]) -> list[str]:
    """The module names of `targets`."""
    return [t.name for t in targets]
