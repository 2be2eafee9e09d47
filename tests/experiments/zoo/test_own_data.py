"""Your own data (issue 11): ``--dataset file.npz`` and ``--dataset package.module:factory`` for
train, compare and evaluate; ``evaluate --shift-set / --ood-set``; the ``normalize`` setting
(a Normalize first layer: FGSM at eps on a normalised run equals FGSM at eps on the equivalent
plain model, eps in [0, 1] pixel units)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.zoo.data import dataset_label, load_dataset

torch.set_num_threads(1)
FAST = ["--epochs", "1", "--batch-size", "64", "--threads", "1", "--mc-samples", "2",
        "--set", "model.hidden=[16]", "--no-progress"]


def arrays(n_train: int = 200, n_test: int = 60, classes: int = 3, seed: int = 0) -> dict:
    """A small separable problem: uint8 images (1, 6, 6) whose class sets a bright column."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, 1, 6, 6)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 0, :, c] = 250
        return x, y.astype(np.int64)

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def save(path: Path, data: dict) -> Path:
    np.savez(path, **data)
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------- the .npz file
def test_a_valid_file_loads_as_a_data_set(tmp_path):
    data = arrays()
    data["x_val"], data["y_val"] = data["x_test"][:20], data["y_test"][:20]
    data["class_names"] = np.array(["left", "middle", "right"])
    path = save(tmp_path / "columns.npz", data)
    ds = load_dataset(str(path), max_train=50, max_val=10)
    assert ds.name == dataset_label(str(path)) == "columns"
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 3
    assert ds.class_names == ["left", "middle", "right"]
    assert ds.train.x.dtype == torch.float32 and float(ds.train.x.max()) <= 1.0
    assert torch.allclose(ds.test.x, torch.from_numpy(data["x_test"]).float() / 255)
    assert len(ds.train) == 50 and len(ds.val) == 10  # its own x_val, not carved from train
    assert torch.equal(ds.val.y, torch.from_numpy(data["y_val"][:10]))
    assert ds.normalize is None


def _broken(change: str) -> dict:
    d = arrays()
    if change == "missing":
        del d["y_test"]
    elif change == "unknown":
        d["x_tset"] = d.pop("x_test")
    elif change == "int_x":
        d["x_train"] = d["x_train"].astype(np.int64)
    elif change == "nan":
        d["x_train"] = d["x_train"].astype(np.float32) / 255
        d["x_train"][3, 0, 0, 0] = np.nan
    elif change == "float_y":
        d["y_train"] = d["y_train"].astype(np.float32)
    elif change == "short_y":
        d["y_train"] = d["y_train"][:-1]
    elif change == "negative":
        d["y_test"][0] = -1
    elif change == "unseen":
        d["y_test"][0] = 7
    elif change == "shapes":
        d["x_test"] = d["x_test"][:, :, :5]
    elif change == "half_val":
        d["x_val"] = d["x_test"]
    elif change == "std0":
        d["mean"], d["std"] = np.array([0.5]), np.array([0.0])
    elif change == "mean_shape":
        d["mean"], d["std"] = np.array([0.1, 0.2]), np.array([1.0, 1.0])
    elif change == "flat":
        d["x_train"] = d["x_train"].reshape(-1)
    return d


@pytest.mark.parametrize("change, fragment", [
    ("missing", "lacks y_test"), ("unknown", "unknown array(s) x_tset"),
    ("int_x", "x_train has dtype int64"), ("nan", "1 non-finite value"),
    ("float_y", "labels must be integers"), ("short_y", "one integer label per example"),
    ("negative", "negative label -1"), ("unseen", "y_test has label 7, beyond the 3 classes"),
    ("shapes", "same example shape"), ("half_val", "x_val without y_val"),
    ("std0", "> 0"), ("mean_shape", "normalize mean has shape (2,)"),
    ("flat", "one row per example"),
])
def test_a_bad_file_is_one_clear_error(tmp_path, change, fragment):
    path = save(tmp_path / "bad.npz", _broken(change))
    with pytest.raises(UserError) as err:
        load_dataset(str(path))
    assert fragment in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


def test_pickled_arrays_are_refused_not_unpickled(tmp_path):
    data = arrays()
    data["x_train"] = np.array([object()] * 3, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **data)
    with pytest.raises(UserError, match="pickled"):
        load_dataset(str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))


# ---------------------------------------------------------------------- train / compare / evaluate
@pytest.fixture(scope="module")
def npz_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished dipnet run trained on a .npz file by the command line."""
    root = tmp_path_factory.mktemp("own")
    path = save(root / "columns.npz", arrays())
    out = root / "run"
    # 5 epochs at lr 0.01: test accuracy 1.0 for seeds 0, 1 and 2 (measured)
    assert main(["train", "--dataset", str(path), "--method", "dipnet", *FAST, "--epochs", "5",
                 "--lr", "0.01", "--out", str(out)]) == 0
    return path, out


def test_train_on_a_file(npz_run):
    path, out = npz_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_name"] == "columns-mlp-dipnet-none-s0"
    assert metrics["input_shape"] == [1, 6, 6] and metrics["num_classes"] == 3
    assert metrics["test_accuracy"] > 0.9  # the bright column is easy (chance: 1/3)
    assert yaml.safe_load((out / "config.yaml").read_text())["dataset"] == str(path)


def test_evaluate_with_shift_and_ood_sets_labelled_by_name(npz_run, tmp_path, capsys):
    path, out = npz_run
    shifted = arrays(n_test=40, seed=5)
    shifted["x_test"] = np.clip(shifted["x_test"].astype(np.int32) + 40, 0, 255).astype(np.uint8)
    save(tmp_path / "brighter.npz", {"x": shifted["x_test"], "y": shifted["y_test"]})
    save(tmp_path / "noise.npz",
         {"x_test": np.random.default_rng(1).random((50, 1, 6, 6)).astype(np.float32)})
    target = tmp_path / "ev.json"
    assert main(["evaluate", str(out), "--parts", "clean,ood", "--shift-set",
                 str(tmp_path / "brighter.npz"), "--shift-set", str(path), "--ood-set",
                 str(tmp_path / "noise.npz"), "--no-progress", "--out", str(target)]) == 0
    ev = json.loads(target.read_text())
    shift = {(r["set"], r["prediction"]): r for r in ev["shift"]}
    assert set(shift) == {(s, p) for s in ("brighter", "columns")
                          for p in ("deterministic", "sampled")}
    assert shift[("brighter", "deterministic")]["n_points"] == 40
    # the run's own test file as a "shift" set gives exactly its clean accuracy
    assert shift[("columns", "deterministic")]["accuracy"] == pytest.approx(
        ev["clean"]["deterministic"]["accuracy"])
    assert {r["out_dataset"] for r in ev["ood"]} == {"noise"}
    assert "shift set brighter accuracy %" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["--shift-set", "nope"], "neither a data set"),
    (["--ood-set", "mnist", "--parts", "clean"], "--ood-set applies to the ood part"),
    (["--shift-set", "mnist"], "has inputs of shape (1, 28, 28), but the run takes (1, 6, 6)"),
])
def test_evaluate_extra_set_mistakes_are_one_line(npz_run, tmp_path, capsys, argv, fragment):
    _, out = npz_run
    target = tmp_path / "ev.json"
    assert main(["evaluate", str(out), *argv, "--no-progress", "--out", str(target)]) == 2
    assert fragment in one_line(capsys.readouterr().err)
    assert not target.exists()


def test_compare_on_a_file(npz_run, tmp_path):
    path, _ = npz_run
    out = tmp_path / "sweep"
    assert main(["compare", "--dataset", str(path), "--methods", "standard", "--seeds", "1",
                 "--epochs", "1", "--set", "model.hidden=[8]", "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    assert (out / "runs" / "columns-mlp-standard-none-s0" / "metrics.json").is_file()


# ---------------------------------------------------------------------- a factory
FACTORY = '''
import numpy as np
from pathlib import Path
Path(__file__).with_name("IMPORTED-mydata").write_text("ran")

def make():
    return dict(np.load(Path(__file__).with_name("columns.npz")))
'''


def test_a_factory_named_on_the_command_line_is_the_users_say(tmp_path, monkeypatch, capsys):
    save(tmp_path / "columns.npz", arrays())
    (tmp_path / "mydata.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mydata", raising=False)
    assert main(["train", "--dataset", "mydata:make", *FAST, "--out", "run"]) == 0
    assert (tmp_path / "IMPORTED-mydata").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["run_name"] == \
        "make-mlp-standard-none-s0"
    # the same factory read from a file (a received config.yaml) needs --allow-code
    (tmp_path / "IMPORTED-mydata").unlink()
    monkeypatch.delitem(sys.modules, "mydata", raising=False)
    capsys.readouterr()
    assert main(["train", "--config", "run/config.yaml", "--seed", "1", "--out", "run2",
                 "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "names user code as its data set" in line and "--allow-code" in line
    assert main(["evaluate", "run", "--parts", "clean", "--no-progress"]) == 2
    assert "names user code as its data set" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "IMPORTED-mydata").exists() and not (tmp_path / "run2").exists()
    assert main(["--allow-code", "evaluate", "run", "--parts", "clean", "--no-progress"]) == 0


# ---------------------------------------------------------------------- normalisation
def _fold(model: nn.Module) -> nn.Module:
    """The plain model equal to ``net(normalize(x))``: the normalisation folded into the first
    Linear layer (W' = W / std, b' = b - W' mean, statistics flattened to the input)."""
    from dipnet.experiments.zoo.normalize import NormalizedModel

    assert isinstance(model, NormalizedModel)
    net = copy.deepcopy(model.net)
    shape = (1, 6, 6)
    mean = model.normalize.mean.expand(shape).reshape(-1).double()
    std = model.normalize.std.expand(shape).reshape(-1).double()
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight.double() / std
        first.bias.copy_(first.bias.double() - w @ mean)
        first.weight.copy_(w)
    return net


def test_fgsm_on_a_normalised_run_equals_fgsm_on_the_equivalent_plain_model(tmp_path):
    from dipnet.evaluation.attacks import fgsm
    from dipnet.evaluation.predictors import deterministic_predictor
    from dipnet.experiments.run.runs import load_run

    data = arrays()
    data["mean"], data["std"] = np.array([0.3]), np.array([0.2])
    path = save(tmp_path / "norm.npz", data)
    assert main(["train", "--dataset", str(path), *FAST, "--out", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["normalize"] == {"mean": [0.3], "std": [0.2]}
    run = load_run(tmp_path / "r")
    normalised = run.model.double().eval()
    plain = _fold(normalised).eval()
    x, y = run.data.test.x.double(), run.data.test.y
    assert torch.allclose(normalised(x), plain(x), atol=1e-9)
    for eps in (0.05, 0.2):
        a = fgsm(deterministic_predictor(normalised), x, y, eps)
        b = fgsm(deterministic_predictor(plain), x, y, eps)
        # the same adversarial inputs (measured: identical in float64), at eps in pixel units
        assert torch.equal(a, b)
        assert float((a - x).abs().max()) == pytest.approx(eps)
        acc_a = (normalised(a).argmax(1) == y).float().mean()
        assert acc_a == (plain(b).argmax(1) == y).float().mean()


def test_normalize_setting_wins_over_the_file_and_is_checked_against_the_input(tmp_path,
                                                                               capsys):
    data = arrays()
    data["mean"], data["std"] = np.array([0.3]), np.array([0.2])
    path = save(tmp_path / "norm.npz", data)
    out = tmp_path / "r"
    assert main(["train", "--dataset", str(path), *FAST, "--set",
                 "normalize={mean: [0.5], std: [0.25]}", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["normalize"] == {
        "mean": [0.5], "std": [0.25]}
    assert main(["train", "--dataset", "digits", *FAST, "--set",
                 "normalize={mean: [0.1, 0.2, 0.3], std: 1}", "--out", str(tmp_path / "x")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "normalize mean has shape (3,)" in line and "(1, 8, 8)" in line
    assert not (tmp_path / "x").exists()
