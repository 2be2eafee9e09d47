"""Every script in examples/ runs as written (each in its own process, as a user runs it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each example prints last when it got to its end (its own asserts ran before that).
EXAMPLES = {
    "own_cnn.py": ("accuracy on training images:", ()),
    "hf_vit.py": ("predicted:", ("transformers",)),
    "gpt2_lora.py": ("merged model: GPT2LMHeadModel", ("transformers", "peft")),
    "save_load_merge.py": ("PEFT model: saved, reloaded and merged with all 9 projections",
                           ("transformers", "peft")),
}


def test_every_example_is_tested():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} - {"quickstart.py"} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    marker, needs = EXAMPLES[name]
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker in run.stdout
    assert "DIPMisuseWarning" not in run.stderr  # the examples show the right way
