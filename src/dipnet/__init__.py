"""dipnet: Distributional Input Projection Networks for any PyTorch model.

Core API (needs only torch and safetensors)::

    model = dipnet.project(model, dipnet.DIPConfig(placement="layers"))
    loss_fn = dipnet.DIPLoss(num_train=len(train_set))
    parts = loss_fn(model, x, y); parts.total.backward()
    pred = dipnet.predict(model, x, k=0)      # deterministic; k=8 averages 8 samples

The Hugging Face integration lives in `dipnet.hf` and is imported on demand.
"""

from .config import DIPConfig, DIPConfigError
from .inject import (
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
from .monitor import (
    VarianceGradientMeter,
    activation_variances,
    calibrate,
    variance_histograms,
    variance_stats,
)
from .objective import (
    BatchTooLargeError,
    DIPLoss,
    DIPLossWarning,
    LossParts,
    barrier,
    repeat_batch,
    stability,
    token_mask,
)
from .predict import NonFiniteInputError, PredictInputError, Prediction, mc_logits, predict
from .pretrained import (
    from_pretrained,
    load_state_dict,
    save_pretrained,
    summary,
    summary_dict,
)
from .projection import GaussianProjection, ProjectionShapeError
from .targeting import Target, TargetError, resolve_targets

from ._version import __version__  # noqa: E402 (installed metadata, else the source)

__all__ = [
    "BatchTooLargeError",
    "DIPLossWarning",
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
