"""A run's end-of-epoch checkpoint: written atomically (a kill leaves the previous or the new
one, never a mix), loaded safely (safetensors and a ``weights_only`` torch file)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from dipnet._util.fileio import atomic_torch_save, atomic_write_json, atomic_write_safetensors
from dipnet.errors import UserError
from dipnet.experiments.run.rundir import CHECKPOINT_DIR

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(out: Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write checkpoint/epoch-NNNN/{model.safetensors,state.pt}, then switch latest.json.

    The pointer is replaced atomically after both files are complete, so a kill at any moment
    leaves either the previous or the new checkpoint, never a mix. Older epochs are removed.

    Raises:
        OSError: a file cannot be written (ENOSPC on a full disk); the new epoch's folder is
            removed and the previous checkpoint stays.
    """
    root = out / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{state['epoch']:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        # fileio's writers turn a full disk into one OSError naming the file
        atomic_write_safetensors({k: v.detach().contiguous().cpu()
                                  for k, v in model.state_dict().items()},
                                 tmp / "model.safetensors")
        atomic_torch_save(state, tmp / "state.pt")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint holding space
        if isinstance(err, OSError) and err.errno is not None:  # name the checkpoint, not a temp
            raise type(err)(err.errno, err.strerror, str(root / name)) from None
        raise
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(root / "latest.json", {"epoch": state["epoch"], "dir": name})
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last checkpoint's (weights, state), or None if there is none.

    Raises:
        UserError: if the checkpoint is unreadable (names the file and the fix).
    """
    pointer = out / CHECKPOINT_DIR / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        ckpt = out / CHECKPOINT_DIR / info["dir"]
        weights = load_file(str(ckpt / "model.safetensors"))
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # any failure here means a corrupt checkpoint
        raise UserError(f"the checkpoint in {out / CHECKPOINT_DIR} is corrupt or incomplete "
                        f"({type(err).__name__}: {err}); delete that folder to restart the "
                        "run from scratch, or pass --overwrite.") from None
    return weights, state
