"""The mutation list of scripts/mutation_check.py stays in step with the code: every mutation
applies to exactly one place and gives code that compiles. (The check itself, which runs the
tests against each mutant, takes about 5 minutes: `.venv/bin/python scripts/mutation_check.py`.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check",
                                                  ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTATIONS = _script().load_mutations()


def test_the_list_is_long_enough_and_covers_the_core() -> None:
    assert len(MUTATIONS) >= 25
    files = {m.file for m in MUTATIONS}
    assert {"dipnet/projection.py", "dipnet/inject.py", "dipnet/objective.py",
            "dipnet/predict.py", "dipnet/config.py", "dipnet/hf.py"} <= files


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_applies_once_and_compiles(mutation) -> None:
    text = (ROOT / "src" / mutation.file).read_text()
    assert text.count(mutation.old) == 1, "stale: update scripts/mutations.toml"
    compile(text.replace(mutation.old, mutation.new), mutation.file, "exec")
    assert mutation.old != mutation.new
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
