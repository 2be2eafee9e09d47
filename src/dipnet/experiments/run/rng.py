"""The random state of a run: seeding every generator, and saving / restoring all of them.

A checkpoint stores `get_rng_state` of every rank, so a resumed run draws the same noise as an
uninterrupted one; `kept_rng` lets a nested piece of work (training a reference model, probing
a model) reseed freely without the run around it noticing.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch


def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s noise stream: distinct per (seed, rank) pair."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def get_rng_state() -> dict[str, Any]:
    """All RNG states as weights_only-loadable values (tensors, ints, floats, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Run the block, then put every RNG back as it was before it (`get_rng_state`)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
