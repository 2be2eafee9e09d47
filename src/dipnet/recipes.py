"""Named DIPConfig recipes, each resting on a measurement committed in docs/results/.

One default cannot serve every use: from scratch and when fine-tuning a ViT the measured
evidence favours frozen variances, and for robustness a higher frozen level. A
recipe is a set of `DIPConfig` fields plus the measurement it rests on; `DIPConfig.recipe`
builds the config (`docs/recipe.md` says when to use which, per kind of model). The recipes
change when the evidence does; the README's quickstart uses ``"scratch"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """A named set of DIPConfig fields and the evidence behind it.

    Attributes:
        name: the recipe's name (``DIPConfig.recipe(name)``).
        fields: the DIPConfig fields the recipe sets (the rest keep their defaults).
        use: when to use it, in one line.
        evidence: the committed measurement it rests on (a path under docs/results/ and what
            it showed).
    """

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    use: str = ""
    evidence: str = ""


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        "scratch",
        {"placement": "layers", "learn_variance": False, "init_scale": 0.1},
        "training from scratch (MLP, small CNN / ResNet): frozen projections at a level "
        "relative to each layer's input; tune init_scale on validation data "
        "(dipnet tune --method fixed_noise)",
        "docs/results/variance_study/ (tuned20: Fashion-MNIST MLP, 20 trials per arm, 8 seeds: "
        "frozen beat learned by 0.43 pp with Gaussian-perturbed training data, p 0.008, and "
        "by 0.15 pp on clean data, p 0.007; the tuned frozen level was init_scale 0.14) and "
        "docs/results/dose_response/ (MLP, 3 seeds: frozen at 0.1 is within 0.1 pp of "
        "standard on clean data; learned variances reach the same accuracy-robustness "
        "trade-off as frozen ones, so learning adds nothing beyond the level; replicated "
        "tuning flips the sign of learned minus frozen, docs/results/tune_replicates/)"),
    Recipe(
        "finetune",
        {"placement": "layers", "learn_variance": False, "init_scale": 0.1},
        "fine-tuning a pretrained model: frozen projections at a level relative to each "
        "layer's input (learned variances moved the noise off the input and lost both "
        "accuracy and robustness on the fine-tuned ViT); compare with input_noise, which cost "
        "the least clean accuracy there",
        "docs/results/vit/ (a Hugging Face ViT pretrained on MNIST, fine-tuned on "
        "Fashion-MNIST, 3 seeds, every arm at its defaults: learned minus frozen -1.50 pp "
        "clean, -1.97 pp with perturbed training inputs, -19.8 pp under PGD L-inf 0.05; no arm "
        "beat standard training on clean accuracy), docs/results/text/ (all-MiniLM-L6-v2 "
        "fine-tuned on SpamAssassin, 3 seeds: learned minus frozen -4.5 pp at blocks and "
        "-26.3 pp at layers, where learned variances collapsed the classifier; frozen at "
        "blocks -0.9 pp against standard, n.s.) and docs/results/variance_study/ (ccexam "
        "MNIST CNN fine-tuned on Fashion-MNIST: there learned variances beat their frozen "
        "start by 0.52 pp, p 0.023, and no arm beat standard training either)"),
    Recipe(
        "robust",
        {"placement": "layers", "learn_variance": False, "init_scale": 0.3},
        "when robustness to attacks and corruptions matters more than the last tenth of a "
        "point of clean accuracy: frozen projections at a higher level; check the trade-off "
        "with dipnet tune --objective mix, and compare with input_noise tuned the same way "
        "(on the MLP it did better once every arm was tuned for robustness)",
        "docs/results/variance_study/ (tuned20 robustness: on clean-trained MLPs the "
        "projections added 10-11 pp under PGD L-inf 0.05 and 4 pp under corruptions) and "
        "docs/results/dose_response/ (frozen at 0.3: +7.0 pp PGD L-inf 0.05, +3.1 pp on "
        "corruptions, -0.22 pp clean, and 72 % certified at L2 0.25; at 1.0: +11.5 pp PGD "
        "for -0.94 pp clean, all at lr 1e-3) and docs/results/tune_objective/ (every arm "
        "tuned for accuracy + robustness: the projections +1.3-1.9 pp PGD, n.s.; input noise "
        "+4.7 pp)"),
)}


def recipe_fields(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The DIPConfig fields of recipe ``name`` with ``overrides`` applied.

    Raises:
        KeyError: an unknown recipe name (DIPConfig.recipe turns it into a DIPConfigError).
    """
    return {**RECIPES[name].fields, **overrides}
