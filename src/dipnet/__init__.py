"""dipnet: Distributional Input Projection Networks for any PyTorch model.

Core API (needs only torch and safetensors)::

    model = dipnet.project(model, dipnet.DIPConfig(placement="layers"))
    loss_fn = dipnet.DIPLoss(num_train=len(train_set))
    parts = loss_fn(model, x, y); parts.total.backward()
    pred = dipnet.predict(model, x, k=0)      # deterministic; k=8 averages 8 samples

The Hugging Face integration lives in `dipnet.hf` and is imported on demand.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# `import dipnet` runs only this file: every name below is imported from its submodule on first
# use (PEP 562 module __getattr__). So `dipnet --help`, `dipnet.errors` and `dipnet._util.trust`
# do not pay for torch (2-4 s), and `dipnet.DIPConfig` still works as before.
_LAZY: dict[str, str] = {name: module for module, names in {
    "certify": ("Certificate", "certify", "smoothed_predict"),
    "config": ("DIPConfig", "DIPConfigError"),
    "inject": ("AlreadyProjectedError", "NotProjectedError", "ProjectionFileError",
               "deterministic", "get_config", "load_projections", "parameter_groups", "project",
               "projections", "remove", "sampling", "save_projections", "variance_parameters",
               "variances"),
    "misuse": ("DIPMisuseWarning",),
    "monitor": ("VarianceGradientMeter", "activation_variances", "calibrate",
                "variance_histograms", "variance_stats"),
    "objective": ("BatchTooLargeError", "DIPLoss", "DIPLossWarning", "LossParts", "barrier",
                  "repeat_batch", "stability", "token_mask"),
    "predict": ("NonFiniteInputError", "PredictInputError", "Prediction", "mc_logits",
                "predict"),
    "pretrained": ("from_pretrained", "load_state_dict", "save_pretrained", "summary",
                   "summary_dict"),
    "projection": ("GaussianProjection", "ProjectionShapeError"),
    "targeting": ("Target", "TargetError", "resolve_targets"),
    "_util.version": ("__version__",),
}.items() for name in names}

if TYPE_CHECKING:  # what type checkers and IDEs read
    from dipnet.certify import Certificate, certify, smoothed_predict
    from dipnet.config import DIPConfig, DIPConfigError
    from dipnet.inject import (
        AlreadyProjectedError,
        NotProjectedError,
        ProjectionFileError,
        deterministic,
        get_config,
        load_projections,
        parameter_groups,
        project,
        projections,
        remove,
        sampling,
        save_projections,
        variance_parameters,
        variances,
    )
    from dipnet.misuse import DIPMisuseWarning
    from dipnet.monitor import (
        VarianceGradientMeter,
        activation_variances,
        calibrate,
        variance_histograms,
        variance_stats,
    )
    from dipnet.objective import (
        BatchTooLargeError,
        DIPLoss,
        DIPLossWarning,
        LossParts,
        barrier,
        repeat_batch,
        stability,
        token_mask,
    )
    from dipnet.predict import (
        NonFiniteInputError,
        PredictInputError,
        Prediction,
        mc_logits,
        predict,
    )
    from dipnet.pretrained import (
        from_pretrained,
        load_state_dict,
        save_pretrained,
        summary,
        summary_dict,
    )
    from dipnet.projection import GaussianProjection, ProjectionShapeError
    from dipnet.targeting import Target, TargetError, resolve_targets

    from dipnet._util.version import __version__


def __getattr__(name: str) -> Any:
    """Import an exported name (or a submodule such as ``dipnet.inject``) on first use.

    Raises:
        AttributeError: ``name`` is neither an exported name nor a submodule.
    """
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the submodule exists but one of its imports is missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The type of this package's module object: it keeps a function named like its own
    submodule (`dipnet.predict`, `dipnet.certify`) from being replaced by that submodule.

    NB: importing a submodule binds it as an attribute of its package (``setattr(dipnet,
    "predict", <module>)``), whoever imports it (``from .predict import check_inputs`` inside
    dipnet does). Without this, ``dipnet.predict(model, x)`` would then be a call of a module.
    The submodule stays reachable as ``sys.modules["dipnet.predict"]`` and through
    ``from dipnet.predict import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


# Submodules a user calls into directly (the rest are reached through the names above).
_PUBLIC_MODULES = ("hf", "noise")


def __dir__() -> list[str]:
    """The public API only (tab completion, ``dir(dipnet)``): the exported names and the
    public submodules, not this file's helpers or the submodules imported so far."""
    return sorted(set(__all__) | set(_PUBLIC_MODULES))


__all__ = [
    "Certificate",
    "certify",
    "smoothed_predict",
    "BatchTooLargeError",
    "DIPLossWarning",
    "DIPMisuseWarning",
    "NonFiniteInputError",
    "PredictInputError",
    "token_mask",
    "AlreadyProjectedError",
    "DIPConfig",
    "DIPConfigError",
    "DIPLoss",
    "GaussianProjection",
    "LossParts",
    "NotProjectedError",
    "Prediction",
    "ProjectionFileError",
    "ProjectionShapeError",
    "Target",
    "TargetError",
    "barrier",
    "deterministic",
    "get_config",
    "load_projections",
    "mc_logits",
    "parameter_groups",
    "predict",
    "project",
    "projections",
    "remove",
    "repeat_batch",
    "resolve_targets",
    "sampling",
    "save_projections",
    "stability",
    "variance_parameters",
    "variances",
    "from_pretrained",
    "load_state_dict",
    "save_pretrained",
    "summary",
    "summary_dict",
    "__version__",
    "VarianceGradientMeter",
    "activation_variances",
    "calibrate",
    "variance_histograms",
    "variance_stats",
]
