"""Every Python snippet in docs/hf.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

DOC = Path(__file__).resolve().parents[2] / "docs" / "hf.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_hf_has_python_snippets():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs_as_written(index, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # the snippets write to relative folders ("out")
    exec(compile(BLOCKS[index], f"docs/hf.md[{index}]", "exec"), {"__name__": "__docs__"})
