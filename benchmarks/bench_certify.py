"""What `dipnet.certify` costs: samples per second and seconds per certified example.

A DIPNet MLP 784-256-256-10 and a DIPNet ResNet-8 (width 16), both projected before every
layer (``DIPConfig()``), on 1x28x28 inputs in [0, 1], certified at n = 10,000 and n = 100,000
(n0 = 100, alpha = 0.001, internal projections sampling, the default row budget per pass). The
weights are untrained: the cost of a forward pass does not depend on them. Each setting runs
once after a warm-up; the time is wall-clock over the whole `certify` call (probing the model,
the n0 selection and the n estimation samples). First it prints how much smaller a radius is at
n = 10,000 than at n = 100,000 for a given true pA (the Clopper-Pearson bound at the expected
vote count; no sampling).

Run:  .venv/bin/python benchmarks/bench_certify.py [--only shrink|speed] [--device cpu|cuda]
      [--threads N] [--settings mlp:10000,...,resnet:100000] [--points-mlp 4]
      [--points-resnet 1] [--json out.json]
This is a benchmark, not a test: nothing asserts. On a shared machine the wall-clock includes
waiting for a core; the CPU seconds and the load average are recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import dipnet
from dipnet.experiments.zoo.models import create_model

SHAPE = (1, 28, 28)


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model(name, SHAPE, 10)
    return dipnet.project(net, dipnet.DIPConfig()).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, n: int, points: int, device: str) -> dict:
    """Certify ``points`` random inputs at ``n`` samples; wall and CPU seconds."""
    model = _model(name, device)
    x = torch.rand(points, *SHAPE, device=device)
    dipnet.certify(model, x[:1], n0=10, n=100)  # warm-up (allocations, kernels, first probe)
    torch.manual_seed(0)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    dipnet.certify(model, x, n0=100, n=n)
    _sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = points * (n + 100)
    return {"model": name, "n": n, "n0": 100, "points": points, "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "seconds_per_example": round(wall / points, 4),
            "samples_per_second": round(samples / wall, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def radius_at_n(p_true: float, n: int, alpha: float = 0.001) -> float:
    """Phi^-1(pA_lower) when the n samples hold the expected round(p_true * n) votes."""
    from dipnet.certify import clopper_pearson_lower

    k = torch.tensor([round(p_true * n)])
    return float(torch.special.ndtri(clopper_pearson_lower(k, n, alpha)))


def shrink_table() -> list[dict]:
    """How much smaller the radius is at n = 10,000 than at n = 100,000 (no sampling: the
    Clopper-Pearson bound at the expected vote count, alpha = 0.001)."""
    rows = []
    for p in (0.6, 0.75, 0.9, 0.99, 0.999, 1.0):
        small, large = radius_at_n(p, 10_000), radius_at_n(p, 100_000)
        rows.append({"p_true": p, "z_n10000": round(small, 4), "z_n100000": round(large, 4),
                     "ratio": round(small / large, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("shrink", "speed"), default=None,
                    help="only the radius table (instant) or only the timings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--settings", default="mlp:10000,mlp:100000,resnet:10000,resnet:100000",
                    help="comma-separated MODEL:N pairs to time (default all four)")
    ap.add_argument("--points-mlp", type=int, default=4)
    ap.add_argument("--points-resnet", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shrink = shrink_table() if args.only != "speed" else []
    for row in shrink:
        print(f"pA {row['p_true']:<6g} Phi^-1(pA_lower): n=10,000 {row['z_n10000']:.4f}  "
              f"n=100,000 {row['z_n100000']:.4f}  ratio {row['ratio']:.3f}")
    rows: list[dict] = []
    settings = [(m, int(n)) for m, n in (item.split(":") for item in args.settings.split(","))]
    points = {"mlp": args.points_mlp, "resnet": args.points_resnet}
    for name, n in settings if args.only != "shrink" else ():
        row = measure(name, n, points[name], args.device)
        rows.append(row)
        print(f"{name:7s} n={n:>7,d}  {row['points']} point(s)  {row['wall_s']:8.2f} s wall "
              f"({row['cpu_s']:.1f} s CPU)  {row['seconds_per_example']:8.3f} s/example  "
              f"{row['samples_per_second']:>10,.0f} samples/s", flush=True)
        _write(args, rows, shrink)  # after every row: a long run killed half-way keeps them
    _write(args, rows, shrink)


def _write(args: argparse.Namespace, rows: list[dict], shrink: list[dict]) -> None:
    out = {"what": "benchmarks/bench_certify.py: dipnet.certify on untrained DIPNet MLP "
                   "784-256-256-10 and ResNet-8 (1x28x28), n0 = 100, internal='sample'",
           "command": "benchmarks/bench_certify.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
               if v is not None and k != "json"),
           "device": args.device,
           "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                           else platform.processor() or platform.machine()),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "results": rows,
           "radius_shrink": shrink}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
