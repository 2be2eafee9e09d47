"""scripts/gpu_check.sh (issue 18): its dry run, its refusals, its summary, and (slow) a CPU run
of every stage at toy sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = ("versions", "pytest", "bench_fp32", "bench_bf16", "compile_bf16", "finetune")


def _run(*args: str, cwd: Path = ROOT, env: dict | None = None, script: Path = SCRIPT,
         timeout: int = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


def test_the_dry_run_prints_every_stage_and_what_travels() -> None:
    res = _run("--dry-run", "--data", "no/such/file.npz")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.rstrip().endswith("dry run: ok")
    for stage in STAGES:
        assert f"  {stage} " in out
    assert "-m \"$PYTEST_MARK\"" in out and "device cuda" in out and "--bf16" in out
    assert "uses scikit-learn's digits" in out  # no data file: the fallback is named
    travel = next(line for line in out.splitlines() if line.startswith("  travels:"))
    assert "limit 65536 KiB" in travel


def test_the_dry_run_fails_on_missing_files_and_on_too_much_to_carry(tmp_path) -> None:
    lone = tmp_path / "scripts" / "gpu_check.sh"
    lone.parent.mkdir()
    shutil.copy(SCRIPT, lone)
    res = _run("--dry-run", cwd=tmp_path, script=lone)
    assert res.returncode == 1
    assert "MISSING: tests/core/test_gpu.py" in res.stdout and "dry run: FAILED" in res.stdout
    big = tmp_path / "big.npz"
    with open(big, "wb") as f:  # sparse: 65 MiB on paper, nothing on disk
        f.truncate(65 * 1024 * 1024)
    res = _run("--dry-run", "--data", str(big))
    assert res.returncode == 1 and "TOO LARGE to travel" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--budget", "soon"], "--budget needs whole seconds"),
    (["--only", "nothing", "--dry-run"], "--only names no stage"),
    ([], "no output folder: pass --out DIR or set OUT"),
])
def test_bad_arguments_get_one_line(args, message) -> None:
    res = _run(*args)
    assert res.returncode == 2
    assert res.stderr.strip() == f"gpu_check: {message}" or (
        res.stderr.startswith(f"gpu_check: {message}") and res.stderr.count("\n") == 1)


def test_the_summary_reports_stages_pytest_counts_and_goals(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_summary
    finally:
        sys.path.pop(0)
    stages = tmp_path / "stages.tsv"
    stages.write_text("versions\t0\t3\nbench_bf16\t0\t40\ncompile_bf16\t124\t130\n")
    versions = tmp_path / "versions.json"
    versions.write_text(json.dumps({"torch": "2.11.0"}))
    out = tmp_path / "out"
    out.mkdir()
    hf = {"gpt2": {"x_plain": {"dip regen": 1.02}, "peak_x_plain": {"dip regen": 1.2}},
          "vit": {"x_plain": {"dip regen": 1.08}, "peak_x_plain": {"dip regen": 1.01}}}
    (out / "bench_cuda_bf16.json").write_text(json.dumps({"results": {"hf": hf}}))
    (out / "pytest.xml").write_text('<testsuites><testsuite tests="9" failures="1" errors="0" '
                                    'skipped="2"/></testsuites>')
    summary = gpu_summary.summarize(out, stages, versions)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["versions"] == {"torch": "2.11.0"}
    assert [s["status"] for s in summary["stages"]] == ["ok", "ok", "timed out"]
    assert summary["pytest"] == {"tests": 9, "failures": 1, "errors": 0, "skipped": 2}
    met = {(g["goal"].split(" (")[0], g["model"]): g["met"] for g in summary["goals"]}
    assert met == {("m=1 step x plain", "gpt2"): True, ("m=1 step x plain", "vit"): False,
                   ("peak memory x plain", "gpt2"): False, ("peak memory x plain", "vit"): True,
                   ("compiled dip x compiled plain", None): None}


@pytest.mark.slow
def test_a_smoke_run_on_the_cpu_writes_every_file(tmp_path) -> None:
    """Every stage at toy sizes on the CPU (about 2-5 min here): the plumbing, not the GPU."""
    out = tmp_path / "out"
    res = _run("--smoke", "--out", str(out), env={"PYTHON": sys.executable}, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["gpu_check.log", "pytest.xml", "bench_cuda.json",
                            "bench_cuda_bf16.json", "bench_compile_bf16.json",
                            "finetune_vit.json", "summary.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == list(STAGES)
    assert all(s["status"] == "ok" for s in summary["stages"])
    assert summary["versions"]["torch"] and summary["pytest"]["failures"] == 0
    assert all(g["value"] is not None for g in summary["goals"])
    assert set(summary["finetune"]) == {"standard", "dipnet", "fixed_noise"}


def test_the_fine_tune_data_file_is_own_data_with_uint8_pixels(tmp_path) -> None:
    """`bench_finetune_vit.py --prepare` writes what `load_dataset(FILE)` reads back: the same
    images to within the uint8 rounding (1/510), compact."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_finetune_vit
    finally:
        sys.path.pop(0)
    from dipnet.experiments.zoo.data import load_dataset

    path = tmp_path / "digits.npz"
    bench_finetune_vit.main(["--prepare", str(path), "--source", "digits", "--train", "100",
                             "--test", "50"])
    back = load_dataset(str(path), val_fraction=0.0)  # the own-data loader validates it
    assert len(back.train) == 100 and len(back.test) == 50
    ref = load_dataset("digits", val_fraction=0.0, max_train=100)
    assert back.class_names == ref.class_names
    arrays = np.load(path)
    assert arrays["x_train"].dtype == np.uint8
    assert np.abs(arrays["x_train"] / 255.0 - ref.train.x.numpy()).max() <= 1 / 510 + 1e-7
    assert (arrays["y_train"] == ref.train.y.numpy()).all()
    assert (arrays["y_test"] == ref.test.y[:50].numpy()).all()
