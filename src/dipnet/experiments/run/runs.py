"""`load_run`: a finished run's model, config, data and method, loaded safely."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from dipnet._util import trust
from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import DatasetSplits, load_dataset, require_dataset_code_allowed
from dipnet.experiments.zoo.methods import Method, get_method
from dipnet.experiments.zoo.models import create_model


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate.

    Attributes:
        path: the run folder.
        config: its `RunConfig`.
        model: the trained model in eval mode, on the CPU (projections / dropout hooks in place).
        method: the `Method` (how the model predicts: ``predict_logits``, ``sample_logits``).
        data: the data set with the same train / val / test split as in training.
        metrics: the contents of metrics.json.
    """

    path: Path
    config: RunConfig
    model: nn.Module
    method: Method
    data: DatasetSplits
    metrics: dict[str, Any]


def load_run(run_dir: str | os.PathLike, data_dir: str | None = None,
             load_data: bool = True, allow_code: bool = False) -> LoadedRun:
    """Load a finished run written by `run_training`.

    Args:
        run_dir: the run folder (holding config.yaml, metrics.json, model.safetensors).
        data_dir: override the data folder recorded in the config.
        load_data: False skips loading the data set (``.data`` is then None); the model is
            rebuilt from the ``input_shape`` / ``num_classes`` recorded in metrics.json.
        allow_code: allow a config naming its model as ``package.module:factory`` (importing
            that module runs it). Without it such a run is refused unless this process already
            allowed that factory (`dipnet._util.trust`: ``--allow-code``, a ``--model`` flag).
    Returns:
        `LoadedRun`.
    Raises:
        UserError: the folder is not a finished run, its files are missing / corrupt, or it
            names user code that was not allowed.
    """
    path = Path(run_dir)
    cfg_path, metrics_path, weights_path = (path / "config.yaml", path / "metrics.json",
                                            path / "model.safetensors")
    for p in (cfg_path, metrics_path, weights_path):
        if not p.is_file():
            raise UserError(f"{path} is not a finished run: {p.name} is missing (train it with "
                            f"dipnet train --out {path}).")
    config = RunConfig.load(cfg_path)
    if not allow_code:
        trust.require_code_allowed(config.model, str(cfg_path))
        require_dataset_code_allowed(config.dataset, str(cfg_path))
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{metrics_path} is corrupt ({err}); re-run the training with "
                        "--overwrite.") from None
    if metrics.get("status") != "finished":
        raise UserError(f"the run in {path} has not finished; resume it with dipnet train "
                        f"--config {cfg_path} --out {path}.")
    if data_dir is not None:
        config.data_dir = data_dir
    data = (load_dataset(config.dataset, config.data_dir, config.val_fraction,
                         config.split_seed, config.max_train, config.max_val)
            if load_data else None)
    if data is not None:
        input_shape, num_classes = data.input_shape, data.num_classes
    else:
        input_shape = tuple(metrics.get("input_shape") or ())
        num_classes = int(metrics.get("num_classes") or 0)
        if not input_shape or num_classes < 1:
            raise UserError(f"{metrics_path} does not record input_shape / num_classes (a run "
                            "written by an older dipnet); load it with load_data=True.")
    model = create_model(config.model, input_shape, num_classes, **config.model_params)
    # the normalisation training used (recorded in metrics.json); older runs had none
    from dipnet.experiments.zoo.normalize import resolve_normalization, with_normalization

    normalize = (metrics["normalize"] if "normalize" in metrics else resolve_normalization(
        config.normalize, data.normalize if data is not None else None, input_shape))
    model = with_normalization(model, normalize, input_shape)
    method = get_method(config.method, **config.resolved_method_params())
    model = method.prepare_model(model, config, len(data.train) if data is not None
                                 else int(metrics.get("num_train", 1)))
    try:
        weights = load_file(str(weights_path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise UserError(f"{weights_path} is corrupt ({type(err).__name__}: {err}); re-run the "
                        "training with --overwrite.") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(f"{weights_path} does not fit the model of {cfg_path} "
                        f"({str(err).splitlines()[0]}).") from None
    model.eval()
    return LoadedRun(path, config, model, method, data, metrics)  # type: ignore[arg-type]
