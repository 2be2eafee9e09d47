"""Real data sets as in-memory tensors: a registry, loaders, and the train/val/test split.

Every loader returns pixels / signals as float32 in [0, 1] (images (N, C, H, W), signals (N, D))
and labels as int64. The validation split is carved from the training split with a fixed seed;
the test split is the data set's official one (or a fixed, documented split where there is none)
and is never used to select anything.

Besides the registered names, a data set may be the user's own (see "Your own data" below and
docs/cli.md): a ``.npz`` file (x_train, y_train, x_test, y_test; optional x_val / y_val and
mean / std), or ``package.module:factory`` returning the same arrays. Both are validated (dtype,
shapes, label range, finite values) with one-line errors. A factory is imported, which runs its
module, so one read from a file needs the user's say (`require_dataset_code_allowed`).
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from dipnet._util import trust
from dipnet._util.cache import cache_dir
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_path

# The repository's data folder (scripts/setup.sh fills it); meaningful for an editable install.
REPO_DATA = Path(__file__).resolve().parents[4] / "data"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SETUP_HINT = "run scripts/setup.sh, or pass --data-dir DIR"


@dataclass
class Split:
    """One split: ``x`` float32 in [0, 1], ``y`` int64 class indices. Unpacks as ``x, y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.x, self.y))

    def to(self, device: torch.device | str) -> "Split":
        """The split on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DatasetSplits:
    """A data set split three ways, plus what a model needs to know about it.

    Attributes:
        name: the registry name.
        train, val, test: `Split` objects (val may be empty when val_fraction = 0).
        num_classes: number of classes.
        input_shape: shape of one example, e.g. (1, 28, 28) or (40,).
        class_names: a name per class.
        info: provenance (where the files were read from, licence, notes).
        normalize: the input normalisation a user's file ships (``{"mean": [...], "std":
            [...]}``), or None; the model gets it as its first layer unless the run sets its
            own ``normalize`` (`dipnet.experiments.zoo.normalize`).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    info: dict[str, str] = field(default_factory=dict)
    normalize: dict[str, list] | None = None


# A loader returns (x_train, y_train, x_test, y_test, class_names, info) as numpy arrays, given
# the data_dir (or None); x has its final shape and is float32 in [0, 1] or uint8 (0..255, scaled
# after the split: converting only the rows kept saves a 190 MB copy for MNIST).
Loader = Callable[[str | None], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                      list[str], dict[str, str]]]
_DATASETS: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str = "") -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir) -> (x_tr, y_tr, x_te, y_te, names, info)``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    def deco(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        _DATASETS[name] = (fn, description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


def list_datasets() -> list[str]:
    """Names of the registered data sets."""
    return sorted(_DATASETS)


def describe_datasets() -> dict[str, str]:
    """Name -> one-line description of every registered data set."""
    return {name: desc for name, (_, desc) in sorted(_DATASETS.items())}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 seed: int = 0, max_train: int | None = None,
                 max_val: int | None = None) -> DatasetSplits:
    """Load a registered data set and split it into train / validation / test.

    Args:
        name: a name from `list_datasets()`, a ``.npz`` file or ``package.module:factory``
            (see `load_own_data`).
        data_dir: folder holding the data set's files; None searches the default places
            (see each loader and docs/experiments.md).
        val_fraction: fraction of the official training split held out for validation.
        seed: seed of the validation split and of the ``max_train`` subset.
        max_train: keep only this many training examples (after carving the validation set).
        max_val: keep only this many validation examples (the rest is dropped, not trained on,
            so the training set does not depend on it).
    Returns:
        `DatasetSplits`.
    Raises:
        UserError: unknown name, missing or corrupt files (saying where it looked and how to
            fix it), arrays of the user's own data that do not validate, or bad split sizes.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction} must be in [0, 1).")
    own: OwnData | None = None
    if is_custom_dataset(name):
        own = load_own_data(name)
        x_tr, y_tr, x_te, y_te, class_names, info = (own.x_train, own.y_train, own.x_test,
                                                     own.y_test, own.class_names, own.info)
    else:
        check_dataset_name(name)
        loader, _ = _DATASETS[name]
        x_tr, y_tr, x_te, y_te, class_names, info = loader(None if data_dir is None
                                                           else str(data_dir))
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(y_tr), generator=gen)
    # a file with its own x_val keeps it; otherwise val_fraction is carved from training
    n_val = 0 if own is not None and own.x_val is not None else int(round(val_fraction
                                                                          * len(y_tr)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if max_train is not None:
        if max_train < 2:
            raise UserError(f"max_train={max_train} must be >= 2.")
        train_idx = train_idx[:max_train]
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.int64))
    if own is not None and own.x_val is not None:
        nv = len(own.y_val) if max_val is None else min(max_val, len(own.y_val))
        val = Split(_to_unit(torch.from_numpy(own.x_val[:nv])),
                    torch.from_numpy(own.y_val[:nv].astype(np.int64)))
    else:
        if max_val is not None:
            val_idx = val_idx[:max_val]
        val = Split(_to_unit(xt[val_idx]), yt[val_idx].contiguous())
    return DatasetSplits(
        name=dataset_label(name),
        train=Split(_to_unit(xt[train_idx]), yt[train_idx].contiguous()),
        val=val,
        test=Split(_to_unit(torch.from_numpy(x_te)), torch.from_numpy(y_te.astype(np.int64))),
        num_classes=len(class_names),
        input_shape=tuple(x_tr.shape[1:]),
        class_names=list(class_names),
        info=info,
        normalize=own.normalize if own is not None else None,
    )


def check_dataset_name(name: str) -> None:
    """Refuse a name that is neither registered nor the user's own data (.npz / factory).

    Raises:
        UserError: naming the registered data sets and the two ways to give your own.
    """
    if not is_custom_dataset(name) and name not in _DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(list_datasets())}"
                        ", or give your own as path/to/file.npz or package.module:factory.")
    if isinstance(name, str) and name.endswith(".npz") and not Path(name).is_file():
        raise UserError(f"data set file {name} does not exist; give the path of a .npz file "
                        "(arrays x_train, y_train, x_test, y_test).")


# ---------------------------------------------------------------------- helpers
def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; float input passes through (contiguous)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32).contiguous()


def _fixed_split(n: int, test_fraction: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split with a constant seed, for data sets without an official test split.

    Hand-written (a few lines) instead of sklearn's train_test_split: importing sklearn costs
    seconds on a busy 2-core machine, and this split must never change.
    """
    rng = np.random.RandomState(0)
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test.append(rng.permutation(idx)[: int(round(test_fraction * len(idx)))])
    te = np.sort(np.concatenate(test))
    tr = np.setdiff1d(np.arange(n), te)
    return tr, te


def _cached_arrays(name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the cache ($DIPNET_CACHE/<name>.pt, weights_only), else ``make()`` them and
    cache them atomically. A corrupt cache file is rebuilt, not an error."""
    path = cache_dir() / f"{name}.pt"
    if path.is_file():
        try:
            return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
        except Exception:  # noqa: BLE001 (any damage: rebuild)
            pass
    # np.array copies: IDX arrays read with frombuffer are read-only, which torch warns about.
    arrays = {k: np.array(v, order="C") for k, v in make().items()}
    try:
        with atomic_path(path) as tmp:
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)
    except OSError:
        pass  # a read-only home: work without the cache
    return arrays


def _search_dirs(data_dir: str | None, subdir: str, extra: list[Path]) -> list[Path]:
    if data_dir is not None:  # an explicit folder is the only place looked at
        return [Path(data_dir), Path(data_dir) / subdir]
    dirs: list[Path] = []
    env = os.environ.get("DIPNET_DATA")
    if env:
        dirs += [Path(env) / subdir, Path(env)]
    dirs += [REPO_DATA / subdir] + extra + [cache_dir() / subdir]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (raw or gzipped) into a numpy array.

    Raises:
        UserError: if the file is truncated or not IDX.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise UserError(f"cannot read {path}: {err}; delete it and {SETUP_HINT}.") from None
    # Magic: two zero bytes, a type code (0x08 = uint8), the number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file; delete it and {SETUP_HINT}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path} is truncated or corrupt ({len(raw)} bytes, expected "
                        f"{expected}); delete it and {SETUP_HINT}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx(dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for stem in _IDX_FILES:
            for cand in (d / stem, d / (stem + ".gz")):
                if cand.is_file():
                    found[stem] = cand
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _download(urls: dict[str, str], dest: Path, what: str, sha256: dict[str, str]) -> None:
    """Fetch files for users with internet (never in tests: the files exist locally)."""
    if os.environ.get("DIPNET_NO_DOWNLOAD"):
        raise OSError("downloads disabled by DIPNET_NO_DOWNLOAD")
    dest.mkdir(parents=True, exist_ok=True)
    for name, url in urls.items():
        target = dest / name
        if target.is_file():
            continue
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (fixed https URLs)
            data = resp.read()
        digest = hashlib.sha256(data).hexdigest()
        if name in sha256 and digest != sha256[name]:
            raise OSError(f"checksum mismatch for {url}")
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)


def _load_idx_dataset(name: str, data_dir: str | None, subdir: str, extra: list[Path],
                      base_url: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                              str]:
    dirs = _search_dirs(data_dir, subdir, extra)
    found = _find_idx(dirs)
    if found is None and data_dir is None:
        try:
            _download({s + ".gz": f"{base_url}{s}.gz" for s in _IDX_FILES},
                      cache_dir() / subdir, name, {})
        except OSError:
            pass  # offline: fall through to the error that lists where we looked
        found = _find_idx([cache_dir() / subdir])
    if found is None:
        where = ", ".join(str(d) for d in dirs)
        raise UserError(f"{name} IDX files ({_IDX_FILES[0]}[.gz] and the other three) not "
                        f"found in: {where}; {SETUP_HINT} pointing to a folder that holds them.")
    src = found[_IDX_FILES[0]]
    stamp = "-".join(f"{found[f].stat().st_size}.{int(found[f].stat().st_mtime)}"
                     for f in _IDX_FILES)
    key = f"idx-{subdir}-{hashlib.sha1((str(src.parent) + stamp).encode()).hexdigest()[:12]}"
    # Parsed uint8 arrays are cached: un-gzipping Fashion-MNIST costs over a second each time.
    arrays = _cached_arrays(key, lambda: {s: read_idx(found[s]) for s in _IDX_FILES})
    xtr, ytr, xte, yte = (arrays[s] for s in _IDX_FILES)
    if xtr.ndim != 3 or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise UserError(f"{name} files in {src.parent} do not fit together "
                        f"(images {xtr.shape}, labels {ytr.shape}); {SETUP_HINT}.")
    return xtr[:, None], ytr, xte[:, None], yte, str(src.parent)  # (N, 1, 28, 28) uint8


# ---------------------------------------------------------------------- the data sets
@register_dataset("digits", "scikit-learn digits: 1,797 8x8 images, 10 classes (fixed 80/20 "
                            "test split, seed 0)")
def _digits(data_dir: str | None):
    def make() -> dict[str, np.ndarray]:
        # Cached: importing sklearn takes seconds, and every test process would pay it.
        from sklearn.datasets import load_digits

        d = load_digits()
        return {"images": d.images, "target": d.target}

    d = _cached_arrays("digits", make)
    x = (d["images"].astype(np.float32) / 16.0)[:, None]  # values 0..16 -> [0, 1]; (N,1,8,8)
    y = d["target"].astype(np.int64)
    tr, te = _fixed_split(len(y), 0.2, y)
    return (x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)],
            {"source": "sklearn.datasets.load_digits", "licence": "BSD-3"})


@register_dataset("mnist1d", "MNIST-1D: 4,000 / 1,000 length-40 signals, 10 classes (generated "
                             "locally, scaled to [0, 1])")
def _mnist1d(data_dir: str | None):
    def make() -> dict[str, np.ndarray]:
        # Generated from the package's default arguments (seed inside them), so it is the
        # standard MNIST-1D. Never get_dataset(): it downloads.
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}

    arrays = _cached_arrays("mnist1d", make)
    x, xt = arrays["x"].astype(np.float32), arrays["x_test"].astype(np.float32)
    # MNIST-1D signals are unbounded reals; scale with the TRAINING min / max so that the
    # [0, 1] perturbation budgets (sigma, epsilon = 0.2) mean the same as for pixels.
    lo, hi = float(x.min()), float(x.max())
    x, xt = (x - lo) / (hi - lo), np.clip((xt - lo) / (hi - lo), 0.0, 1.0)
    return (x, arrays["y"], xt, arrays["y_test"], [str(i) for i in range(10)],
            {"source": "mnist1d.data.make_dataset(get_dataset_args())", "licence": "Apache-2.0",
             "scaling": f"(x - {lo:.4f}) / ({hi - lo:.4f}), test clipped to [0, 1]"})


@register_dataset("mnist", "MNIST: 60,000 / 10,000 28x28 images (IDX files)")
def _mnist(data_dir: str | None):
    xtr, ytr, xte, yte, where = _load_idx_dataset(
        "MNIST", data_dir, "mnist", [], "https://ossci-datasets.s3.amazonaws.com/mnist/")
    return xtr, ytr, xte, yte, [str(i) for i in range(10)], {"source": where,
                                                              "licence": "CC BY-SA 3.0"}


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


@register_dataset("fashion_mnist", "Fashion-MNIST: 60,000 / 10,000 28x28 images (IDX files)")
def _fashion(data_dir: str | None):
    xtr, ytr, xte, yte, where = _load_idx_dataset(
        "Fashion-MNIST", data_dir, "fashion-mnist", [FASHION_SYSTEM_DIR],
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    return xtr, ytr, xte, yte, list(FASHION_CLASSES), {"source": where, "licence": "MIT"}


# Order as listed by the package's description (alphabetical); the package does not map ids.
ANIMAL_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep",
                  "Zebra"]


@register_dataset("animal_mnist", "Animal-MNIST: 10,000 28x28 animal silhouettes (an "
                                  "out-of-distribution set; fixed 80/20 split, seed 0)")
def _animal(data_dir: str | None):
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / "Animal_MNIST"]
    try:
        import importlib.util

        spec = importlib.util.find_spec("animal_mnist")
        if spec is not None and spec.origin:
            dirs.append(Path(spec.origin).parent / "data" / "Animal_MNIST")
    except (ImportError, ValueError):
        pass
    for d in dirs:
        xp, yp = d / "animal_data_version_3.gz", d / "animal_label_version_3.gz"
        if xp.is_file() and yp.is_file():
            x, y = _safe_unpickle_gz(xp), _safe_unpickle_gz(yp)
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                    and x.shape[1:] == (28, 28) and len(x) == len(y)):
                raise UserError(f"{xp} does not hold 28x28 images with matching labels; "
                                "reinstall with: pip install --no-deps animal-mnist==0.4")
            x = x.astype(np.uint8)[:, None]  # scaled to [0, 1] after the split
            y = y.astype(np.int64)
            tr, te = _fixed_split(len(y), 0.2, y)
            return (x[tr], y[tr], x[te], y[te], list(ANIMAL_CLASSES),
                    {"source": str(d), "licence": "MIT"})
    raise UserError("Animal-MNIST files (animal_data_version_3.gz) not found in "
                    f"{', '.join(map(str, dirs)) or 'the animal_mnist package'}; install them "
                    "with: pip install --no-deps animal-mnist==0.4 (scripts/setup.sh does).")


# ---------------------------------------------------------------------- CIFAR
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and builtins: the CIFAR / Animal-MNIST files are pickles
    (their official format), and a plain pickle.load would run any code a tampered file names.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"),
        ("builtins", "tuple"), ("builtins", "bytes"), ("builtins", "str"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _safe_unpickle(data: bytes, path: Path):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any parse failure is a corrupt / foreign file
        raise UserError(f"{path} is not a valid data pickle ({err}); delete it and "
                        f"{SETUP_HINT}.") from None


def _safe_unpickle_gz(path: Path):
    try:
        data = gzip.open(path, "rb").read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}; reinstall its package or "
                        f"{SETUP_HINT}.") from None
    return _safe_unpickle(data, path)


def _cifar(data_dir: str | None, folder: str, archive: str, train_files: list[str],
           test_file: str, label_key: bytes, meta: tuple[str, bytes]):
    dirs = _search_dirs(data_dir, "cifar", [])
    roots = [d / folder for d in dirs] + [d for d in dirs if d.name == folder]
    root = next((r for r in roots if (r / test_file).is_file()), None)
    if root is None and data_dir is None:
        try:
            dest = cache_dir() / "cifar"
            _download({archive: f"https://www.cs.toronto.edu/~kriz/{archive}"}, dest, folder, {})
            with tarfile.open(dest / archive) as tar:
                tar.extractall(dest, filter="data")
            root = dest / folder if (dest / folder / test_file).is_file() else None
        except (OSError, tarfile.TarError):
            root = None
    if root is None:
        raise UserError(f"{folder}/{test_file} not found in: {', '.join(map(str, dirs))}; "
                        f"unpack {archive} (the official python version) there, or pass "
                        "--data-dir DIR pointing to the folder that holds it.")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / name
        if not path.is_file():
            raise UserError(f"{path} is missing; unpack {archive} again.")
        d = _safe_unpickle(path.read_bytes(), path)
        if not isinstance(d, dict) or b"data" not in d or label_key not in d:
            raise UserError(f"{path} is not a CIFAR batch file; unpack {archive} again.")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x, np.asarray(d[label_key], dtype=np.int64)  # uint8, scaled after the split

    parts = [read(f) for f in train_files]
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xte, yte = read(test_file)
    names_path = root / meta[0]
    names: list[str] = []
    if names_path.is_file():
        m = _safe_unpickle(names_path.read_bytes(), names_path)
        if isinstance(m, dict) and meta[1] in m:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in m[meta[1]]]
    if not names:
        names = [str(i) for i in range(int(ytr.max()) + 1)]
    return xtr, ytr, xte, yte, names, {"source": str(root)}


@register_dataset("cifar10", "CIFAR-10: 50,000 / 10,000 32x32 colour images "
                             "(cifar-10-batches-py)")
def _cifar10(data_dir: str | None):
    return _cifar(data_dir, "cifar-10-batches-py", "cifar-10-python.tar.gz",
                  [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels",
                  ("batches.meta", b"label_names"))


@register_dataset("cifar100", "CIFAR-100: 50,000 / 10,000 32x32 colour images, 100 fine "
                              "classes (cifar-100-python)")
def _cifar100(data_dir: str | None):
    return _cifar(data_dir, "cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test",
                  b"fine_labels", ("meta", b"fine_label_names"))


# ---------------------------------------------------------------------- your own data
#: Arrays of a user's data set (.npz file or factory): required, then optional.
OWN_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OWN_OPTIONAL = ("x_val", "y_val", "mean", "std", "class_names")


def is_custom_dataset(name: object) -> bool:
    """Whether ``name`` is the user's own data: a ``.npz`` path or ``package.module:factory``."""
    return isinstance(name, str) and (name.endswith(".npz") or trust.names_code(name))


def dataset_label(name: str) -> str:
    """The short name a data set goes by in run names and results: the registered name, a
    file's stem (``data/my_set.npz`` -> ``my_set``) or a factory's name (``pkg.mod:make`` ->
    ``make``)."""
    if name.endswith(".npz"):
        return Path(name).stem
    if trust.names_code(name):
        return name.rpartition(":")[2]
    return name


def require_dataset_code_allowed(name: str, source: str) -> None:
    """Refuse to import a data-set factory read from ``source`` unless the user allowed it.

    Raises:
        UserError: naming the factory, where it came from, and how to allow it.
    """
    if is_custom_dataset(name) and not name.endswith(".npz") and not trust.code_allowed(name):
        raise UserError(
            f"{source} names user code as its data set ({name!r}); loading it would import and "
            "run that module, so dipnet does not do it for a value read from a file. If you "
            f"trust it, pass --allow-code, give it yourself with --dataset {name}, or call "
            "load_run(..., allow_code=True).")


@dataclass
class OwnData:
    """A user's data set, validated: numpy arrays (x uint8 or float, y int64) and metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    info: dict[str, str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    normalize: dict[str, list] | None = None


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of a .npz file; pickled (object) arrays are refused, never unpickled."""
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist; give the path of a .npz file.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{path} holds Python objects (pickled arrays), which dipnet does "
                            "not load: save plain numeric arrays with numpy.savez.") from None
        raise UserError(f"{path} is not a readable .npz file ({err}).") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npz file ({err}); write it with "
                        "numpy.savez.") from None


def _from_factory(ref: str) -> dict[str, np.ndarray]:
    from dipnet._util.trust import load_factory

    factory = load_factory(ref, "data set")
    try:
        required = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin without a signature: call it and see
        required = []
    if required:
        raise UserError(f"data set factory {ref!r} needs arguments ({', '.join(required)}); "
                        "a data set factory is called with no arguments: give their values "
                        "defaults or wrap it in a function that takes none.")
    try:
        made = factory()
    except Exception as err:  # noqa: BLE001 (the user's code: any failure is one line)
        text = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"data set factory {ref!r} failed: {type(err).__name__}: {text[:300]}; "
                        "fix the factory (run it in Python to see the traceback).") from None
    if not isinstance(made, dict):
        raise UserError(f"data set factory {ref!r} returned {type(made).__name__}; it must "
                        f"return a dict of arrays with keys {', '.join(OWN_REQUIRED)} (optional "
                        f"{', '.join(OWN_OPTIONAL)}).")
    out = {}
    for key, value in made.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        out[str(key)] = value if key == "class_names" else np.asarray(value)
    return out


def load_own_data(name: str) -> OwnData:
    """Read and validate a user's data set: a ``.npz`` file or ``package.module:factory``
    (called with no arguments, returning a dict of the same arrays).

    Arrays: ``x_train``, ``y_train``, ``x_test``, ``y_test``; optional ``x_val`` and ``y_val``
    (then the validation split, instead of one carved from training), ``mean`` and ``std``
    (the model's input normalisation: a number, one per channel, or the input's shape) and
    ``class_names``. x is float in [0, 1] or uint8 pixels (divided by 255), shaped (N, ...) with
    the same example shape in every split; y holds integer labels 0..C-1.

    Raises:
        UserError: a missing or unreadable file, a factory that cannot be imported, or arrays
            that do not validate (one line naming the array and the fix).
    """
    src = name if name.endswith(".npz") else f"data set factory {name}"
    arrays = _read_npz(Path(name), "data set") if name.endswith(".npz") else _from_factory(name)
    unknown = sorted(set(arrays) - set(OWN_REQUIRED) - set(OWN_OPTIONAL))
    if unknown:
        raise UserError(f"{src} holds unknown array(s) {', '.join(unknown)}; the arrays are "
                        f"{', '.join(OWN_REQUIRED)} and optionally {', '.join(OWN_OPTIONAL)}.")
    missing = [k for k in OWN_REQUIRED if k not in arrays]
    if missing:
        raise UserError(f"{src} lacks {', '.join(missing)}; a data set needs "
                        f"{', '.join(OWN_REQUIRED)}.")
    for a, b in (("x_val", "y_val"), ("mean", "std")):
        if (a in arrays) != (b in arrays):
            raise UserError(f"{src} has {a if a in arrays else b} without "
                            f"{b if a in arrays else a}: give both or neither.")
    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])
    for split in splits:
        check_inputs(arrays[f"x_{split}"], f"{src}: x_{split}")
        check_labels(arrays[f"y_{split}"], len(arrays[f"x_{split}"]), f"{src}: y_{split}")
    shape = tuple(arrays["x_train"].shape[1:])
    for split in splits[1:]:
        if tuple(arrays[f"x_{split}"].shape[1:]) != shape:
            raise UserError(f"{src}: x_{split} has examples of shape "
                            f"{tuple(arrays[f'x_{split}'].shape[1:])} but x_train {shape}; "
                            "every split needs the same example shape.")
    if len(arrays["y_train"]) < 2 or len(arrays["y_test"]) < 1:
        raise UserError(f"{src}: x_train needs at least 2 examples and x_test at least 1.")
    names_given = "class_names" in arrays
    if names_given:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1).tolist()]
    else:
        class_names = [str(i) for i in range(int(arrays["y_train"].max()) + 1)]
    if len(class_names) < 2:
        raise UserError(f"{src}: y_train holds a single class; a classifier needs at least 2.")
    for split in splits:
        top = int(arrays[f"y_{split}"].max())
        if top >= len(class_names):
            where = ("class_names" if names_given else f"y_train (labels 0..{len(class_names) - 1})")
            raise UserError(f"{src}: y_{split} has label {top}, beyond the {len(class_names)} "
                            f"classes of {where}; labels must be 0..C-1 (give class_names for "
                            "classes missing from training).")
    normalize = None
    if "mean" in arrays:
        normalize = check_normalization(arrays["mean"], arrays["std"], shape, src)
    lo = min(float(arrays[f"x_{s}"].min()) for s in splits)
    hi = max(float(arrays[f"x_{s}"].max()) for s in splits)
    info = {"source": name, "range": f"[{lo:g}, {hi:g}]"}
    if arrays["x_train"].dtype != np.uint8 and (lo < 0 or hi > 1):
        info["note"] = ("inputs outside [0, 1]: attacks and perturbations are then not "
                        "clipped; give [0, 1] inputs plus mean/std for a standardising model")
    return OwnData(arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), class_names, info,
                   arrays.get("x_val"), None if "y_val" not in arrays
                   else arrays["y_val"].astype(np.int64), normalize)


def check_inputs(x: np.ndarray, what: str) -> None:
    """x: uint8 or floating, shaped (N, ...) with N >= 1 and at least one feature, finite.

    Raises:
        UserError: naming ``what`` and the fix.
    """
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise UserError(f"{what} has dtype {x.dtype}; give float values in [0, 1] (or uint8 "
                        "pixels 0..255).")
    if x.ndim < 2 or x.shape[0] < 1 or x.size == 0:
        raise UserError(f"{what} has shape {tuple(x.shape)}; give one row per example, shaped "
                        "(N, features) or (N, channels, height, width).")
    if x.dtype.kind == "f":
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise UserError(f"{what} holds {bad} non-finite value(s) (NaN or inf); replace or "
                            "drop those examples.")


def check_labels(y: np.ndarray, n: int, what: str) -> None:
    """y: integer class labels >= 0, one per example (``n`` of them).

    Raises:
        UserError: naming ``what`` and the fix.
    """
    if y.dtype.kind not in "iu":
        raise UserError(f"{what} has dtype {y.dtype}; labels must be integers 0..C-1.")
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{what} has shape {tuple(y.shape)}; give one integer label per example "
                        f"(shape ({n},)).")
    if n and int(y.min()) < 0:
        raise UserError(f"{what} has the negative label {int(y.min())}; labels must be 0..C-1.")


def check_normalization(mean: object, std: object, input_shape: tuple[int, ...],
                        what: str) -> dict[str, list]:
    """Validate a normalisation for inputs of ``input_shape``: ``mean`` / ``std`` a number,
    one value per channel (``input_shape[0]``) or an array of ``input_shape``; std > 0.

    Returns:
        ``{"mean": list, "std": list}`` (plain lists, as a run config stores them).
    Raises:
        UserError: a shape that fits neither form, a non-finite value or a std <= 0.
    """
    out: dict[str, list] = {}
    for key, value in (("mean", mean), ("std", std)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{what}: normalize {key} {value!r} is not a number or a list of "
                            "numbers.") from None
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if not (arr.shape in ((1,), (input_shape[0],)) or arr.shape == tuple(input_shape)):
            raise UserError(f"{what}: normalize {key} has shape {arr.shape}; give one number, "
                            f"{input_shape[0]} (one per channel) or an array of the input shape "
                            f"{tuple(input_shape)}.")
        if not np.isfinite(arr).all() or (key == "std" and (arr <= 0).any()):
            raise UserError(f"{what}: normalize {key} must be finite"
                            + (" and > 0" if key == "std" else "") + f", got {arr.tolist()}.")
        out[key] = arr.tolist()
    return out


def load_extra_set(name: str, kind: str, input_shape: tuple[int, ...], num_classes: int,
                   data_dir: str | None = None) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """An extra evaluation set (``dipnet evaluate --shift-set`` / ``--ood-set``).

    Args:
        name: a registered data set (its test split) or a ``.npz`` file holding ``x_test`` and
            ``y_test`` (or ``x`` and ``y``); an OOD set needs only the inputs.
        kind: ``"shift"`` (inputs and labels) or ``"ood"`` (inputs only).
        input_shape, num_classes: the evaluated run's; the set must fit them.
        data_dir: where registered data sets' files are.
    Returns:
        (its label: the registered name or the file stem, x float32 in [0, 1], y int64 or None).
    Raises:
        UserError: an unknown name, an unreadable file, arrays that do not validate or fit.
    """
    option = "--shift-set" if kind == "shift" else "--ood-set"
    if name.endswith(".npz"):
        arrays = _read_npz(Path(name), f"{option}")
        xkey = next((k for k in ("x_test", "x") if k in arrays), None)
        ykey = next((k for k in ("y_test", "y") if k in arrays), None)
        if xkey is None or (kind == "shift" and ykey is None):
            need = "x_test and y_test (or x and y)" if kind == "shift" else "x_test (or x)"
            raise UserError(f"{option} {name} holds {', '.join(arrays) or 'no arrays'}; it needs "
                            f"{need}.")
        check_inputs(arrays[xkey], f"{name}: {xkey}")
        x = _to_unit(torch.from_numpy(arrays[xkey]))
        y = None
        if kind == "shift":
            check_labels(arrays[ykey], len(arrays[xkey]), f"{name}: {ykey}")
            y = torch.from_numpy(arrays[ykey].astype(np.int64))
        label = Path(name).stem
    else:
        if name not in _DATASETS:
            raise UserError(f"{option} {name!r} is neither a data set ({', '.join(list_datasets())}"
                            ") nor a .npz file.")
        test = load_dataset(name, data_dir, val_fraction=0.0).test
        x, y, label = test.x, (test.y if kind == "shift" else None), name
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise UserError(f"{option} {name} has inputs of shape {tuple(x.shape[1:])}, but the run "
                        f"takes {tuple(input_shape)}.")
    if y is not None and len(y) and int(y.max()) >= num_classes:
        raise UserError(f"{option} {name} has label {int(y.max())}, but the run has "
                        f"{num_classes} classes (0..{num_classes - 1}).")
    return label, x, y
