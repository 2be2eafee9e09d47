"""Mutation check of the dipnet core: do the tests catch deliberate bugs?

Each mutation in scripts/mutations.toml (a hand-kept list: sqrt dropped, barrier sign flipped,
hook not removed, mode not restored, ...) is applied to a temporary COPY of src/ (the working
tree is never touched), and the mutation's fast tests run against that copy (PYTHONPATH puts
it first). A mutation is caught when a test fails. First the tests run once on an unmutated
copy, so a failing test cannot pass for a caught mutation.

Usage::

    .venv/bin/python scripts/mutation_check.py             # all mutations, table at the end
    .venv/bin/python scripts/mutation_check.py --list      # names and what each one breaks
    .venv/bin/python scripts/mutation_check.py --only sqrt-dropped --only barrier-sign-flipped

Exit status: 0 when at least --threshold (95 %) of the mutations are caught, 1 below that, 2
when the list is stale (an `old` text no longer occurs exactly once, or a mutant does not
compile) or the unmutated tests fail.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = ROOT / "scripts" / "mutations.toml"


@dataclass(frozen=True)
class Mutation:
    """One textual edit of a file under src/ and the tests that must catch it."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


@dataclass
class Result:
    """What happened to one mutant: caught / missed / stale / invalid, and the seconds taken."""

    mutation: Mutation
    status: str
    seconds: float
    detail: str = ""


def load_mutations(path: Path = MUTATIONS) -> list[Mutation]:
    """Read the mutation list.

    Raises:
        SystemExit: a missing field or a duplicate name (the message names it).
    """
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: list[Mutation] = []
    for i, item in enumerate(data.get("mutation", [])):
        missing = [k for k in ("name", "file", "old", "new", "tests", "why") if k not in item]
        if missing:
            raise SystemExit(f"{path}: mutation #{i + 1} lacks {missing}")
        out.append(Mutation(item["name"], item["file"], item["old"], item["new"],
                            tuple(item["tests"]), item["why"]))
    names = [m.name for m in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"{path}: duplicate mutation names {dupes}")
    return out


def _copy_src(dest: Path) -> Path:
    src = dest / "src"
    shutil.copytree(ROOT / "src", src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return src


def _pytest(src: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-m", "not slow", *tests]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def run_mutant(mutation: Mutation, timeout: float) -> Result:
    """Apply one mutation to a fresh copy of src/ and run its tests."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"dipnet-mut-{mutation.name}-") as tmp:
        src = _copy_src(Path(tmp))
        target = src / mutation.file
        if not target.is_file():
            return Result(mutation, "stale", 0.0, f"no file src/{mutation.file}")
        text = target.read_text()
        count = text.count(mutation.old)
        if count != 1:
            return Result(mutation, "stale", 0.0,
                          f"`old` occurs {count} times in src/{mutation.file}; update the list")
        mutated = text.replace(mutation.old, mutation.new)
        try:
            compile(mutated, str(target), "exec")
        except SyntaxError as err:
            return Result(mutation, "invalid", 0.0, f"mutant does not compile: {err}")
        target.write_text(mutated)
        rc, last = _pytest(src, mutation.tests, timeout)
    seconds = time.monotonic() - start
    if rc is None:
        return Result(mutation, "caught", seconds, "timeout")
    if rc == 0:
        return Result(mutation, "missed", seconds, last)
    if rc == 1:
        return Result(mutation, "caught", seconds, last)
    # 2-5: interrupted, internal error, usage error, no tests collected: the list is wrong.
    return Result(mutation, "invalid", seconds, f"pytest exit {rc}: {last}")


def baseline(mutations: list[Mutation], timeout: float) -> tuple[bool, str]:
    """Run every selected test once on an unmutated copy; they must all pass."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="dipnet-mut-baseline-") as tmp:
        rc, last = _pytest(_copy_src(Path(tmp)), tests, timeout)
    return rc == 0, last


def _table(results: list[Result]) -> str:
    width = max(len(r.mutation.name) for r in results)
    fwidth = max(len(r.mutation.file) for r in results)
    lines = [f"{'mutation':<{width}}  {'file':<{fwidth}}  {'result':<7}  {'s':>5}  detail",
             f"{'-' * width}  {'-' * fwidth}  {'-' * 7}  {'-' * 5}  ------"]
    for r in results:
        lines.append(f"{r.mutation.name:<{width}}  {r.mutation.file:<{fwidth}}  "
                     f"{r.status:<7}  {r.seconds:5.1f}  {r.detail[:70]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check; return the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this mutation (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per mutant's tests; a timeout counts as caught")
    parser.add_argument("--threshold", type=float, default=95.0,
                        help="percent that must be caught (default 95)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the tests on the unmutated code")
    args = parser.parse_args(argv)

    mutations = load_mutations()
    if args.list:
        for m in mutations:
            print(f"{m.name:<40} {m.file:<22} {m.why}")
        print(f"{len(mutations)} mutations")
        return 0
    if args.only:
        known = {m.name for m in mutations}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            print(f"unknown mutation(s) {unknown}; see --list", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.name in args.only]

    started = time.monotonic()
    if not args.no_baseline:
        ok, last = baseline(mutations, args.timeout * 2)
        print(f"baseline (unmutated code): {'pass' if ok else 'FAIL'}  {last}", flush=True)
        if not ok:
            print("the selected tests fail without any mutation; fix them first",
                  file=sys.stderr)
            return 2
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_mutant, m, args.timeout): m for m in mutations}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            print(f"[{len(results):>2}/{len(mutations)}] {r.status:<7} {r.mutation.name}",
                  flush=True)
    order = {m.name: i for i, m in enumerate(mutations)}
    results.sort(key=lambda r: order[r.mutation.name])
    print()
    print(_table(results))
    counted = [r for r in results if r.status in ("caught", "missed")]
    caught = sum(r.status == "caught" for r in counted)
    pct = 100.0 * caught / len(counted) if counted else 0.0
    broken = [r for r in results if r.status in ("stale", "invalid")]
    print(f"\ncaught {caught}/{len(counted)} mutants ({pct:.1f} %, threshold "
          f"{args.threshold:g} %) in {time.monotonic() - started:.0f} s")
    if broken:
        print(f"{len(broken)} mutation(s) stale or invalid: "
              f"{', '.join(r.mutation.name for r in broken)}; update scripts/mutations.toml")
        return 2
    return 0 if pct >= args.threshold else 1


if __name__ == "__main__":
    sys.exit(main())
