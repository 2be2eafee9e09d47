"""Shared pieces of the Hugging Face experiments: baselines (SAM, randomized smoothing), the
DIPNet arms (learned and frozen, per placement), seeds, atomic result files, summary statistics
and the headline tests with their Holm correction."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from dipnet._util.fileio import atomic_write_json, atomic_write_text
from transformers import Trainer

from dipnet.config import DIPConfig
from dipnet.errors import UserError
from dipnet.experiments.run.rng import seed_everything  # noqa: F401  (text and math import it from here)
from dipnet.experiments.report.stats import format_mean_std, holm, paired_by_seed, summarize
from dipnet.inject import project, variance_parameters


#: The projected methods: DIPNet with learned variances and the same projections frozen at their
#: start (the fixed-noise control). Each runs once per placement, as the arm ``method@placement``.
PROJECTED = ("dipnet", "fixed_noise")
PLACEMENTS = ("blocks", "layers", "input")


def split_arm(arm: str) -> tuple[str, str | None]:
    """(method, placement) of an arm name: ``"dipnet@layers"`` -> ("dipnet", "layers"),
    ``"rs"`` -> ("rs", None)."""
    method, _, placement = arm.partition("@")
    return method, placement or None


def expand_arms(methods: Sequence[str], placements: Sequence[str],
                known: Sequence[str]) -> list[str]:
    """The arms of a sweep, in the order given: each projected method once per placement
    (``dipnet`` with placements blocks, layers -> ``dipnet@blocks``, ``dipnet@layers``); an
    explicit ``dipnet@layers`` stays as written; every other method is its own arm.

    Raises:
        UserError: an unknown method or placement, a placement on a method without
            projections, or no placement at all.
    """
    if not placements:
        raise UserError("--dip-placement is empty; give blocks, layers or input.")
    for p in placements:
        if p not in PLACEMENTS:
            raise UserError(f"unknown DIPNet placement {p!r}; choose from {', '.join(PLACEMENTS)}.")
    arms: list[str] = []
    for m in methods:
        method, placement = split_arm(m)
        if method not in known:
            raise UserError(f"unknown method {method!r}; choose from {', '.join(known)} "
                            f"(a projected one may name its placement: dipnet@layers).")
        if placement is not None and method not in PROJECTED:
            raise UserError(f"{m!r}: only {' and '.join(PROJECTED)} take a placement "
                            f"(@{placement}); write {method}.")
        if placement is not None and placement not in PLACEMENTS:
            raise UserError(f"{m!r}: unknown placement {placement!r}; choose from "
                            f"{', '.join(PLACEMENTS)}.")
        new = ([m] if placement or method not in PROJECTED
               else [f"{method}@{p}" for p in placements])
        arms += [a for a in new if a not in arms]
    return arms


def dip_config(arm: str, s: Any) -> DIPConfig:
    """The DIPConfig of a projected arm under today's recipe (`DIPConfig.recipe`'s
    ``finetune`` fields): start ``s.dip_init_scale`` times each layer input's per-feature
    variance (calibrated on the first batch by `dipnet.hf.DIPTrainer`; an absolute start when
    ``s.dip_init_variance`` is set), log-variance parameterization, own learning rate
    ``s.dip_variance_lr``; ``fixed_noise`` is the same config with ``learn_variance=False``.

    Args:
        arm: ``dipnet@<placement>`` or ``fixed_noise@<placement>``.
        s: the experiment's settings (fields ``dip_*``).
    Raises:
        UserError: an arm without projections or placement.
    """
    method, placement = split_arm(arm)
    if method not in PROJECTED or placement is None:
        raise UserError(f"arm {arm!r} has no DIPNet projections; expected dipnet@<placement> "
                        "or fixed_noise@<placement>.")
    return DIPConfig.recipe("finetune", placement=placement, init_scale=s.dip_init_scale,
                            init_variance=s.dip_init_variance,
                            parameterization=s.dip_parameterization,
                            variance_lr=s.dip_variance_lr, m=s.dip_m,
                            learn_variance=method == "dipnet")


def dip_trainer(arm: str, s: Any, num_train: int, **common: Any) -> Trainer:
    """Project ``common["model"]`` for ``arm`` (`dip_config`) and return the
    `dipnet.hf.DIPTrainer` that trains it with the DIPNet objective (``common``: the Trainer's
    own arguments, ``model`` among them)."""
    from dipnet.hf import DIPTrainer, project_model

    config = dip_config(arm, s)
    project_model(common["model"], config)
    return DIPTrainer(**common, dip_config=config, num_train=num_train,
                      variance_lr=config.variance_lr)


def arm_order(arms: Iterable[str], methods: Sequence[str]) -> list[str]:
    """The arms sorted for a report: by method (the order of ``methods``), then placement."""
    rank = {m: i for i, m in enumerate(methods)}
    return sorted(set(arms), key=lambda a: (rank.get(split_arm(a)[0], len(rank)), a))


def headline_tests(values: Mapping[str, Mapping[Any, float]]) -> list[dict[str, Any]]:
    """The study's headline tests on one metric, Holm-corrected together.

    The family: every arm against ``standard``, and at each placement the learned arm against
    the frozen one (``dipnet@p`` - ``fixed_noise@p``), each a paired test by seed
    (`stats.paired_by_seed`). Args: ``values`` maps arm -> {seed: value}. Returns one dict per
    test: ``a``, ``b``, the PairedTest's fields, and ``p_holm`` (`stats.holm` over the family;
    NaN where the test is undefined).
    """
    pairs: list[tuple[str, str]] = []
    if "standard" in values:
        pairs += [(a, "standard") for a in values if a != "standard"]
    for a in values:
        method, placement = split_arm(a)
        frozen = f"fixed_noise@{placement}"
        if method == "dipnet" and frozen in values:
            pairs.append((a, frozen))
    tests = [{"a": a, "b": b, **paired_by_seed(values[a], values[b]).to_dict()}
             for a, b in pairs]
    for t, p in zip(tests, holm([t["t_p"] for t in tests])):
        t["p_holm"] = p
    return tests


def headline_table(tests: Sequence[Mapping[str, Any]], scale: float = 100.0,
                   unit: str = "pp") -> list[str]:
    """Markdown lines of `headline_tests`: difference with its 95 % CI, raw and Holm p."""
    from dipnet.experiments.report.stats import format_p, format_paired_p

    lines = [f"| comparison | difference ({unit}, paired by seed) | 95 % CI | pairs | p (paired t) "
             "| p (Holm) |", "| --- | --- | --- | --- | --- | --- |"]
    for t in tests:
        ci = (f"[{t['ci_low'] * scale:+.2f}, {t['ci_high'] * scale:+.2f}]"
              if math.isfinite(t["ci_low"]) else "-")
        lines.append(f"| {t['a']} - {t['b']} | {t['mean_diff'] * scale:+.2f} | {ci} | {t['n']} | "
                     f"{format_paired_p(t, star=False)} | {format_p(t['p_holm'])} |")
    return lines


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + os.replace): a crash never leaves half a file."""
    atomic_write_json(path, data, indent=2, sort_keys=True)


write_text = atomic_write_text


def summary_of(values: Iterable[float | None]) -> dict[str, Any]:
    """`dipnet.experiments.report.stats.summarize` of the values as a dict (n, mean, sample std, SEM,
    t interval; the spread is NaN for one value, a failed run (None / NaN) is left out), plus
    ``values`` themselves."""
    vals = list(values)
    return {**summarize(vals).to_dict(), "values": vals}


def fmt(values: Iterable[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std' text of the values times ``scale`` (`stats.format_mean_std`: the mean alone
    for one value, '-' for none)."""
    return format_mean_std(summarize(list(values)), scale, digits)


def add_randomized_smoothing(model: nn.Module, sigma: float) -> nn.Module:
    """Randomized smoothing baseline: fixed Gaussian noise N(0, sigma^2) on the embedding output.

    Reuses DIPNet's input projection with a frozen variance (so the noise is the same kind, in
    the same place, but not learned and without a barrier); train the model with a plain
    ``Trainer``. Returns ``model``.
    """
    if not sigma > 0:
        raise UserError(f"randomized smoothing needs sigma > 0, got {sigma}; pass --rs-sigma.")
    project(model, DIPConfig(placement="input", init_variance=sigma ** 2,
                             variance_floor=min(1e-6, sigma ** 2 / 2)))
    for p in variance_parameters(model):
        p.requires_grad_(False)
    return model


class SAMTrainer(Trainer):
    """Sharpness-Aware Minimisation (Foret et al. 2021) inside ``transformers.Trainer``.

    Each step: gradient g at w, move to w + rho * g / ||g||, take the gradient there, move back,
    and let the Trainer's optimizer (AdamW) step with that gradient. Hand-written (about 15 lines)
    because pytorch_optimizer's SAM owns ``step()`` and needs a closure, which the Trainer's
    optimizer step does not pass.

    Args:
        rho: neighbourhood radius (default 0.05, the SAM paper's).
    Raises:
        UserError: with gradient accumulation (SAM's two gradients are per batch).
    """

    def __init__(self, *args: Any, rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise UserError("SAMTrainer needs gradient_accumulation_steps=1 (its two gradients "
                            "are taken per batch); raise the batch size instead.")
        self.rho = rho

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """One SAM step: two forward/backward passes; returns the loss at the current weights."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        grad_norm = torch.norm(torch.stack([p.grad.detach().norm(2) for p in params]), 2)
        scale = self.rho / (grad_norm + 1e-12)
        eps = []
        with torch.no_grad():
            for p in params:
                e = p.grad * scale
                p.add_(e)
                eps.append(e)
        model.zero_grad(set_to_none=True)
        super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        return loss
