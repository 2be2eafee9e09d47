"""The suite end to end: real runs trained with `run_training` on digits, evaluated with
`evaluate_run` into evaluation.json; the report section and the CLI on the same runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dipnet.errors import UserError
from dipnet.evaluation.ood import ood_detection
from dipnet.experiments.report.eval_tables import render_section
from dipnet.evaluation.suite import PARTS, get_settings, load_evaluation, run_predictors
from dipnet.experiments.assess.evaluate import evaluate_run
from dipnet.evaluation.predictors import Predictor
from dipnet.experiments.run.runs import load_run
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.train import run_training

# Small but real: every part runs, on few points (quick suite sizes are for MLPs on MNIST).
SMALL = dict(attack_points=60, corruption_points=40, smoothness_points=12, weight_points=64,
             trace_probes=2, power_iters=2, hessian_iters=3, lipschitz_random=2,
             lipschitz_steps=2, pgd_steps=5, severities=(1,), linf_eps=(0.0, 0.1, 0.3),
             l2_eps=(0.0, 1.0))


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory) -> dict[str, list[Path]]:
    """Two seeds each of standard and DIPNet MLPs on digits (about 1 s of training each)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out: dict[str, list[Path]] = {}
    for method in ("standard", "dipnet"):
        for seed in (0, 1):
            cfg = RunConfig(dataset="digits", method=method, epochs=3, seed=seed, num_threads=1,
                            mc_samples=4, model_params={"hidden": [32]})
            run_training(cfg, root / f"{method}-{seed}", progress=False, command="test")
            out.setdefault(method, []).append(root / f"{method}-{seed}")
    return out


@pytest.fixture(scope="module")
def runs(seed_runs) -> dict[str, Path]:
    return {m: paths[0] for m, paths in seed_runs.items()}


@pytest.fixture(scope="module")
def evaluated(seed_runs) -> dict[str, list[dict]]:
    return {m: [evaluate_run(p, "quick", progress=False, **SMALL) for p in paths]
            for m, paths in seed_runs.items()}


def test_evaluate_run_writes_every_part(runs, evaluated):
    res = {m: evs[0] for m, evs in evaluated.items()}
    for method, r in res.items():
        on_disk = load_evaluation(runs[method])
        assert on_disk["clean"] == r["clean"]
        for key in ("clean", "attacks", "corruptions", "ood", "calibration", "smoothness", "timing"):
            assert key in on_disk
        assert set(r["timing"]) >= set(PARTS) | {"total", "load"}
        assert r["method"] == method and r["dataset"] == "digits"
        # eps 0 reproduces the clean accuracy on the attacked subset, and curves decrease.
        for pred in r["predictions"]:
            for attack, norm in (("fgsm", "linf"), ("pgd", "linf"), ("pgd", "l2")):
                rows = sorted((a for a in r["attacks"] if a["prediction"] == pred
                               and a["attack"] == attack and a["norm"] == norm), key=lambda a: a["eps"])
                assert rows and rows[0]["eps"] == 0.0
                accs = [a["accuracy"] for a in rows]
                tol = 0.05 if pred == "sampled" else 0.0  # sampled: fresh noise per epsilon
                assert all(b <= a + tol for a, b in zip(accs, accs[1:])), (pred, attack, norm, accs)
                assert rows[0]["n_points"] == 60
        # The clean accuracy in the JSON is what the trained model's metrics say.
        metrics = json.loads((runs[method] / "metrics.json").read_text())
        assert r["clean"]["deterministic"]["accuracy"] == pytest.approx(
            metrics["test_accuracy"] if method == "standard" else r["clean"]["deterministic"]["accuracy"])
        assert r["corruptions"][-1]["corruption"] == "mean"
        assert any("ood" in n for n in r["notes"])  # digits has no OOD partner: a note says so
        assert r["smoothness"]["deterministic"]["settings"]["n_points"] == 12
        assert r["n_points"]["attacks"] == 60
    assert res["standard"]["predictions"] == ["deterministic"]
    assert res["dipnet"]["predictions"] == ["deterministic", "sampled"]
    s = res["dipnet"]["smoothness"]["sampled"]
    assert s["output_variance"]["mean"] > 0 and s["settings"]["k"] == 4
    # The quick suite's EOT uses 8 trajectories per gradient step; deterministic rows none.
    assert {a["eot_samples"] for a in res["dipnet"]["attacks"] if a["prediction"] == "sampled"} == {8}
    assert {a["eot_samples"] for a in res["dipnet"]["attacks"] if a["prediction"] == "deterministic"} == {None}


def test_bad_inputs_give_clear_errors(tmp_path, runs):
    with pytest.raises(UserError, match="not a finished run"):
        evaluate_run(tmp_path, progress=False)
    with pytest.raises(UserError, match="unknown suite"):
        evaluate_run(runs["standard"], suite="huge", progress=False)
    with pytest.raises(UserError, match="unknown suite setting"):
        get_settings("quick", epsilons=1)
    with pytest.raises(UserError, match="fgsm_l2='x' is invalid"):
        get_settings("quick", fgsm_l2="x")
    with pytest.raises(UserError, match="clean_points=0 is invalid"):
        get_settings("quick", clean_points=0)
    with pytest.raises(UserError, match="do not apply"):  # checked before the long parts run
        evaluate_run(runs["standard"], progress=False, corruptions=("fog",))
    with pytest.raises(UserError, match="does not exist"):
        load_evaluation(tmp_path)
    (tmp_path / "evaluation.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_evaluation(tmp_path)


def test_render_section_tables_and_figures(seed_runs, evaluated, tmp_path):
    # Digits has no OOD partner data set, so give the DIPNet runs real OOD rows (their
    # predictions' scores against uniform-noise images) and leave standard without: the OOD
    # table then shows "-" for standard, and the note about the missing partner stays.
    evs = {"standard": evaluated["standard"], "dipnet": []}
    for path, ev in zip(seed_runs["dipnet"], evaluated["dipnet"]):
        run = load_run(path)
        x = run.data.test.x
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
        rows = ood_detection(run_predictors(run, 4), "digits", x, {"uniform_noise": noise})
        evs["dipnet"].append({**ev, "ood": rows})
    md = render_section(evs, tmp_path / "fig")
    for png in ("attacks.png", "corruptions.png", "smoothness.png", "calibration.png", "ood.png"):
        assert (tmp_path / "fig" / png).stat().st_size > 5000, png  # a real plot, not empty
        assert f"]({png})" in md
    assert "no out-of-distribution data set" in md
    assert "| standard (deterministic) | - | - |" in md  # no OOD rows for standard
    assert "vs uniform_noise (mutual_information)" in md
    # One table row per (method, prediction); dipnet has both predictions.
    for label in ("standard (deterministic)", "dipnet (deterministic)", "dipnet (sampled)"):
        assert label in md
    # Mean ± std over the two seeds of the clean accuracy, as in the JSONs.
    accs = [100 * e["clean"]["deterministic"]["accuracy"] for e in evaluated["standard"]]
    mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2 ** 0.5
    assert f"| standard | deterministic | {mean:.2f} ± {std:.2f} |" in md
    assert render_section({}, tmp_path / "empty").startswith("_No evaluation.json")


def test_cli_evaluate_prints_summary_and_writes_json(runs, tmp_path, capsys):
    from dipnet.cli import main

    out = tmp_path / "ev.json"
    rng = torch.random.get_rng_state()
    code = main(["evaluate", str(runs["dipnet"]), "--parts", "clean,calibration,attacks",
                 "--attack-points", "40", "--steps", "3", "--eps", "0,0.1", "--l2-eps", "0,1",
                 "--attacks", "pgd", "--k", "3", "--out", str(out), "--no-progress",
                 "--set", "clean_points=100", "--set", "pgd_losses=[ce, margin]"])
    assert code == 0
    assert torch.equal(rng, torch.random.get_rng_state())  # the caller's RNG is untouched
    text = capsys.readouterr().out
    assert "clean accuracy %" in text and "PGD linf eps 0.1 %" in text
    assert "deterministic" in text and "sampled" in text
    ev = load_evaluation(out)
    assert {a["attack"] for a in ev["attacks"]} == {"pgd"} and ev["k"] == 3
    assert ev["n_points"]["clean"] == 100 and ev["attacks"][0]["losses"] == ["ce", "margin"]
    assert ev["corruptions"] == [] and "corruptions" not in ev["timing"]
    # Bad values: one line, exit code 2, no traceback.
    assert main(["evaluate", str(runs["dipnet"]), "--severities", "9", "--no-progress"]) == 2
    assert "severities" in capsys.readouterr().err
    assert main(["evaluate", str(runs["dipnet"]), str(runs["standard"]), "--out", str(out)]) == 2
    assert "--out names one file" in capsys.readouterr().err
    assert main(["evaluate", str(runs["dipnet"]), "--set", "restarts"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_docs_library_example_runs():
    # The Python block of docs/evaluation.md must work as written.
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "docs/evaluation.md", "exec"), scope)
    # What the example promises: a robust-accuracy curve over its two epsilons (accuracy at
    # eps 0 is the clean one, and the attack cannot raise it), smoothness measures, and a
    # report of the parts it asked for.
    curve, smooth, report = scope["curve"], scope["smooth"], scope["report"]
    assert [row["eps"] for row in curve] == [0.0, 0.1]
    assert 0.0 <= curve[1]["accuracy"] <= curve[0]["accuracy"] <= 1.0
    assert smooth["lipschitz_adversarial"]["mean"] > 0
    assert report["clean"] and report["attacks"] and set(report["timing"]) >= {"clean",
                                                                                "attacks"}


@pytest.mark.slow
def test_full_suite_on_digits(runs):
    # The full suite's extra paths: FGSM L2, restarts, the CE + margin ensemble, severity 3.
    # And the ART attacks (APGD-CE, APGD-DLR, Square), here with small budgets.
    ev = evaluate_run(runs["dipnet"], "full", progress=False, write=False,
                      attack_points=100, corruption_points=100, smoothness_points=20,
                      strong_points=50, apgd_steps=10, square_queries=50)
    kinds = {(a["attack"], a["norm"]) for a in ev["attacks"]}
    assert kinds == {(a, n) for a in ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square")
                     for n in ("linf", "l2")}
    assert ev["n_points"]["strong_attacks"] == 50
    pgd = [a for a in ev["attacks"] if a["attack"] == "pgd"]
    assert all(a["losses"] == ["ce", "margin"] and a["restarts"] == 2 for a in pgd)
    assert {c["severity"] for c in ev["corruptions"]} == {1, 2, 3, None}


@pytest.mark.parametrize("where", ["under_file", "is_dir"])
def test_out_that_cannot_be_written_is_one_line_before_any_work(runs, tmp_path, capsys, where):
    # Issue 9 item 8: `--out file/x.json` gave a FileExistsError traceback after the whole
    # evaluation had run. Now: one line naming the path, exit 2, nothing written, checked first.
    from dipnet.cli import main

    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    out = blocker / "x.json" if where == "under_file" else tmp_path
    code = main(["evaluate", str(runs["standard"]), "--parts", "clean", "--no-progress",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(blocker if where == "under_file" else out) in err and "--out" in err
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no temp file left
    # The library entry point gives the same clear error.
    with pytest.raises(UserError, match="--out"):
        evaluate_run(runs["standard"], progress=False, out=out, parts=("clean",))


def test_test_time_gaussian_noise_sweep(runs, evaluated):
    r = evaluated["standard"][0]
    rows = r["gaussian_noise"]
    sigmas = sorted({row["sigma"] for row in rows})
    assert sigmas[0] == 0.0 and len(sigmas) >= 4
    acc = {row["sigma"]: row["accuracy"] for row in rows if row["prediction"] == "deterministic"}
    # The noise reaches the model: the accuracy changes with sigma (this 3-epoch fixture model
    # is weak, so no monotone decline is asserted), and sigma 0 is the clean subset.
    assert len(set(acc.values())) > 1
    from dipnet.evaluation.suite import _subset
    from dipnet.experiments.run.runs import load_run

    run = load_run(runs["standard"])
    xs, ys = _subset(run.data.test.x, run.data.test.y, 40, 0)
    with torch.no_grad():
        direct = float((run.method.predict_logits(run.model, xs).argmax(-1) == ys).float().mean())
    assert acc[0.0] == pytest.approx(direct)
    assert all(row["n_points"] == 40 for row in rows)  # the corruption subset
    assert {row["prediction"] for row in evaluated["dipnet"][0]["gaussian_noise"]} == {
        "deterministic", "sampled"}


def test_render_section_shows_every_attack_that_ran(evaluated, tmp_path):
    """The full suite's AutoAttack-style attacks (APGD-CE, APGD-DLR, Square) get their own
    panels and tables, not only FGSM and PGD. Their rows are added here by hand (running them
    costs minutes); every other row is a real evaluation."""
    evs = {}
    for method, items in evaluated.items():
        evs[method] = []
        for i, ev in enumerate(items):
            extra = [{"attack": attack, "norm": "linf", "eps": eps, "prediction": "deterministic",
                      "accuracy": acc - 0.01 * i}
                     for attack, acc in (("apgd-ce", 0.42), ("square", 0.55))
                     for eps in (0.0, 0.1)]
            evs[method].append({**ev, "attacks": list(ev["attacks"]) + extra})
    md = render_section(evs, tmp_path / "fig")
    assert "APGD-CE, L-inf:" in md and "Square, L-inf:" in md
    assert "FGSM, L-inf:" in md and "PGD, L2:" in md  # the usual panels stay
    assert "| standard (deterministic) | 41.5 ± 0.7 |" in md  # mean ± std of 42 and 41
    assert "APGD and Square (the Adversarial Robustness Toolbox) on the first" in md


@pytest.mark.parametrize("k", [1.5, True, 0, "3"])
def test_a_k_that_is_not_a_positive_whole_number_is_one_line(runs, k):
    # k=1.5 used to be truncated to 1 and k=True to mean 1: both silently evaluated k=1.
    with pytest.raises(UserError, match=r"k must be a whole number >= 1") as info:
        evaluate_run(runs["dipnet"], k=k, progress=False, write=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"k must be a whole number >= 1"):
        Predictor("sampled", lambda x: x, stochastic=True, k=k)


def test_a_k_whose_trajectories_cannot_fit_is_refused_before_any_work(runs, monkeypatch,
                                                                      tmp_path):
    from dipnet.evaluation import suite

    # The suite holds k x batch_size x classes logits per batch (three such tensors at once):
    # k = 100,000 on 500 rows of 10 classes is 6 GB; 1 GB free is not enough.
    monkeypatch.setattr(suite, "available_bytes", lambda device: 10**9)
    out = tmp_path / "ev.json"
    with pytest.raises(UserError, match=r"k=100000.*GB.*lower --k") as info:
        evaluate_run(runs["dipnet"], k=100_000, progress=False, out=out)
    assert "\n" not in str(info.value) and not out.exists()
    suite.check_k_memory(8, 500, 10, torch.device("cpu"))  # the default k fits
