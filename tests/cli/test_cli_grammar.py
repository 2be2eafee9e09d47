"""One CLI grammar (issue 11): the same option names everywhere, one ``--set`` override syntax,
old spellings as deprecated aliases with a notice, options that do not apply are errors, and
outputs that never default into the repository."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from dipnet.cli import build_parser, main
from dipnet.cli import hf as hf_commands
from dipnet.cli.grammar import NOTICES
from dipnet.errors import UserError

PARSER = build_parser()
TINY = ["--dataset", "digits", "--set", "model.hidden=[8]", "--epochs", "1", "--batch-size",
        "64", "--threads", "1", "--mc-samples", "2", "--no-progress"]


def parse(*argv: str):
    return PARSER.parse_args(list(argv))


def options(command: str) -> set[str]:
    sub = next(a for a in PARSER._actions if a.dest == "command").choices[command]
    return {o for a in sub._actions for o in a.option_strings}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["train", "compare", "evaluate", "text-classify", "math"])
def test_the_same_option_names_in_every_command(command):
    have = options(command)
    assert {"--threads", "--device", "--no-progress", "--quiet", "--set", "--out"} <= have
    assert "--out-dir" not in have or command in ("text-classify", "math")  # old alias only


@pytest.mark.parametrize("argv", [["train"], ["compare"], ["evaluate", "r"], ["text-classify"],
                                  ["math"]])
def test_device_defaults_to_auto_everywhere(argv):
    args = parse(*argv)
    # None = "not given": the run config's default, auto, applies (train / compare)
    assert args.device in (None, "auto")
    if argv[0] in ("text-classify", "math"):
        fields = hf_commands.TEXT_FIELDS if argv[0] == "text-classify" else \
            hf_commands.MATH_FIELDS
        assert dict((f[0], f[2]) for f in fields)["device"] == "auto"
    if argv[0] == "train":
        from dipnet.experiments.run.config import RunConfig

        assert RunConfig().device == "auto"


@pytest.mark.parametrize("argv, dest, value, notice", [
    (["compare", "--num-threads", "2"], "threads", 2, "write --threads 2"),
    (["math", "--out-dir", "o"], "out_dir", "o", "write --out o"),
    (["text-classify", "--out-dir", "o"], "out_dir", "o", "write --out o"),
])
def test_old_option_names_still_work_and_leave_a_notice(argv, dest, value, notice):
    args = parse(*argv)
    assert getattr(args, dest) == value
    assert len(getattr(args, NOTICES)) == 1 and notice in getattr(args, NOTICES)[0]
    assert "deprecated" in getattr(args, NOTICES)[0]


def test_quiet_is_the_same_as_no_progress():
    for command in ("train", "compare", "demo", "evaluate"):
        extra = ["r"] if command == "evaluate" else []
        assert parse(command, *extra, "--quiet").no_progress is True
        assert parse(command, *extra).no_progress is False


def test_train_set_keys_reach_the_run_config():
    from dipnet.cli.train import config_from_args

    cfg = config_from_args(parse(
        "train", "--method", "dipnet", "--set", "dip.m=2", "--set", "model.hidden=[512, 256]",
        "--set", "method.gamma=0.05", "--set", "dipnet.alpha=0.2", "--set", "lr=0.01",
        "--set", "run.weight_decay=5e-4", "--set", "normalize={mean: 0.5, std: 0.25}",
        "--set", "report_to=tensorboard"))
    assert cfg.dip == {"m": 2} and cfg.model_params == {"hidden": [512, 256]}
    assert cfg.method_params == {"gamma": 0.05, "alpha": 0.2}
    assert cfg.lr == 0.01 and cfg.weight_decay == 5e-4
    assert cfg.normalize == {"mean": 0.5, "std": 0.25} and cfg.report_to == ["tensorboard"]


def test_old_key_value_options_are_the_same_as_set():
    from dipnet.cli.train import config_from_args

    old = parse("train", "--method", "rs", "--param", "sigma=0.3", "--model-param",
                "hidden=[32]", "--dip", "m=2")
    new = parse("train", "--method", "rs", "--set", "method.sigma=0.3", "--set",
                "model.hidden=[32]", "--set", "dip.m=2")
    assert config_from_args(old) == config_from_args(new)
    notices = getattr(old, NOTICES)
    assert [n.split()[0] for n in notices] == ["--param", "--model-param", "--dip"]
    assert "write --set method.sigma=0.3" in notices[0]
    assert not getattr(new, NOTICES, None)


def test_flags_win_over_the_config_file_and_set_over_both(tmp_path):
    from dipnet.cli.train import config_from_args

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"epochs": 9, "lr": 0.5, "seed": 3}))
    cfg = config_from_args(parse("train", "--config", str(cfg_file), "--epochs", "2",
                                 "--lr", "0.1", "--set", "lr=0.2"))
    assert (cfg.epochs, cfg.lr, cfg.seed) == (2, 0.2, 3)


@pytest.mark.parametrize("argv, fragments", [
    (["--set", "eval.attack_points=3"], ["eval.attack_points", "compare", "evaluate"]),
    (["--set", "nosuch.key=3"], ["'nosuch.key'", "dip.KEY", "model.KEY"]),
    (["--set", "run.nosuch=3"], ["no field 'nosuch'"]),
    (["--set", "rs.sigma=0.3"], ["'rs'", "'standard'", "--set method.sigma"]),
    (["--set", "lr"], ["lacks '='", "must look like key=value"]),
    (["--set", "lr=[1"], ["YAML"]),
    # an option that does not apply to the method or the model (the run's plan says so)
    (["--set", "dip.m=2"], ["dip", "dipnet", "'standard'"]),
    (["--set", "method.sigma=0.3"], ["sigma", "'standard'", "rs"]),
    (["--set", "model.depth=3"], ["depth", "'mlp'"]),
])
def test_train_set_mistakes_are_one_line_and_write_nothing(argv, fragments, tmp_path, capsys):
    code = main(["train", *TINY, *argv, "--out", str(tmp_path / "x")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("dipnet: error:")
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "x").exists()


def test_a_deprecation_notice_is_printed_once_the_command_ran(tmp_path, capsys):
    assert main(["train", *TINY, "--method", "dipnet", "--dip", "m=2", "--out",
                 str(tmp_path / "x")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dipnet: note: --dip is deprecated and goes in the next release: write "
                   "--set dip.m=2"]
    saved = yaml.safe_load((tmp_path / "x" / "config.yaml").read_text())
    assert saved["dip"] == {"m": 2} and saved["model_params"] == {"hidden": [8]}


# ---------------------------------------------------------------------- compare
def sweep_of(*argv: str):
    from dipnet.cli.sweep import _sweep_from_args

    return _sweep_from_args(parse("compare", "--dataset", "digits", *argv))


def test_compare_has_a_default_model_and_output_folder():
    from dipnet.cli.sweep import default_out

    sweep = sweep_of("--methods", "standard")
    assert sweep.model == "mlp"
    assert default_out(sweep) == Path("runs/compare-digits-mlp")
    assert default_out(sweep_of("--methods", "standard", "--name", "my sweep")) == \
        Path("runs/my_sweep")


def test_compare_set_keys_reach_the_sweep():
    sweep = sweep_of("--methods", "standard,rs,input_noise,sam,dipnet", "--set", "method.sigma=0.3",
                     "--set", "sam.rho=0.1", "--set", "dip.m=2", "--set", "model.hidden=[8]",
                     "--set", "weight_decay=5e-4", "--set", "run.lr=0.01", "--set",
                     "eval.attack_points=10", "--set", "seeds=[4, 5]", "--threads", "2",
                     "--device", "cpu", "--report-to", "tensorboard")
    assert sweep.method_params == {"rs": {"sigma": 0.3}, "input_noise": {"sigma": 0.3},
                                   "sam": {"rho": 0.1}}
    assert sweep.run["dip"] == {"m": 2} and sweep.run["model_params"] == {"hidden": [8]}
    assert sweep.run["weight_decay"] == 5e-4 and sweep.run["lr"] == 0.01
    assert sweep.run["num_threads"] == 2 and sweep.run["device"] == "cpu"
    assert sweep.run["report_to"] == "tensorboard"
    assert sweep.evaluation_params == {"attack_points": 10} and sweep.seeds == [4, 5]


def test_compare_old_param_is_the_same_as_set():
    old = sweep_of("--methods", "standard,sam", "--param", "sam.rho=0.1", "--num-threads", "2")
    new = sweep_of("--methods", "standard,sam", "--set", "sam.rho=0.1", "--threads", "2")
    assert old == new


@pytest.mark.parametrize("argv, fragments", [
    (["--methods", "standard,dipnet", "--set", "method.rho=0.1"],
     ["none of the methods standard, dipnet", "'rho'", "sam"]),
    (["--methods", "standard", "--set", "sam.rho=0.1"], ["sam", "not among the methods"]),
    (["--methods", "standard", "--set", "dip.m=2"], ["dipnet"]),
    (["--methods", "standard", "--set", "nosuch.key=1"], ["'nosuch.key'"]),
])
def test_compare_settings_that_apply_to_no_run_are_errors(argv, fragments):
    with pytest.raises(UserError) as err:
        sweep_of(*argv)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


# ---------------------------------------------------------------------- text-classify / math
def _fake_settings(fields):
    """A dataclass with the CLI's fields (the real ones import transformers: 10 s)."""
    return dataclasses.make_dataclass("Settings", [(f[0], object) for f in fields])


def hf_settings(command: str, *argv: str):
    from dipnet.cli.hf import _check_applicable, settings_from_args

    fields = hf_commands.TEXT_FIELDS if command == "text-classify" else hf_commands.MATH_FIELDS
    args = parse(command, *argv)
    settings, given = settings_from_args(_fake_settings(fields), fields, args)
    _check_applicable(settings, given, command)
    return settings


def test_hf_outputs_default_to_runs_not_the_repository():
    assert hf_settings("text-classify").out_dir == "runs/text-classify"
    assert hf_settings("math").out_dir == "runs/math"
    assert hf_settings("math", "--out", "elsewhere").out_dir == "elsewhere"


def test_hf_set_keys_and_flags():
    s = hf_settings("text-classify", "--set", "dip.m=2", "--set", "lr=1", "--set",
                    "seeds=[4, 5]", "--set", "rs.sigma=0.25", "--threads", "2",
                    "--char-rates", "0.1,0.3")
    assert (s.dip_m, s.lr, s.seeds, s.rs_sigma, s.threads) == (2, 1.0, [4, 5], 0.25, 2)
    assert s.char_rates == [0.1, 0.3] and isinstance(s.lr, float)
    # A count means that many seeds, as in dipnet compare (--seeds 3 / --set seeds=3).
    assert hf_settings("math", "--set", "seeds=3").seeds == [0, 1, 2]


@pytest.mark.parametrize("command", ["text-classify", "math"])
def test_hf_seeds_take_a_count_or_a_list_like_compare(command):
    assert hf_settings(command, "--seeds", "3").seeds == [0, 1, 2]
    assert hf_settings(command, "--seeds", "0,5,7").seeds == [0, 5, 7]
    with pytest.raises(UserError, match="--seeds 3 or --seeds 0,1,2"):
        hf_settings(command, "--seeds", "three")


def test_math_methods_are_named_as_in_train_and_compare(tmp_path, capsys):
    from dipnet.cli.names import MATH_METHODS, METHODS

    assert "standard" in MATH_METHODS and "sft" not in MATH_METHODS
    assert set(MATH_METHODS) <= set(METHODS)
    # The old name is one line that names the new one, before anything is loaded or written.
    assert main(["math", "--methods", "sft,dipnet", "--out", str(tmp_path / "m")]) != 0
    err = one_line(capsys.readouterr().err)
    assert "'sft' is now called 'standard'" in err and "--methods standard,dipnet" in err
    assert not (tmp_path / "m").exists()


def test_no_progress_silences_bars_and_trainer_log_lines(capfd):
    from tqdm.auto import tqdm

    from dipnet.cli.hf import _quiet

    with _quiet(True):
        for _ in tqdm(range(3), desc="math runs"):
            pass
        print({"loss": 1.0, "epoch": 1.0})  # what the Trainer's PrinterCallback prints
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    with _quiet(False):
        print("shown")
    assert capfd.readouterr().out == "shown\n"


def test_demo_help_names_exactly_the_methods_the_demo_runs(capsys):
    import re

    demo = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
                          .read_text())
    with pytest.raises(SystemExit):
        parse("demo", "--help")
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"methods: ([a-z_, ]+)\.", text).group(1).split(", ")
    assert listed == demo["methods"]
    from dipnet.cli.names import METHODS

    for other in set(METHODS) - set(demo["methods"]):
        assert not re.search(rf"\b{other}\b", text), other


def test_the_demo_time_in_help_is_the_readme_measurement(capsys):
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    measured = re.search(r"the demo (\d+-\d+ s)", readme).group(1)
    with pytest.raises(SystemExit):
        parse("--help")
    top = " ".join(capsys.readouterr().out.split())
    assert f"({measured} on 2 idle cores)" in top
    assert "5 minutes" not in top


@pytest.mark.parametrize("command, argv, fragments", [
    ("text-classify", ["--methods", "standard,rs", "--set", "dip.m=2"],
     ["--dip-m", "dipnet", "standard,rs"]),
    ("math", ["--methods", "standard", "--sam-rho", "0.1"], ["--sam-rho", "sam"]),
    ("math", ["--set", "nosuch=1"], ["'nosuch'"]),
    ("math", ["--set", "lora_r=big"], ["lora_r", "int"]),
])
def test_hf_settings_that_do_not_apply_are_errors(command, argv, fragments):
    with pytest.raises(UserError) as err:
        hf_settings(command, *argv)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_every_command_in_docs_cli_md_parses():
    import re
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("dipnet "):
                commands.append(shlex.split(line)[1:])
    assert len(commands) >= 4
    for argv in commands:
        args = parse(*argv)
        assert callable(args.func), argv
