"""`fileio.atomic_path`: the one temp-file + os.replace mechanism (issue 21: it was hand-rolled
nine times). A write either lands whole or leaves the old file and no temporary file behind."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from dipnet._util import fileio


def test_a_finished_block_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing is visible before the block ends
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_block_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_os_error_without_a_file_name_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(OSError) as info:
        with fileio.atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(target)


def test_the_suffix_is_the_writers_format(tmp_path: Path) -> None:
    with fileio.atomic_path(tmp_path / "fig.png", suffix=".tmp.png") as tmp:
        assert tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"png")
    assert (tmp_path / "fig.png").read_bytes() == b"png"
