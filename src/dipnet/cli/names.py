"""Names shown in ``--help``, kept as plain tuples so that building the parser imports nothing.

The registries they mirror (`dipnet.experiments.zoo.data.list_datasets` and friends) import torch;
tests/cli/test_cli_startup.py checks that every tuple here equals its registry, so a new data set,
model or method that is not added here fails a test instead of going missing from ``--help``.
A name that is not listed still works: the commands check names against the registries when
they run, and their errors list what the registry holds.
"""

from __future__ import annotations

#: `dipnet.experiments.zoo.data.list_datasets()`
DATASETS = ("animal_mnist", "cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "mnist1d")
#: `dipnet.experiments.zoo.models.list_models()`
MODELS = ("ccexam_cnn", "hf_vit", "mlp", "resnet", "resnet20", "resnet8", "vit")
#: `dipnet.experiments.sweep.grid.METHODS` (report order; the registry's sorted list is the same set)
METHODS = ("standard", "dipnet", "sam", "rs", "input_noise", "dropout", "mixup", "cutmix",
           "cutout", "fixed_noise")
#: `dipnet.experiments.run.config.PERTURBATIONS` / `PERTURBATION_MODES` / `OPTIMIZERS` / `LR_SCHEDULES`
PERTURBATIONS = ("none", "gaussian", "fgsm")
PERTURBATION_MODES = ("fresh", "fixed")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
#: `dipnet.experiments.sweep.grid.EVALUATE_SUITES`
EVALUATE_SUITES = ("quick", "full", "none")
#: `dipnet.evaluation.suite.SUITES` and `PARTS`
EVAL_SUITES = ("full", "quick")
EVAL_PARTS = ("clean", "calibration", "attacks", "corruptions", "noise", "ood", "smoothness")
#: `dipnet.experiments.run.tracking.REPORT_TO`: Hugging Face's ``report_to`` names
REPORT_TO = ("tensorboard", "mlflow")
#: `dipnet.experiments.hf.text.METHODS` / `dipnet.experiments.hf.math.METHODS`
TEXT_METHODS = ("standard", "rs", "dipnet", "fixed_noise", "sam", "dropout")
MATH_METHODS = ("standard", "rs", "sam", "dipnet", "fixed_noise")
#: `dipnet.cli.sweep.DEMO_SWEEP["methods"]` (and configs/demo.yaml)
DEMO_METHODS = ("standard", "dipnet", "fixed_noise", "rs")
#: How long `dipnet demo` takes, as the README measured it (tests/cli/test_cli_grammar.py keeps the
#: two equal).
DEMO_TIME = "48-103 s on 2 idle cores"
