"""What DIPNet costs, measured side by side in one run (CPU by default).

For an MLP, a small CNN (BatchNorm + residual) and a small transformer encoder it prints medians
over repeated, interleaved timings of:
  - train step with projections (m=1) / plain train step           goal <= 1.10
  - m=4 batched step (one pass) / m=4 trajectories as a Python loop goal <  1.00
  - eval forward of a projected model / the plain model            goal <= 1.03
  - parameters added by the projections / the model's parameters

Run: .venv/bin/python benchmarks/bench_overhead.py [--threads 2] [--repeats 7] [--json out.json]
Timings are noisy on a shared machine; the ratios come from interleaved rounds (A, B, A, B...)
so that drift hits both sides alike. This is a benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Callable

import torch
from torch import nn

import dipnet


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), ResBlock(16),
                         nn.MaxPool2d(2), ResBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


class SmallTransformer(nn.Module):
    def __init__(self, d: int = 64, layers: int = 2, tokens: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(49, d)  # 7x7 patches of a 28x28 image: 16 tokens
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.reshape(b, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(b, 16, 49)
        return self.head(self.encoder(self.inp(patches)).mean(1))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                                  nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)),
            (1, 28, 28)),
    "cnn": (small_cnn, (1, 28, 28)),
    "transformer": (SmallTransformer, (1, 28, 28)),
}


def median_time(fn: Callable[[], None], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, number: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(median_time(fn, number))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(name: str, batch: int, repeats: int, number: int) -> dict[str, float]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    plain = factory()
    projected = dipnet.project(copy.deepcopy(plain), dipnet.DIPConfig(placement="layers"))
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    n = 60_000
    loss1 = dipnet.DIPLoss(dipnet.DIPConfig(m=1), num_train=n)
    loss4 = dipnet.DIPLoss(dipnet.DIPConfig(m=4), num_train=n)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3)
    opt_proj = torch.optim.SGD(projected.parameters(), lr=1e-3)
    ce = nn.functional.cross_entropy

    def plain_step() -> None:
        plain.train()
        opt_plain.zero_grad(set_to_none=True)
        ce(plain(x), y).backward()
        opt_plain.step()

    def dip_step(loss_fn: dipnet.DIPLoss) -> Callable[[], None]:
        def step() -> None:
            projected.train()
            opt_proj.zero_grad(set_to_none=True)
            loss_fn(projected, x, y).total.backward()
            opt_proj.step()
        return step

    def loop4_step() -> None:
        # The same objective without batching: 4 separate passes, NLL averaged.
        projected.train()
        opt_proj.zero_grad(set_to_none=True)
        nll = sum(ce(projected(x), y) for _ in range(4)) / 4
        (nll + loss4.scaled_barrier(projected)).backward()
        opt_proj.step()

    def plain_eval() -> None:
        with torch.no_grad():
            plain(x)

    def proj_eval() -> None:
        with torch.no_grad():
            projected(x)

    train = interleaved({"plain": plain_step, "dip_m1": dip_step(loss1)}, repeats, number)
    multi = interleaved({"batched_m4": dip_step(loss4), "loop_m4": loop4_step}, repeats,
                        max(1, number // 2))
    plain.eval()
    projected.eval()
    ev = interleaved({"plain": plain_eval, "dip": proj_eval}, repeats, number * 4)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_added = sum(p.numel() for p in dipnet.variance_parameters(projected))
    return {
        "plain_step_ms": 1e3 * train["plain"],
        "train_m1_ratio": train["dip_m1"] / train["plain"],
        "batched_m4_step_ms": 1e3 * multi["batched_m4"],
        "batched_vs_loop_m4_ratio": multi["batched_m4"] / multi["loop_m4"],
        "eval_ratio": ev["dip"] / ev["plain"],
        "params_added_fraction": n_added / n_plain,
        "params_added": n_added,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="interleaved rounds; medians are over these (default 7)")
    parser.add_argument("--number", type=int, default=10,
                        help="calls per round, averaged (default 10)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {list(MODELS)}")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {list(MODELS)}")
        results[name] = bench_model(name, args.batch, args.repeats, args.number)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, batch {args.batch}, medians of {args.repeats} rounds")
    header = (f"{'model':<12} {'plain step':>11} {'m=1/plain':>10} {'m4 batch/loop':>14} "
              f"{'eval dip/plain':>15} {'params added':>13}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<12} {r['plain_step_ms']:>9.2f}ms {r['train_m1_ratio']:>10.3f} "
              f"{r['batched_vs_loop_m4_ratio']:>14.3f} {r['eval_ratio']:>15.3f} "
              f"{100 * r['params_added_fraction']:>12.3f}%")
    print("goals: m=1/plain <= 1.10, m4 batch/loop < 1.00, eval dip/plain <= 1.03")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "torch": torch.__version__, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
