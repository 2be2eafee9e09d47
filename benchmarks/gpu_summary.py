"""The two ends of scripts/gpu_check.sh: the versions it runs with, and its summary.

``versions FILE``   print python / torch / CUDA / GPU / library versions (first thing the check
                    does: the GPU machine's transformers may differ from this project's lock)
                    and write them to FILE as JSON.
``summarize OUT STAGES VERSIONS``
                    read the stage table (name, exit status, seconds per line, tab-separated)
                    and the JSON files the stages wrote into OUT; write ``OUT/summary.json``:
                    versions, every stage's status, the pytest counts and the issue-18 goals
                    (value, limit, met) where their figures exist; print the goals.

Run by scripts/gpu_check.sh; not meant to be called by hand.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "timm", "torchvision", "safetensors",
             "numpy", "triton", "dipnet")

# (goal, stage file, path to the figure inside its "results" per model, limit): issue 18's goals
# on a GPU, with bf16 at `layers` placement.
GOALS = [
    ("m=1 step x plain (dip regen, bf16)", "bench_cuda_bf16.json", ("hf", "x_plain", "dip regen"),
     1.05),
    ("peak memory x plain (dip regen, bf16)", "bench_cuda_bf16.json",
     ("hf", "peak_x_plain", "dip regen"), 1.05),
    ("compiled dip x compiled plain (bf16)", "bench_compile_bf16.json",
     ("hf_compile", "dip_compiled_x_plain_compiled"), 1.02),
]


def versions(path: Path) -> dict[str, Any]:
    """The versions of python, the libraries and the GPU; printed and written to ``path``."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # noqa: BLE001 (a broken install is a finding, not a crash)
            out[name] = f"not importable: {type(err).__name__}: {err}"
    try:
        import torch

        out["cuda_available"] = torch.cuda.is_available()
        out["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_count"] = torch.cuda.device_count()
            out["bf16_supported"] = torch.cuda.is_bf16_supported()
    except Exception as err:  # noqa: BLE001
        out["cuda_available"] = f"torch failed: {err}"
    for k, v in out.items():
        print(f"  {k:<16} {v}")
    path.write_text(json.dumps(out, indent=2))
    return out


def _pytest_counts(xml: Path) -> dict[str, int] | None:
    if not xml.is_file():
        return None
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError:
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _figures(results: dict[str, Any], path: tuple[str, ...]) -> dict[str, float]:
    """``{model: figure}`` for the figure at ``path`` under section ``path[0]``."""
    out = {}
    for model, row in results.get(path[0], {}).items():
        value: Any = row
        for key in path[1:]:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            out[model] = float(value)
    return out


def summarize(out: Path, stages: Path, versions_file: Path) -> dict[str, Any]:
    """Write ``out/summary.json`` from the stage table and the stages' JSON files."""
    table = []
    for line in stages.read_text().splitlines():
        name, rc, seconds = line.split("\t")
        table.append({"stage": name, "exit": int(rc), "seconds": float(seconds),
                      "status": "ok" if rc == "0" else ("timed out" if rc in ("124", "137")
                                                        else "failed")})
    loaded = {}
    for f in sorted(out.glob("*.json")):
        if f.name != "summary.json":
            try:
                loaded[f.name] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                loaded[f.name] = None
    goals = []
    for goal, file, path, limit in GOALS:
        results = (loaded.get(file) or {}).get("results", {})
        for model, value in _figures(results, path).items():
            goals.append({"goal": goal, "model": model, "value": round(value, 4),
                          "limit": limit, "met": value <= limit})
        if not _figures(results, path):
            goals.append({"goal": goal, "model": None, "value": None, "limit": limit,
                          "met": None, "why": f"{file} missing or without the figure"})
    finetune = (loaded.get("finetune_vit.json") or {}).get("results", {})
    summary = {
        "versions": json.loads(versions_file.read_text()) if versions_file.is_file() else None,
        "stages": table,
        "pytest": _pytest_counts(out / "pytest.xml"),
        "goals": goals,
        "finetune": {arm: {k: r.get(k) for k in ("images_per_s", "peak_mb", "time_x_standard",
                                                 "peak_x_standard", "test_accuracy")}
                     for arm, r in finetune.items()},
        "files": sorted(loaded),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nsummary:")
    for s in table:
        print(f"  {s['stage']:<16} {s['status']:<10} {s['seconds']:7.1f} s")
    if summary["pytest"]:
        print(f"  pytest -m gpu: {summary['pytest']}")
    for g in goals:
        shown = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        met = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        print(f"  {g['goal']:<40} {str(g['model']):<32} {shown:>7} (<= {g['limit']}) {met}")
    for arm, r in summary["finetune"].items():
        print(f"  fine-tune {arm:<12} {r}")
    return summary


def main(argv: list[str]) -> None:
    """``versions FILE`` or ``summarize OUT STAGES VERSIONS`` (see the module docstring)."""
    if len(argv) == 2 and argv[0] == "versions":
        versions(Path(argv[1]))
    elif len(argv) == 4 and argv[0] == "summarize":
        summarize(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        raise SystemExit("usage: gpu_summary.py versions FILE | summarize OUT STAGES VERSIONS")


if __name__ == "__main__":
    main(sys.argv[1:])
