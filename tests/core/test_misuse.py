"""Misuse is loud: a plain training loop, a lost projection, and the small things a user reads."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dipnet


def _model(**config) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return dipnet.project(model, dipnet.DIPConfig(**config))


def _plain_loop(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> list:
    torch.manual_seed(1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [w for w in caught if issubclass(w.category, dipnet.DIPMisuseWarning)]


def test_a_plain_loop_is_warned_once_for_each_mistake():
    model = _model()
    caught = _plain_loop(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # once each, not once per layer or per step
    assert "uncalibrated" in messages[0] and "dipnet.calibrate(model, batch)" in messages[0]
    assert "dipnet.parameter_groups(model)" in messages[1]
    assert "variance_lr=0.1" in messages[1]


def test_the_two_line_fix_silences_both():
    model = _model()
    dipnet.calibrate(model, torch.randn(64, 8))
    assert _plain_loop(model, torch.optim.Adam(dipnet.parameter_groups(model), lr=1e-3)) == []


def test_dip_loss_with_parameter_groups_is_silent():
    model = _model()
    loss_fn = dipnet.DIPLoss(num_train=32)
    opt = torch.optim.Adam(dipnet.parameter_groups(model), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", dipnet.DIPMisuseWarning)
        for _ in range(2):
            opt.zero_grad()
            loss_fn(model, x, y).total.backward()
            opt.step()


def test_no_warning_where_there_is_nothing_to_fix():
    # An absolute start needs no calibration; frozen variances have no learning rate; a config
    # without variance_lr asks for none of its own.
    for config in ({"init_variance": 0.01, "variance_lr": None},
                   {"init_variance": 0.01, "learn_variance": False}):
        model = _model(**config)
        assert _plain_loop(model, torch.optim.Adam(model.parameters(), lr=1e-3)) == []


def test_loaded_variances_count_as_calibrated(tmp_path):
    model = _model()
    dipnet.calibrate(model, torch.randn(64, 8))
    dipnet.save_pretrained(model, tmp_path / "m", save_weights=True)
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    dipnet.from_pretrained(fresh, tmp_path / "m")
    caught = _plain_loop(fresh, torch.optim.Adam(dipnet.parameter_groups(fresh), lr=1e-3))
    assert caught == []
    # The start recorded at save time comes back, so the summary can still say how far it moved.
    starts = [r["variance_start"] for r in dipnet.summary_dict(fresh)["layers"]]
    assert starts == pytest.approx([r["variance_start"]
                                    for r in dipnet.summary_dict(model)["layers"]])


def test_summary_shows_the_start_and_how_far_the_variances_moved():
    model = _model()
    assert "0.01 (uncalibrated)" in dipnet.summary(model)
    starts = dipnet.calibrate(model, torch.randn(64, 8))
    first = dipnet.projections(model)["0"]
    first.set_variance(2 * starts["0"], as_init=False)  # lambda doubled: moved 100 %
    rows = {r["name"]: r for r in dipnet.summary_dict(model)["layers"]}
    assert rows["0"]["variance_start"] == pytest.approx(starts["0"])
    assert rows["0"]["moved"] == pytest.approx(1.0, rel=1e-4)
    assert rows["2"]["moved"] == pytest.approx(0.0, abs=1e-4)
    text = dipnet.summary(model)
    assert "var start" in text and "moved" in text
    assert "100.0%" in text and "0.0%" in text
    frozen = _model(init_variance=0.02, learn_variance=False)
    assert "frozen" in dipnet.summary(frozen)


def test_loss_parts_print_as_numbers_not_tensors():
    model = _model(init_variance=0.01)
    parts = dipnet.DIPLoss(num_train=100)(model, torch.randn(5, 8), torch.randint(0, 3, (5,)))
    text = repr(parts)
    assert text.startswith("LossParts(total=")
    assert "tensor(" not in text and "shape (1, 5, 3)" in text
    assert len(text) < 200


def test_dir_shows_the_public_api_only():
    names = dir(dipnet)
    assert set(dipnet.__all__) <= set(names)
    for private in ("importlib", "TYPE_CHECKING", "Any", "inject", "_LAZY", "annotations"):
        assert private not in names
    assert "hf" in names


def test_import_hf_without_transformers_names_the_extra():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "try:\n    import dipnet.hf\n"
            "except ModuleNotFoundError as err:\n    print(err)\n")
    src = Path(dipnet.__file__).resolve().parents[1]  # this checkout, whatever the cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH",
                                                                                  "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == ("dipnet.hf needs transformers, which is not installed: "
                   "pip install 'dipnet[hf]'")
