"""`dipnet certify RUN_DIR` on tiny real runs (digits MLPs, 3 epochs): certify.json's contents,
every arm with input noise certified by the same code, the lock, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dipnet.cli import main
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.run.train import run_training

pytest.importorskip("scipy.stats")
FAST = ["--n", "200", "--n0", "20", "--points", "30", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A dipnet, an rs and a standard digits MLP (about 1 s of training each)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("certify-runs")
    out = {}
    for method in ("dipnet", "rs", "standard"):
        cfg = RunConfig(dataset="digits", method=method, epochs=3, seed=0, num_threads=1,
                        mc_samples=4, model_params={"hidden": [32]})
        run_training(cfg, root / method, progress=False, command="test")
        out[method] = root / method
    return out


def test_certify_writes_its_json_for_a_projected_run(runs, capsys):
    assert main(["certify", str(runs["dipnet"]), *FAST, "--seed", "3",
                 "--radii", "0,0.05,0.1,5"]) == 0
    res = json.loads((runs["dipnet"] / "certify.json").read_text())
    assert (res["method"], res["n"], res["n0"], res["alpha"], res["certify_seed"],
            res["points"]) == ("dipnet", 200, 20, 0.001, 3, 30)
    assert res["covers"] == "the model input" and res["projection"] == "features.1"
    assert len(res["examples"]) == 30 and len(res["sigma"]["per_feature"]) == 64
    radii = [c["radius"] for c in res["certified_accuracy"]]
    acc = [c["accuracy"] for c in res["certified_accuracy"]]
    assert radii == [0, 0.05, 0.1, 5] and acc == sorted(acc, reverse=True) and acc[-1] == 0
    ex = res["examples"]
    assert acc[0] == pytest.approx(sum(e["correct"] for e in ex) / 30)
    assert res["abstention_rate"] == pytest.approx(sum(e["prediction"] < 0 for e in ex) / 30)
    assert all((e["radius"] > 0) == (e["prediction"] >= 0) for e in ex)
    assert res["timing"]["seconds_per_example"] > 0
    # the run's learned input variances, in pixel units (the MLP has no normalisation)
    from dipnet.experiments.run.runs import load_run

    lam = load_run(runs["dipnet"]).model.features[1].dip_projection.variance.detach()
    assert res["sigma"]["per_feature"] == pytest.approx(lam.sqrt().tolist(), rel=1e-5)
    assert "certified accuracy: r=0:" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_certificates(runs, tmp_path):
    for name in ("a.json", "b.json"):
        assert main(["certify", str(runs["dipnet"]), *FAST, "--out", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["examples"] == b["examples"]


def test_an_rs_run_is_smoothed_with_its_own_sigma(runs):
    assert main(["certify", str(runs["rs"]), *FAST]) == 0
    res = json.loads((runs["rs"] / "certify.json").read_text())
    assert res["sigma"]["min"] == pytest.approx(0.25) == res["sigma"]["max"]
    assert "rs sigma = 0.25" in res["noise"]


def test_refusals_are_one_line(runs, capsys, tmp_path):
    assert main(["certify", str(runs["standard"]), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --sigma S" in err
    assert not (runs["standard"] / "certify.json").exists()
    assert main(["certify", str(runs["dipnet"]), *FAST, "--sigma", "0.1",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "drop --sigma" in capsys.readouterr().err
    assert main(["certify", str(tmp_path / "nothing"), *FAST]) == 2
    assert "is not a finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["certify", str(runs["dipnet"]), "--alpha", "1.5"])
    lock = FolderLock.acquire(runs["rs"])
    try:
        assert main(["certify", str(runs["rs"]), *FAST, "--seed", "9"]) == 2
        assert "in use by another dipnet process" in capsys.readouterr().err
    finally:
        lock.release()
    # a smoothed standard run with --sigma works through the same code
    assert main(["certify", str(runs["standard"]), *FAST, "--sigma", "0.25"]) == 0


# ---------------------------------------------------------------------- the compare report
def _certified_sweep(root: Path) -> Path:
    """A synthetic sweep (report_synthetic) whose dipnet and rs runs were certified: PGD L2
    accuracy 0.6 at eps 0.5 and 0.3 at eps 1; certified 0.5 at radius 0.5 and, at radius 1,
    0.2 for dipnet and 0.45 for rs (above its empirical accuracy: the check must say so)."""
    from report_synthetic import write_sweep

    write_sweep(root, lambda m, s, p: 0.8, methods=("standard", "dipnet", "rs"), seeds=(0, 1),
                evaluation=True)
    for d in (root / "runs").iterdir():
        ev = json.loads((d / "evaluation.json").read_text())
        for p in ev["predictions"]:
            ev["attacks"] += [{"attack": "pgd", "norm": "l2", "eps": e, "prediction": p,
                               "accuracy": a, "n_points": 300} for e, a in
                              ((0.0, 0.8), (0.5, 0.6), (1.0, 0.3))]
        (d / "evaluation.json").write_text(json.dumps(ev))
        if "standard" not in d.name:
            at_1 = 0.45 if "-rs-" in d.name else 0.2
            (d / "certify.json").write_text(json.dumps({
                "points": 500, "abstention_rate": 0.1, "mean_radius": 0.4, "examples": [{}] * 500,
                "certified_accuracy": [{"radius": r, "accuracy": a} for r, a in
                                       ((0.0, 0.75), (0.25, 0.6), (0.5, 0.5), (1.0, at_1))]}))
    return root


def test_the_report_shows_certified_beside_empirical_and_checks_it(tmp_path):
    from dipnet.experiments.report import build_report

    paths = build_report(_certified_sweep(tmp_path))
    md = paths.markdown.read_text()
    assert "certified accuracy beside PGD L2" in md
    assert any(f.name.startswith("eval_certified_") for f in paths.figures)
    # two certified methods x two seeds x the shared radii 0, 0.5, 1; rs fails at radius 1
    assert "(2 of 12 checks" in md and "one of the two is wrong" in md
    assert "rs (seed 0), radius 1: certified 45.0 % > empirical 30.0 %" in md
    assert "dipnet (seed 0), radius 1" not in md
    keys = {k for row in paths.results["runs"] for k in row}
    assert any("certified/certified_accuracy/radius=1.0/accuracy" in k for k in keys), keys
    assert not any("examples" in k for k in keys)  # only the curve reaches results.json


def test_the_default_radii_hold_every_pgd_l2_epsilon_of_the_suites():
    from dipnet.cli.certify import DEFAULT_RADII
    from dipnet.evaluation.settings import SUITES

    assert {e for s in SUITES.values() for e in s.l2_eps} <= set(DEFAULT_RADII)
