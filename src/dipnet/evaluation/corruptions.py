"""Common corruptions (ImageNet-C style) and the accuracy of predictions under them.

Images use the `imagecorruptions-imaug` package (Hendrycks & Dietterich's reference code,
maintained fork; the original `imagecorruptions` no longer imports). It wants uint8 images of at
least 32 x 32 pixels with 3 channels, so smaller images are edge-padded to 32 px (MNIST's black
border stays black), grey images are stacked to 3 channels, and the result is cropped back and
averaged back to grey. Its severity levels are tuned for 224 px images: at 28-32 px severities
1-2 (3 at most) are the meaningful ones, which is what the suite uses.

Images smaller than 16 px (scikit-learn digits, 8 x 8) get only the per-pixel corruptions: a blur
or a fog tuned for 32 px would wipe out an 8 px image. Non-image inputs (signals, vectors) get
the package's three additive/multiplicative noise formulas, re-implemented here on tensors with
the package's severity constants, because the package only takes images.

``saturate`` is left out for grey images (a no-op there). ``glass_blur`` is left out: its per-pixel Python loop costs about 0.5 s per 32 px image.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dipnet._util.cache import cache_dir
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_path
from dipnet.evaluation.predictors import Predictor, accuracy, predict_log_probs

# All 18 usable corruptions of the package (glass_blur is too slow, see above).
IMAGE_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate",
    "elastic_transform", "pixelate", "jpeg_compression",
)
# The quick suite: noise, blur, weather, digital, one or more of each family (11 types).
QUICK_IMAGE_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# Per-pixel corruptions: meaningful at any resolution.
PIXELWISE_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "brightness", "contrast",
)
SIGNAL_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "impulse_noise", "speckle_noise")
# Colour-only corruptions: a no-op on grey images (grey has no saturation).
COLOUR_ONLY: tuple[str, ...] = ("saturate",)

# The package's constants, per severity 1..5 (imagecorruptions/corruptions.py).
_GAUSS = (0.08, 0.12, 0.18, 0.26, 0.38)
_IMPULSE = (0.03, 0.06, 0.09, 0.17, 0.27)
_SPECKLE = (0.15, 0.20, 0.35, 0.45, 0.60)

MIN_SIDE = 32  # the package's minimum image side
SMALL_SIDE = 16  # below this, per-pixel corruptions only


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether one example of this shape is an image (C, H, W) with 1 or 3 channels."""
    return len(shape) == 3 and shape[0] in (1, 3)


def available_corruptions(input_shape: Sequence[int], quick: bool = False) -> tuple[str, ...]:
    """The corruptions that make sense for examples of ``input_shape`` (see the module docstring)."""
    if not is_image_shape(input_shape):
        return SIGNAL_CORRUPTIONS
    names = QUICK_IMAGE_CORRUPTIONS if quick else IMAGE_CORRUPTIONS
    if input_shape[0] == 1:
        names = tuple(n for n in names if n not in COLOUR_ONLY)
    if min(input_shape[1:]) < SMALL_SIDE:
        return tuple(n for n in names if n in PIXELWISE_CORRUPTIONS) or PIXELWISE_CORRUPTIONS
    return names


def _check(name: str, severity: int, allowed: Sequence[str]) -> None:
    if name not in allowed:
        raise UserError(f"unknown corruption {name!r} for this input; choose from {', '.join(allowed)}.")
    if severity not in (1, 2, 3, 4, 5):
        raise UserError(f"corruption severity must be an integer 1..5, got {severity!r}.")


def corrupt_signals(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt non-image inputs in [0, 1] with the package's noise formulas (any shape).

    gaussian_noise: x + N(0, c^2); impulse_noise: a fraction c of the entries set to 0 or 1
    (salt and pepper, half each); speckle_noise: x + x * N(0, c^2); all clipped to [0, 1].

    Raises:
        UserError: unknown name or bad severity.
    """
    _check(name, severity, SIGNAL_CORRUPTIONS)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    i = severity - 1
    if name == "gaussian_noise":
        out = x + _GAUSS[i] * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    elif name == "speckle_noise":
        out = x + x * _SPECKLE[i] * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    else:
        u = torch.rand(x.shape, generator=gen, device=x.device)
        salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
        hit = u < _IMPULSE[i]
        out = torch.where(hit, salt.to(x.dtype), x)
    return out.clamp(0.0, 1.0)


# The package's constants (imagecorruptions/corruptions.py) of the corruptions computed here on
# the whole batch at once; the formulas are the package's, term for term.
_SHOT = (60, 25, 12, 5, 3)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
VECTORISED: tuple[str, ...] = ("gaussian_noise", "shot_noise", "speckle_noise", "brightness", "contrast")


def _corrupt_batch(imgs: np.ndarray, name: str, severity: int) -> np.ndarray | None:
    """The package's corruption of every image of a uint8 batch (N, H, W, 3), as float32, or
    None for a corruption that is not vectorised here.

    Bit-identical to calling the package image by image right after ``np.random.seed``: the
    noise corruptions draw from numpy's global RNG element by element in C order, so one draw
    of N images' worth of noise is the concatenation of N per-image draws; brightness is per
    pixel; contrast takes each image's own channel means with the package's call. The results
    go through ``np.uint8`` as in the package's ``corrupt``.
    """
    if name not in VECTORISED:
        return None
    i = severity - 1
    x = imgs / 255.
    if name == "gaussian_noise":
        res = np.clip(x + np.random.normal(size=x.shape, scale=_GAUSS[i]), 0, 1) * 255
    elif name == "speckle_noise":
        res = np.clip(x + x * np.random.normal(size=x.shape, scale=_SPECKLE[i]), 0, 1) * 255
    elif name == "shot_noise":
        c = _SHOT[i]
        res = np.clip(np.random.poisson(x * c) / float(c), 0, 1) * 255
    elif name == "contrast":
        c = _CONTRAST[i]
        means = np.stack([np.mean(img, axis=(0, 1), keepdims=True) for img in x])
        res = np.clip((x - means) * c + means, 0, 1) * 255
    elif bool((imgs == imgs[..., :1]).all()):
        # Brightness of a grey image: rgb2hsv gives v = the grey value (s = 0), and hsv2rgb
        # with s = 0 returns v in every channel, so the package computes clip(x + c, 0, 1)
        # exactly; checked bit for bit on all 256 grey values in the tests.
        res = np.broadcast_to(np.clip(x[..., :1] + _BRIGHTNESS[i], 0, 1) * 255, x.shape)
    else:  # brightness of colour images
        import skimage as sk

        hsv = sk.color.rgb2hsv(x)
        hsv[..., 2] = np.clip(hsv[..., 2] + _BRIGHTNESS[i], 0, 1)
        res = np.clip(sk.color.hsv2rgb(hsv), 0, 1) * 255
    return np.uint8(res).astype(np.float32)


def corrupt_images(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt images (N, C, H, W) in [0, 1] with `imagecorruptions` (C = 1 or 3).

    Returns float images of the same shape and device, in [0, 1]. Reproducible: numpy's global
    RNG (which the package uses) is seeded here and restored afterwards; impulse noise gets a
    per-image seed.

    Raises:
        UserError: unknown corruption, bad severity, or not an image batch.
    """
    if x.dim() != 4 or not is_image_shape(tuple(x.shape[1:])):
        raise UserError(f"corrupt_images needs images (N, C, H, W) with C = 1 or 3, got shape "
                        f"{tuple(x.shape)}; use corrupt_signals for other inputs.")
    _check(name, severity, IMAGE_CORRUPTIONS)
    n, c, h, w = x.shape
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    top, left = ph // 2, pw // 2
    imgs = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    imgs = np.pad(imgs, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)), mode="edge")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = _corrupt_batch(imgs, name, severity)
        if out is None:
            # OpenCV / scikit-image / numba: imported on demand (0.3-0.5 s), and only for the
            # corruptions not computed above.
            from imagecorruptions import corrupt

            out = np.empty(imgs.shape, dtype=np.float32)
            for i in range(n):
                kwargs = {"seed": seed * 1_000_003 + i} if name == "impulse_noise" else {}
                res = corrupt(imgs[i], severity=severity, corruption_name=name, **kwargs)
                out[i] = np.asarray(res, dtype=np.float32).reshape(imgs.shape[1:])
    finally:
        np.random.set_state(state)
    out = out[:, top:top + h, left:left + w, :] / 255.0
    if c == 1:
        out = out.mean(axis=3, keepdims=True)  # colour effects (saturate, snow) back to grey
    res_t = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).clamp(0, 1)
    return res_t.to(device=x.device, dtype=x.dtype)


# Corrupted copies are a pure function of (inputs, corruption, severity, seed): a sweep
# evaluates every run on the same fixed subset, so the process keeps the copies it made
# (least recently used first out, at most CACHE_BYTES) instead of corrupting them again.
CACHE_BYTES = 256 * 2**20
_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
# Corrupted images are also kept on disk, in $DIPNET_CACHE/corruptions (~/.cache/dipnet by
# default; see dipnet._util.cache.cache_dir), so that a fresh process (`dipnet evaluate`,
# each worker of a sweep) neither imports the corruption package nor corrupts again. The file
# name hashes the in-process key, this module's source and the versions of the packages the
# corruptions come from, so a changed formula or package never reads a stale copy. Oldest
# files go first beyond DISK_CACHE_BYTES; 0 turns the disk cache off.
DISK_CACHE_BYTES = 512 * 2**20
_DISK_PACKAGES = ("imagecorruptions-imaug", "numpy", "scikit-image", "scipy", "opencv-python",
                  "opencv-python-headless", "Pillow", "numba", "torch")


def _cache_key(x: torch.Tensor, name: str, severity: int, seed: int) -> tuple:
    data = x.detach().cpu().contiguous()
    digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest()
    return (name, int(severity), int(seed), tuple(x.shape), str(x.dtype), digest)


@functools.lru_cache(maxsize=1)
def _code_stamp() -> str:
    """This module's source and the versions of the packages behind the corruptions."""
    from importlib import metadata

    versions = []
    for dist in _DISK_PACKAGES:
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=-")
    source = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()
    return source + ";" + ";".join(versions)


def _disk_path(key: tuple) -> Path | None:
    if DISK_CACHE_BYTES <= 0:
        return None
    digest = hashlib.sha1(repr((key, _code_stamp())).encode()).hexdigest()
    return cache_dir() / "corruptions" / f"{key[0]}-{key[1]}-{digest[:24]}.pt"


def _disk_read(path: Path, like: torch.Tensor) -> torch.Tensor | None:
    """The cached copy at ``path`` if it is there, readable and shaped like ``like``."""
    try:
        out = torch.load(path, weights_only=True)
        os.utime(path)  # recently used: evicted last
    except Exception:  # noqa: BLE001 (missing, damaged or unreadable: corrupt afresh)
        return None
    if not isinstance(out, torch.Tensor) or out.shape != like.shape or out.dtype != like.dtype:
        return None
    return out


def _disk_write(path: Path, out: torch.Tensor) -> None:
    """Write ``out`` to ``path`` atomically, then trim the folder to DISK_CACHE_BYTES."""
    if out.numel() * out.element_size() > DISK_CACHE_BYTES:
        return
    try:
        with atomic_path(path) as tmp:
            torch.save(out.detach().cpu().clone(), tmp)
        files = sorted(path.parent.glob("*.pt"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        for f in files:
            if total <= DISK_CACHE_BYTES:
                break
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache folder (or a concurrent trim): work without it


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch of images or signals (dispatches on the shape of one example).

    Results are cached in-process (see ``CACHE_BYTES``) and, for images, on disk (see
    ``DISK_CACHE_BYTES``); a cached result is returned as a fresh tensor on ``x``'s device,
    equal bit for bit to a freshly corrupted one.
    """
    image = is_image_shape(tuple(x.shape[1:]))
    if image and min(x.shape[2:]) < SMALL_SIDE and name not in PIXELWISE_CORRUPTIONS:
        raise UserError(f"corruption {name!r} is not meaningful for {x.shape[2]}x{x.shape[3]} "
                        f"images; use one of {', '.join(PIXELWISE_CORRUPTIONS)}.")
    key = _cache_key(x, name, severity, seed)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit.to(x.device, copy=True)
    out = None
    path = _disk_path(key) if image else None
    if path is not None:
        _check(name, severity, IMAGE_CORRUPTIONS)  # a bad name fails as it would uncached
        out = _disk_read(path, x)
        if out is not None:
            out = out.to(x.device)
    if out is None:
        out = (corrupt_images if image else corrupt_signals)(x, name, severity, seed)
        if path is not None:
            _disk_write(path, out)
    size = out.numel() * out.element_size()
    if size <= CACHE_BYTES:
        _CACHE[key] = out.detach().cpu().clone()
        while sum(t.numel() * t.element_size() for t in _CACHE.values()) > CACHE_BYTES:
            _CACHE.popitem(last=False)
    return out


def corruption_accuracy(predictors: Sequence[Predictor], x: torch.Tensor, y: torch.Tensor,
                        names: Sequence[str], severities: Sequence[int], seed: int = 0,
                        progress: bool = False) -> list[dict]:
    """Accuracy of every predictor on every (corruption, severity) of (x, y).

    Each corrupted copy is made once and shared by all predictors. Returns one dict per
    (corruption, severity, prediction): ``{corruption, severity, prediction, accuracy,
    n_points}``, followed by one ``{corruption: "mean", severity: null, prediction, accuracy}``
    per prediction (the mean over all corruptions and severities).
    """
    from tqdm.auto import tqdm

    rows: list[dict] = []
    combos = [(nm, s) for nm in names for s in severities]
    it = tqdm(combos, desc="corruptions", leave=False) if progress else combos
    for j, (nm, s) in enumerate(it):
        xc = corrupt(x, nm, int(s), seed + j)
        for p in predictors:
            rows.append({"corruption": nm, "severity": int(s), "prediction": p.name,
                         "accuracy": accuracy(predict_log_probs(p, xc), y),
                         "n_points": int(x.shape[0])})
    for p in predictors:
        accs = [r["accuracy"] for r in rows if r["prediction"] == p.name]
        rows.append({"corruption": "mean", "severity": None, "prediction": p.name,
                     "accuracy": float(np.mean(accs)) if accs else math.nan,
                     "n_points": int(x.shape[0])})
    return rows
