"""What an output folder holds, read without changing it: the plan phase of a run or sweep.

`check_out_path` refuses a ``--out`` that is, or lies under, a regular file, or that cannot be
written. `inspect_run_folder` compares a run folder with the run about to be made:

    new       nothing of a run there: train
    partial   the same run, unfinished (a checkpoint or only its config): resume
    finished  the same run, finished: reuse its metrics
    different another run (the differing fields are listed): refuse
    damaged   a config.yaml / metrics.json that cannot be read: refuse, never reuse

It also holds the one mechanism that replaces a run (``--overwrite``): `set_aside` moves the
old run's files into a hidden folder inside the run folder, `restore_aside` puts them back when
the new run fails for any reason, and `drop_aside` deletes them once the new run has finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig

CHECKPOINT_DIR = "checkpoint"
#: What a run writes; the ``.lock`` file is not among them (``--overwrite`` sets aside all but it).
RESULT_FILES = ("config.yaml", "metrics.json", "train.log", "model.safetensors", CHECKPOINT_DIR)
#: The hidden folder inside a run folder that holds the run being replaced (`set_aside`).
ASIDE_PREFIX = ".previous-run-"
_KEPT = (".lock",)


def check_out_path(out: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one: a file, under a file, or not writable.

    Raises:
        UserError: one line naming the path and the fix.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: {out} is a file, not a folder; choose another "
                        f"{option}.")
    target = out
    if not out.exists():
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"{option} {out}: {parent} is a file, so no folder can be "
                                    f"made under it; choose another {option}.")
                target = parent
                break
    if target.exists() and not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{option} {out}: cannot write in {target} (permission denied); choose "
                        f"another {option} or fix the permissions.")


@dataclass
class FolderState:
    """What `inspect_run_folder` found (see the module docstring for the kinds)."""

    kind: str
    out: Path
    metrics: dict[str, Any] | None = None
    diff: list[tuple[str, Any, Any]] = field(default_factory=list)  # (field, saved, requested)
    damage: str = ""

    @property
    def usable(self) -> bool:
        """Whether a run may go on here without --overwrite."""
        return self.kind in ("new", "partial", "finished")

    def diff_text(self, there: str = "", now: str = "", limit: int = 6) -> str:
        """``"method: 'dipnet' vs 'standard'; seed: 0 vs 7"`` (saved first)."""
        return diff_text(self.diff, there, now, limit)

    def refusal(self) -> UserError:
        """The one-line error of `dipnet train` for a ``different`` / ``damaged`` folder."""
        if self.kind == "different":
            return UserError(f"{self.out} holds a different run (saved vs requested: "
                             f"{self.diff_text()}); choose another --out, or pass --overwrite "
                             "to replace it.")
        return UserError(f"{self.out} holds a run whose {self.damage}; it is not reused. Pass "
                         "--overwrite to replace it, or choose another --out.")


def diff_text(diff: list[tuple[str, Any, Any]], there: str = "", now: str = "",
              limit: int = 6) -> str:
    """``[(key, saved, requested)]`` as ``"method: 'dipnet' vs 'standard'; seed: 0 vs 7"``."""
    parts = [f"{k}: {a!r}{there} vs {b!r}{now}" for k, a, b in diff[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return "; ".join(parts)


def nested_diff(saved: Any, requested: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved, requested)`` for every setting that differs, walking nested
    mappings (``sweep.run.epochs``); a value that is not a mapping on both sides is compared
    whole."""
    if not (isinstance(saved, dict) and isinstance(requested, dict)):
        return [] if saved == requested else [(prefix.rstrip(".") or "(all)", saved, requested)]
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(saved) | set(requested), key=str):
        out += nested_diff(saved.get(key), requested.get(key), f"{prefix}{key}.")
    return out


def _load_saved_config(path: Path) -> tuple[RunConfig | None, str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        return None, f"config.yaml cannot be read ({err.strerror})"
    except yaml.YAMLError as err:
        return None, f"config.yaml is not valid YAML ({str(err).splitlines()[0]})"
    if not isinstance(data, dict):
        return None, "config.yaml is not a mapping of run settings"
    try:
        return RunConfig.from_dict(data), ""
    except UserError as err:
        return None, f"config.yaml is not a valid run config ({str(err)[:160]})"
    except (TypeError, ValueError) as err:
        return None, f"config.yaml is not a valid run config ({err})"


def _load_saved_metrics(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        return None, f"metrics.json cannot be read ({err.strerror})"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"metrics.json is not valid JSON ({err})"
    if not isinstance(metrics, dict) or metrics.get("status") != "finished":
        return None, "metrics.json is not the record of a finished run"
    return metrics, ""


def inspect_run_folder(out: str | os.PathLike, cfg: RunConfig) -> FolderState:
    """Compare the folder ``out`` with the run ``cfg``; reads files, changes nothing.

    Runtime-only fields (`RunConfig.RUNTIME_FIELDS`) and settings that do not apply to the run
    are left out of the comparison (`RunConfig.result_dict`).
    """
    out = Path(out)
    cfg_path, metrics_path = out / "config.yaml", out / "metrics.json"
    has_ckpt = (out / CHECKPOINT_DIR).exists()
    if not cfg_path.exists():
        if metrics_path.exists() or has_ckpt:
            what = "metrics.json" if metrics_path.exists() else "checkpoint"
            return FolderState("damaged", out, damage=f"{what} has no config.yaml beside it "
                               "(config.yaml missing)")
        return FolderState("new", out)
    saved, problem = _load_saved_config(cfg_path)
    if saved is None:
        return FolderState("damaged", out, damage=problem)
    a, b = saved.result_dict(), cfg.result_dict()
    diff = [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        return FolderState("different", out, diff=diff)
    if metrics_path.exists():
        metrics, problem = _load_saved_metrics(metrics_path)
        if metrics is None:
            return FolderState("damaged", out, damage=problem)
        return FolderState("finished", out, metrics=metrics)
    return FolderState("partial", out)


def read_metrics(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The metrics.json of a finished run in ``out_dir``, or None if there is none readable.

    This says nothing about WHICH run it is: compare configs with `inspect_run_folder`.
    """
    path = Path(out_dir) / "metrics.json"
    if not path.is_file():
        return None
    metrics, _ = _load_saved_metrics(path)
    return metrics


# ---------------------------------------------------------------------- replacing a run
def find_aside(out: str | os.PathLike) -> Path | None:
    """The folder `set_aside` made in ``out`` and nobody restored or dropped (a run that
    replaced it was killed), or None."""
    out = Path(out)
    found = sorted(p for p in out.glob(ASIDE_PREFIX + "*") if p.is_dir()) if out.is_dir() else []
    return found[0] if found else None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name not in _KEPT and not p.name.startswith(
        ASIDE_PREFIX)]


def set_aside(out: str | os.PathLike) -> Path | None:
    """Move what the run folder ``out`` holds (bar its lock) into a hidden folder inside it.

    Renames only, in the same folder: nothing is copied or deleted, so a full disk cannot stop
    it. If a folder set aside earlier is still there (the run that replaced it was killed), it
    is the old run: what ``out`` holds now is that killed run's partial output, which is
    deleted instead. Returns the folder set aside, or None when ``out`` held nothing.

    Raises:
        OSError: the folder cannot be made or an entry cannot be moved (those moved so far are
            moved back first).
    """
    out = Path(out)
    earlier = find_aside(out)
    if earlier is not None:
        for p in _entries(out):
            _remove(p)
        return earlier
    entries = _entries(out) if out.is_dir() else []
    if not entries:
        return None
    aside = Path(tempfile.mkdtemp(dir=out, prefix=ASIDE_PREFIX))
    moved: list[Path] = []
    try:
        for p in entries:
            os.replace(p, aside / p.name)
            moved.append(p)
    except BaseException:
        for p in moved:
            os.replace(aside / p.name, p)
        aside.rmdir()
        raise
    return aside


def restore_aside(out: str | os.PathLike, aside: Path | None) -> None:
    """Undo `set_aside`: delete what the new run wrote in ``out`` and move the old run back.

    Best effort on every entry (a restore runs while another error is being raised); an entry
    that cannot be moved back stays in ``aside``, which is then kept.
    """
    if aside is None or not aside.is_dir():
        return
    out = Path(out)
    for p in _entries(out):
        try:
            _remove(p)
        except OSError:
            pass
    for p in list(aside.iterdir()):
        try:
            os.replace(p, out / p.name)
        except OSError:
            pass
    try:
        aside.rmdir()
    except OSError:
        pass


def drop_aside(out: str | os.PathLike) -> None:
    """Delete the run that `set_aside` kept in ``out``: the run replacing it has finished."""
    aside = find_aside(out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
