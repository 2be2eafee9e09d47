"""``dipnet certify``: its options, and the command (the certification of a run folder is
`dipnet.experiments.assess.certified.certify_run`, imported when the command runs)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

from dipnet.cli.evaluate import _floats
from dipnet.evaluation.settings import DEFAULT_RADII
from dipnet.cli import grammar
from dipnet._util.threads import limit_openmp_spinning

RUN = "dipnet.cli.certify:run_certify_command"
EXTRA = "eval"


def _number(expected: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a float for which ``ok`` holds (``expected`` says which)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


probability = _number("a number in (0, 1)", lambda v: 0 < v < 1)
positive_float = _number("a number > 0", lambda v: v > 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``certify`` subcommand."""
    p = subparsers.add_parser(
        "certify", help="certified L2 robustness of a trained run (randomized smoothing)",
        description="Certify the smoothed classifier of a trained run on a fixed random subset "
                    "of its test set (Cohen et al. 2019, CERTIFY): n0 noisy samples choose the "
                    "class, n more give a Clopper-Pearson lower bound pA on its probability, "
                    "and the certified L2 radius is min_i sigma_i * Phi^-1(pA), in model-input "
                    "units (abstain where pA <= 1/2). The noise is the run's input projection "
                    "(dipnet, fixed_noise; learned per feature) or, for rs and input_noise, the "
                    "run's own sigma through a frozen input projection. Writes certify.json "
                    "into RUN_DIR (or --out): per-example results, certified accuracy at "
                    "--radii, abstention rate, time per example, seed, n, alpha and sigma. See "
                    "docs/evaluation.md.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (written by dipnet train)")
    p.add_argument("--n", type=grammar.positive_int, default=10_000, metavar="N",
                   help="samples per example that bound pA (default 10000; Cohen et al. use "
                        "100000)")
    p.add_argument("--n0", type=grammar.positive_int, default=100, metavar="N",
                   help="samples per example that choose the class (default 100)")
    p.add_argument("--alpha", type=probability, default=0.001,
                   help="failure probability of each certificate (default 0.001)")
    p.add_argument("--points", type=grammar.positive_int, default=500, metavar="N",
                   help="test points certified: the evaluation suite's fixed random subset "
                        "(default 500)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the Monte Carlo noise (default 0)")
    p.add_argument("--radii", type=_floats, default=DEFAULT_RADII, metavar="R1,R2,...",
                   help="L2 radii of the certified-accuracy curve (default "
                        f"{','.join(f'{r:g}' for r in DEFAULT_RADII)})")
    p.add_argument("--internal", choices=("sample", "off"), default="sample",
                   help="internal projections: sample (the base classifier is the model as "
                        "trained; default) or off (the deterministic network smoothed at its "
                        "input)")
    p.add_argument("--from-first-projection", action="store_true",
                   help="if no projection sees the model input, certify the input of the "
                        "first projected layer instead (radii in that layer's units)")
    p.add_argument("--sigma", type=positive_float, default=None,
                   help="smooth a run without projections with N(0, SIGMA^2) at its input "
                        "(default: the run's own sigma for rs and input_noise)")
    p.add_argument("--batch-size", type=grammar.positive_int, default=None, metavar="ROWS",
                   help="rows per forward pass (default: the evaluation suite's row budget)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the JSON here instead of RUN_DIR/certify.json")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the data sets' files (default: the run's own)")
    grammar.add_device(p, "auto")
    grammar.add_threads(p)
    grammar.add_progress(p)
    p.set_defaults(run=RUN, extra=EXTRA)


def run_certify_command(args: argparse.Namespace) -> int:
    """``dipnet certify RUN_DIR``: certify, write certify.json, print a summary; returns 0."""
    limit_openmp_spinning()
    import torch

    from dipnet.experiments.assess.certified import certify_run, format_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    result = certify_run(args.run_dir, n=args.n, n0=args.n0, alpha=args.alpha,
                         points=args.points, seed=args.seed, radii=args.radii,
                         internal=args.internal,
                         from_first_projection=args.from_first_projection, sigma=args.sigma,
                         batch_size=args.batch_size, device=args.device,
                         data_dir=args.data_dir, out=args.out, progress=not args.no_progress)
    target = Path(args.out) if args.out else Path(args.run_dir) / "certify.json"
    print(f"{result['dataset']} / {result['model']} / {result['method']} (seed "
          f"{result['seed']}): {target}")
    print(format_summary(result))
    return 0
