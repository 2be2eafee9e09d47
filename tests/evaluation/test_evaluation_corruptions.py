"""Corruptions: the imagecorruptions backend on real (upsampled digits) images, the signal
formulas, and accuracy under corruption of a trained MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dipnet.errors import UserError
from dipnet.evaluation.corruptions import (
    IMAGE_CORRUPTIONS,
    PIXELWISE_CORRUPTIONS,
    available_corruptions,
    corrupt,
    corrupt_images,
    corrupt_signals,
    corruption_accuracy,
)
from dipnet.evaluation.predictors import deterministic_predictor
from test_evaluation_support import digits_split, standard_mlp


def _images28(n: int = 12, channels: int = 1) -> torch.Tensor:
    x = digits_split()[2][:n].view(n, 1, 8, 8)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    if channels == 3:  # a colour tint per channel, so channels differ
        x = torch.cat([x, 0.7 * x, 0.4 * x + 0.1], 1)
    return x


def test_every_image_corruption_changes_images_and_keeps_shape_range_alignment():
    grey, colour = _images28(), _images28(channels=3)
    assert set(available_corruptions((1, 28, 28))) == set(IMAGE_CORRUPTIONS) - {"saturate"}
    for name in IMAGE_CORRUPTIONS:
        x = colour if name == "saturate" else grey
        for sev in (1, 2):
            out = corrupt_images(x, name, sev, seed=0)
            assert out.shape == x.shape and out.dtype == x.dtype, name
            assert out.min() >= 0 and out.max() <= 1, name
            assert (out - x).abs().mean() > 1e-3, (name, sev)  # it did something
            # Cropped back in place: still aligned with the clean digit (a shift by the
            # padding would destroy the pixel correlation).
            corr = torch.corrcoef(torch.stack([x.flatten(), out.flatten()]))[0, 1]
            assert corr > 0.3, (name, sev, corr.item())


def test_colour_images_and_reproducibility():
    x = _images28(6, channels=3)
    a = corrupt_images(x, "gaussian_noise", 1, seed=3)
    assert a.shape == x.shape
    assert torch.equal(a, corrupt_images(x, "gaussian_noise", 1, seed=3))
    assert not torch.equal(a, corrupt_images(x, "gaussian_noise", 1, seed=4))
    b = corrupt_images(x, "impulse_noise", 2, seed=3)
    assert torch.equal(b, corrupt_images(x, "impulse_noise", 2, seed=3))


def test_severity_increases_the_change():
    x = _images28()
    for name in ("gaussian_noise", "impulse_noise", "contrast", "defocus_blur", "pixelate"):
        d = [(corrupt_images(x, name, s) - x).abs().mean().item() for s in (1, 2, 3)]
        assert d[0] < d[1] < d[2], (name, d)


def test_signal_corruptions_match_their_formulas():
    x = torch.full((200, 40), 0.5)
    g = corrupt_signals(x, "gaussian_noise", 1, seed=0) - x
    assert g.std().item() == pytest.approx(0.08, rel=0.03)  # N(0, 0.08^2); 8000 draws
    imp = corrupt_signals(x, "impulse_noise", 2, seed=0)
    frac = (imp != 0.5).float().mean().item()
    assert frac == pytest.approx(0.06, abs=0.01)  # a fraction 0.06 set to 0 or 1
    assert set(imp[imp != 0.5].unique().tolist()) == {0.0, 1.0}
    sp = corrupt_signals(x, "speckle_noise", 1, seed=0) - x
    assert sp.std().item() == pytest.approx(0.5 * 0.15, rel=0.03)  # x * N(0, 0.15^2)


def test_available_corruptions_and_errors():
    assert len(available_corruptions((1, 28, 28), quick=True)) >= 10
    assert set(available_corruptions((1, 8, 8))) <= set(PIXELWISE_CORRUPTIONS)
    assert available_corruptions((40,)) == ("gaussian_noise", "impulse_noise", "speckle_noise")
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt(_images28(2), "rain", 1)
    with pytest.raises(UserError, match="severity"):
        corrupt(_images28(2), "fog", 7)
    with pytest.raises(UserError, match="not meaningful"):
        corrupt(torch.rand(2, 1, 8, 8), "fog", 1)


def test_corruption_accuracy_of_trained_mlp():
    model = standard_mlp()
    _, _, x, y = digits_split()
    x8 = x.view(-1, 1, 8, 8)
    pred = deterministic_predictor(lambda z: model(z.flatten(1)))
    rows = corruption_accuracy([pred], x8, y, ["gaussian_noise", "impulse_noise"], [1, 3])
    clean = (model(x).argmax(-1) == y).float().mean().item()
    acc = {(r["corruption"], r["severity"]): r["accuracy"] for r in rows if r["severity"]}
    for name in ("gaussian_noise", "impulse_noise"):
        assert acc[(name, 3)] < acc[(name, 1)] <= clean + 0.01
    assert acc[("impulse_noise", 3)] < clean - 0.05  # 9 % salt and pepper hurts an MLP
    mean = [r for r in rows if r["corruption"] == "mean"]
    assert len(mean) == 1 and mean[0]["accuracy"] == pytest.approx(
        sum(acc.values()) / 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_corruptions_are_the_package_image_by_image(channels):
    # The vectorised corruptions must give exactly what the package gives one image at a time
    # after the same numpy seed (the code path of the first release).
    import numpy as np
    from imagecorruptions import corrupt as package_corrupt

    from dipnet.evaluation.corruptions import VECTORISED, _corrupt_batch

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    if channels == 1:
        imgs = np.repeat(imgs[..., :1], 3, axis=3)
    for name in VECTORISED:
        for sev in (1, 3, 5):
            np.random.seed(11)
            ref = np.stack([np.asarray(package_corrupt(im, severity=sev, corruption_name=name),
                                       dtype=np.float32) for im in imgs])
            np.random.seed(11)
            got = _corrupt_batch(imgs, name, sev)
            assert np.array_equal(ref, got), (name, sev)


def test_grey_brightness_shortcut_on_every_grey_value():
    import numpy as np
    from imagecorruptions import corrupt as package_corrupt

    from dipnet.evaluation.corruptions import _corrupt_batch

    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=3)
    grey = np.pad(grey, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="edge")  # 32 x 32
    for sev in range(1, 6):
        ref = np.asarray(package_corrupt(grey[0], severity=sev, corruption_name="brightness"),
                         dtype=np.float32)
        assert np.array_equal(_corrupt_batch(grey, "brightness", sev)[0], ref), sev


def test_corrupted_copies_are_cached_per_process(monkeypatch, tmp_path):
    from dipnet.evaluation import corruptions as mod

    monkeypatch.setenv("DIPNET_CACHE", str(tmp_path))  # an empty disk cache
    calls = []
    real = mod.corrupt_images
    monkeypatch.setattr(mod, "corrupt_images", lambda *a: calls.append(a[1]) or real(*a))
    mod._CACHE.clear()
    x = _images28(6)
    first = corrupt(x, "fog", 1, seed=3)
    again = corrupt(x, "fog", 1, seed=3)
    assert torch.equal(first, again) and calls == ["fog"]  # made once
    again.zero_()  # a hit is a fresh tensor: the cached copy is not shared
    assert torch.equal(corrupt(x, "fog", 1, seed=3), first) and calls == ["fog"]
    other = corrupt(x, "fog", 1, seed=4)  # another seed, severity or input is another entry
    corrupt(x + 0.01, "fog", 1, seed=3)
    assert not torch.equal(other, first) and calls == ["fog", "fog", "fog"]
    monkeypatch.setattr(mod, "CACHE_BYTES", 0)  # nothing fits: nothing is kept
    mod._CACHE.clear()
    corrupt(x, "fog", 1, seed=3)
    assert len(mod._CACHE) == 0
