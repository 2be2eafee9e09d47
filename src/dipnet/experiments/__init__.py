"""The experiment harness: data sets, model zoo, training methods, the training loop.

Everything here is a consumer of the core library (`dipnet.project`, `dipnet.DIPLoss`):

    from dipnet.experiments import RunConfig, run_training, load_run
    metrics = run_training(RunConfig(dataset="digits", model="mlp", method="dipnet"), "runs/x")
    run = load_run("runs/x")            # .model, .method, .data, .config, .metrics

Registries: `data.register_dataset`, `models.register_model`, `methods.register_method`.
"""

from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import (DatasetSplits, Split, list_datasets, load_dataset,
                                         register_dataset)
from dipnet.experiments.zoo.methods import Method, get_method, list_methods, register_method
from dipnet.experiments.zoo.models import create_model, list_models, register_model
from dipnet.experiments.run.runs import LoadedRun, load_run
from dipnet.experiments.run.metrics import evaluate_split
from dipnet.experiments.run.train import run_training

__all__ = [
    "DatasetSplits", "LoadedRun", "Method", "RunConfig", "Split", "create_model",
    "evaluate_split", "get_method", "list_datasets", "list_methods", "list_models",
    "load_dataset", "load_run", "register_dataset", "register_method", "register_model",
    "run_training",
]
