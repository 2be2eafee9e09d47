"""Data sets: real files, shapes and ranges, the split rules, and clear errors for bad data."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from dipnet.errors import UserError
from dipnet.experiments.zoo import data as data_mod
from dipnet.experiments.zoo.data import list_datasets, load_dataset, read_idx

# name -> (train+val size, test size, example shape, classes). Official sizes of each set.
EXPECTED = {
    "digits": (1438, 359, (1, 8, 8), 10),          # 1,797 split 80/20 per class (fixed seed)
    "mnist1d": (4000, 1000, (40,), 10),
    "mnist": (60000, 10000, (1, 28, 28), 10),
    "fashion_mnist": (60000, 10000, (1, 28, 28), 10),
    "animal_mnist": (8000, 2000, (1, 28, 28), 10),  # 10,000 split 80/20 (fixed seed)
}


def test_registry_lists_every_documented_dataset():
    assert set(EXPECTED) | {"cifar10", "cifar100"} == set(list_datasets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_shapes_ranges_and_split(name):
    n_trainval, n_test, shape, classes = EXPECTED[name]
    d = load_dataset(name, val_fraction=0.1, seed=0)
    assert d.input_shape == shape and d.num_classes == classes == len(d.class_names)
    assert len(d.train) + len(d.val) == n_trainval and len(d.test) == n_test
    assert len(d.val) == round(0.1 * n_trainval)
    for split in (d.train, d.val, d.test):
        x, y = split
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == shape
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert int(y.min()) >= 0 and int(y.max()) < classes
    # every class is present in training; the data is not constant
    assert len(torch.unique(d.train.y)) == classes
    assert float(d.train.x.std()) > 0.05


def test_validation_split_is_fixed_disjoint_and_seeded():
    a = load_dataset("digits", val_fraction=0.2, seed=0)
    b = load_dataset("digits", val_fraction=0.2, seed=0)
    c = load_dataset("digits", val_fraction=0.2, seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)
    # the test split never depends on the split seed
    assert torch.equal(a.test.x, c.test.x)
    # train and val are disjoint: no validation image appears in training
    tr = {tuple(r) for r in a.train.x.flatten(1).tolist()}
    dup = sum(tuple(r) in tr for r in a.val.x.flatten(1).tolist())
    # digits holds a few exact duplicate images; allow those, not an overlap of the split
    assert dup <= 3


def test_max_train_subsets_training_only():
    d = load_dataset("digits", val_fraction=0.1, max_train=100)
    assert len(d.train) == 100 and len(d.val) == 144 and len(d.test) == 359


def test_mnist_matches_the_official_files():
    d = load_dataset("mnist", val_fraction=0.0)
    # Known facts of the official MNIST: first training label is 5, first test label is 7,
    # and the training set has 6,742 ones.
    assert int(d.test.y[0]) == 7
    assert int((torch.cat([d.train.y]) == 1).sum()) == 6742


def test_missing_files_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "REPO_DATA", tmp_path / "nothing")
    monkeypatch.setattr(data_mod, "FASHION_SYSTEM_DIR", tmp_path / "nothing")
    monkeypatch.setenv("DIPNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIPNET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("DIPNET_DATA", raising=False)
    with pytest.raises(UserError, match=r"not found in: .*setup\.sh"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"setup\.sh"):
        load_dataset("mnist")
    # an explicit --data-dir is the only place looked at, even when data/ has the files
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"not found in: .*empty"):
        load_dataset("mnist", data_dir=str(tmp_path / "empty"))


def test_truncated_idx_file_is_reported(tmp_path):
    # The MNIST files where the loader finds them (DIPNET_DATA first), not data/ of the repo.
    found = [d for d in data_mod._search_dirs(None, "mnist", [])
             if all((d / name).is_file() for name in data_mod._IDX_FILES)]
    if not found:
        pytest.skip("MNIST is not installed (scripts/setup.sh fetches it)")
    src = found[0]
    for name in data_mod._IDX_FILES:
        (tmp_path / name).write_bytes((src / name).read_bytes()[:100000]
                                      if name.startswith("train-images") else
                                      (src / name).read_bytes())
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_reader_reads_gzip_and_raw_alike(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    raw += arr.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not a uint8 IDX"):
        read_idx(tmp_path / "bad")


def _write_cifar10(root, n_per_batch=4):
    # The official "cifar-10-batches-py" layout and pickle structure (bytes keys, uint8 rows of
    # 3072 values), at toy size: the real archive cannot be had on these machines.
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch)), b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                  "frog", "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return folder


def test_cifar10_standard_format_is_read(tmp_path):
    _write_cifar10(tmp_path)
    d = load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.0)
    assert d.input_shape == (3, 32, 32) and len(d.train) == 20 and len(d.test) == 4
    assert d.class_names[0] == "airplane" and d.num_classes == 10
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(UserError, match="not a valid data pickle"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset_names_the_choices():
    with pytest.raises(UserError, match="choose one of .*digits"):
        load_dataset("imagenet")
