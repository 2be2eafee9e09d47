"""The on-disk cache of corrupted images (issue 10 item 7): a fresh process (each `dipnet
evaluate`, each sweep worker) reads the corrupted subset instead of importing the corruption
package and corrupting again. A cached copy must be the fresh one bit for bit, and a changed
input, setting, formula or package must never read a stale copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dipnet.errors import UserError
from dipnet.evaluation import corruptions as mod
from test_evaluation_support import digits_split


def _images(n: int = 6) -> torch.Tensor:
    x = digits_split()[2][:n].view(n, 1, 8, 8)
    return F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture
def disk(monkeypatch, tmp_path):
    """An empty disk cache and an empty in-process cache; records the real corruptions."""
    monkeypatch.setenv("DIPNET_CACHE", str(tmp_path))
    mod._CACHE.clear()
    calls: list[str] = []
    real = mod.corrupt_images
    monkeypatch.setattr(mod, "corrupt_images",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    yield tmp_path / "corruptions", calls
    mod._CACHE.clear()


@pytest.mark.parametrize("name", ["fog", "gaussian_noise", "pixelate"])
def test_a_disk_hit_is_the_fresh_corruption_bit_for_bit(disk, name):
    folder, calls = disk
    x = _images()
    fresh = mod.corrupt_images(x, name, 2, seed=5)  # corrupted afresh, no cache
    first = mod.corrupt(x, name, 2, seed=5)
    assert calls == [name, name] and len(list(folder.glob("*.pt"))) == 1
    mod._CACHE.clear()  # as in a new process
    again = mod.corrupt(x, name, 2, seed=5)
    assert calls == [name, name]  # read from disk, not corrupted again
    assert torch.equal(again, fresh) and torch.equal(first, fresh)
    assert again.dtype == x.dtype and again.device == x.device


def test_other_inputs_settings_and_code_are_other_files(disk, monkeypatch):
    folder, calls = disk
    x = _images()
    base = mod.corrupt(x, "fog", 1, seed=3)
    for args in ((x, "fog", 1, 4), (x, "fog", 2, 3), (x + 0.01, "fog", 1, 3),
                 (x.double(), "fog", 1, 3)):
        mod.corrupt(*args)
    assert len(calls) == 5 and len(list(folder.glob("*.pt"))) == 5
    # A changed formula (this module's source) or package version reads nothing old.
    mod._CACHE.clear()
    monkeypatch.setattr(mod, "_code_stamp", lambda: "another version")
    assert torch.equal(mod.corrupt(x, "fog", 1, seed=3), base) and len(calls) == 6


def test_a_damaged_or_foreign_file_is_corrupted_again(disk):
    folder, calls = disk
    x = _images()
    good = mod.corrupt(x, "defocus_blur", 1, seed=0)
    (path,) = folder.glob("*.pt")
    path.write_bytes(b"not a tensor")
    mod._CACHE.clear()
    assert torch.equal(mod.corrupt(x, "defocus_blur", 1, seed=0), good) and len(calls) == 2
    torch.save(torch.zeros(3), path)  # readable, but not this batch's shape
    mod._CACHE.clear()
    assert torch.equal(mod.corrupt(x, "defocus_blur", 1, seed=0), good) and len(calls) == 3


def test_the_folder_stays_within_its_budget_and_zero_turns_it_off(disk, monkeypatch):
    folder, calls = disk
    x = _images()
    one = x.numel() * x.element_size()
    monkeypatch.setattr(mod, "DISK_CACHE_BYTES", int(2.5 * one) + 2000)  # room for two files
    for seed in range(4):
        mod.corrupt(x, "gaussian_noise", 1, seed=seed)
    kept = sorted(folder.glob("*.pt"))
    assert len(kept) == 2 and sum(f.stat().st_size for f in kept) <= mod.DISK_CACHE_BYTES
    monkeypatch.setattr(mod, "DISK_CACHE_BYTES", 0)
    mod._CACHE.clear()
    for f in kept:
        f.unlink()
    mod.corrupt(x, "gaussian_noise", 1, seed=0)
    assert not list(folder.glob("*.pt"))


def test_an_unwritable_cache_folder_is_no_error(disk, monkeypatch, tmp_path):
    _, calls = disk
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DIPNET_CACHE", str(blocker))
    x = _images()
    assert torch.equal(mod.corrupt(x, "contrast", 1), mod.corrupt_images(x, "contrast", 1))


def test_bad_names_fail_before_the_disk_is_read(disk):
    with pytest.raises(UserError, match="unknown corruption"):
        mod.corrupt(_images(), "no_such_corruption", 1)
    with pytest.raises(UserError, match="severity"):
        mod.corrupt(_images(), "fog", 7)
