"""What DIPNet costs, measured side by side in one run, with the floor printed beside it.

Sections (``--sections``, default all but ``scale``):

floor    Time of one training step (m = 1), medians of interleaved rounds, for an MLP
         (784-512-512-10), a residual CNN and a small transformer encoder, batch 128:
           plain                 the model alone
           plain+grad_in         and the gradient w.r.t. its input
           +addcmul pre-drawn    noise drawn once, learned std, at every projected layer
           floor                 fresh ``randn`` noise + addcmul with learned std (issue 10)
           dip store             dipnet, noise kept for backward (the CPU default)
           dip regen             dipnet, noise drawn again in backward (the accelerator default)
         plus bytes saved for backward (unique storages, parameters excluded), the eval
         forward of a projected vs plain model, m=4 in one pass vs a Python loop.
memory   Saved-for-backward bytes vs plain and time for the MLP and a 4-layer GPT-2
         (d 256, seq 128, batch 8, vocab 1024), placements layers and blocks.
compile  torch.compile (inductor, fallback_random) of the loss function: plain, floor and
         dipnet compiled, beside the eager steps (the models of --models).
chunks   DIPConfig.chunks: time and peak memory of m = 8 trajectories in 1, 2 and 4 passes.
scale    The cost table: MLP widths 256-4096 and GPT-2 depths 2-12 (docs/cost.md).
hf       A GPT-2 and a ViT (transformers, built from configs, ``--hf-size``) at ``layers``
         placement: step time of plain, floor, dip store, dip regen (m = 1) and dip m = 4 (the
         device's default noise), x plain and x floor, and each step's peak memory x plain.
offload  Bytes a user's own saved-tensor hooks (activation offloading) are handed, x plain, for
         the image models and the GPT-2 (``layers``): dipnet packs nothing beneath such hooks.
hf_compile  The same two models compiled (``--compile-backend``): plain and dipnet (m = 1, the
         device's default noise) compiled beside eager; compiled dip x compiled plain.

On a GPU (``--device cuda``) timings use CUDA events, memory ``torch.cuda.max_memory_allocated``
and ``--bf16`` runs the forward under bf16 autocast. On a CPU timings are process CPU time (the
other tenants of a shared machine then count less; ``--wall`` for wall time). Ratios come from
interleaved rounds, the order shuffled every round (seeded), so drift and the state one step
leaves for the next hit every variant alike. A benchmark, not a test: nothing asserts.

Run: .venv/bin/python benchmarks/bench_overhead.py [--sections floor,memory] [--json out.json]
On a GPU: scripts/gpu_check.sh runs it (``--device cuda``, and ``--bf16``); docs/cost.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

import dipnet
from dipnet import noise

STORE = {"regenerate": False}
CONTIGUOUS = torch.contiguous_format
REGEN = {"regenerate": True, "pack_inputs": True}


# ---------------------------------------------------------------------- models
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
    def __init__(self, d: int = 64, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(49, d)  # 7x7 patches of a 28x28 image: 16 tokens
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.reshape(b, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(b, 16, 49)
        return self.head(self.encoder(self.inp(patches)).mean(1))


def mlp(width: int = 512) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width),
                         nn.ReLU(), nn.Linear(width, 10))


IMAGE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp, "cnn": small_cnn, "transformer": SmallTransformer}


def gpt2(layers: int = 4, d: int = 256, seq: int = 128) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=seq, n_embd=d, n_layer=layers,
                                      n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0))


# Sizes of the hf sections' models: (GPT-2 layers, width, sequence, batch, vocabulary) and (ViT
# image side, patch, width, layers, heads, batch). "base" is GPT-2 small (124M) and ViT-B/16 at
# 224 px, what users fine-tune; "small" fits a CPU; "tiny" is for tests.
HF_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {"gpt2": (2, 32, 16, 2, 256), "vit": (16, 4, 32, 2, 2, 2)},
    "small": {"gpt2": (4, 256, 128, 8, 1024), "vit": (32, 4, 192, 6, 3, 64)},
    "base": {"gpt2": (12, 768, 512, 8, 50257), "vit": (224, 16, 768, 12, 12, 32)},
}


def vit(side: int, patch: int, d: int, layers: int, heads: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=side, patch_size=patch, num_channels=3, hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * d, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def hf_benches(args: argparse.Namespace, device: torch.device) -> dict[str, "Bench"]:
    """The hf sections' GPT-2 and ViT, each in a `Bench` at ``layers`` placement."""
    size = HF_SIZES[args.hf_size]
    layers, d, seq, batch, vocab = size["gpt2"]
    side, patch, vd, vlayers, heads, vbatch = size["vit"]

    def lm() -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d,
                                          n_layer=layers, n_head=max(1, d // 64), resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                          eos_token_id=0))

    ids = torch.randint(0, vocab, (batch, seq), device=device)
    images = {"pixel_values": torch.rand(vbatch, 3, side, side, device=device),
              "labels": torch.randint(0, 10, (vbatch,), device=device)}
    return {
        f"gpt2 {layers}x{d} seq {seq} batch {batch}": Bench(
            lm, {"input_ids": ids, "labels": ids}, None, device, args.bf16),
        f"vit {vlayers}x{vd} {side}px/{patch} batch {vbatch}": Bench(
            lambda: vit(side, patch, vd, vlayers, heads), images, None, device, args.bf16),
    }


# ---------------------------------------------------------------------- measuring
class Clock:
    """Seconds per call of a function: CUDA events on a GPU, process CPU time (or wall time)
    on a CPU."""

    def __init__(self, device: torch.device, wall: bool) -> None:
        self.device = device
        self.wall = wall

    def time(self, fn: Callable[[], Any], number: int) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1e3 / number
        now = time.perf_counter if self.wall else time.process_time
        t0 = now()
        for _ in range(number):
            fn()
        return (now() - t0) / number


def interleaved(clock: Clock, fns: dict[str, Callable[[], Any]], repeats: int, number: int
                ) -> dict[str, float]:
    """Median seconds per call of each function over ``repeats`` interleaved rounds.

    The order is shuffled every round (seeded): a step timed right after another one pays for
    that one's freed memory (measured on the CPU: the same DIPNet step read 1.11x the floor
    placed right after the floor, 1.05x placed later in the round; rotating the order keeps
    who follows whom and did not remove it).
    """
    for fn in fns.values():  # warm-up (and compilation)
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    order = random.Random(0)
    for _ in range(repeats):
        order.shuffle(names)
        for k in names:
            samples[k].append(clock.time(fns[k], number))
    return {k: statistics.median(v) for k, v in samples.items()}


def saved_bytes(fn: Callable[[], Any], params: list[torch.Tensor], observer: bool = True) -> int:
    """Bytes saved for backward by the forward pass in ``fn`` (unique storages, no parameters);
    ``observer=False``: as a user's own saved-tensor hooks (offloading) are handed them."""
    n, out = noise.saved_tensor_bytes(fn, params, observer)
    del out
    return n


class _MallocPeak:
    """Bytes glibc's malloc has handed out (``mallinfo2``: heap in use + mmapped chunks), read
    after every ATen op of the thread: the CPU counterpart of CUDA's max_memory_allocated."""

    def __init__(self) -> None:
        import ctypes

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL(None)
        self.fn = libc.mallinfo2
        self.fn.restype = Mallinfo2

    def now(self) -> int:
        info = self.fn()
        return int(info.uordblks + info.hblkhd)


def peak_memory(device: torch.device, fn: Callable[[], Any]) -> float | None:
    """Peak memory above the starting point while ``fn()`` runs, in MB: CUDA
    max_memory_allocated, or on a glibc CPU the bytes malloc has out, sampled after every op;
    None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    try:
        malloc = _MallocPeak()
    except (OSError, AttributeError):
        return None
    from torch.utils._python_dispatch import TorchDispatchMode

    class Sample(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            Sample.peak = max(Sample.peak, malloc.now())
            return out

    base = malloc.now()
    Sample.peak = base
    with Sample():
        fn()
    return (Sample.peak - base) / 1e6


# ---------------------------------------------------------------------- the floor
class FloorNoise(nn.Module):
    """The floor's projections: at the hosts dipnet projects, ``addcmul(x, randn_like(x), std)``
    with a learned std per feature, nothing else (or noise drawn once, ``predrawn``)."""

    def __init__(self, model: nn.Module, projected: nn.Module, predrawn: bool = False) -> None:
        super().__init__()
        self.stds = nn.ParameterList()
        self.predrawn = predrawn
        self.fixed: dict[int, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for name, proj in dipnet.projections(projected).items():
            std = nn.Parameter(proj.variance.detach().sqrt().clone())
            self.stds.append(std)
            hook = self._hook(len(self.stds) - 1, proj.feature_dim)
            if proj.on == "output":
                modules[name].register_forward_hook(lambda m, a, out, h=hook: h(out))
            else:
                modules[name].register_forward_pre_hook(self._pre(hook), with_kwargs=True)

    def _hook(self, i: int, feature_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def project(x: torch.Tensor) -> torch.Tensor:
            std = self.stds[i].to(x.dtype)
            dim = feature_dim if feature_dim >= 0 else x.dim() + feature_dim
            if dim != x.dim() - 1:
                shape = [1] * x.dim()
                shape[dim] = -1
                std = std.view(shape)
            if self.predrawn:
                eps = self.fixed.get(i)
                if eps is None or eps.shape != x.shape:
                    eps = self.fixed[i] = torch.randn_like(x, memory_format=CONTIGUOUS)
            else:
                # Contiguous: ATen's CPU normal_ is vectorised only for contiguous tensors, and
                # inductor lays conv activations out channels-last (8x slower measured).
                eps = torch.randn_like(x, memory_format=CONTIGUOUS)
            return torch.addcmul(x, eps, std)
        return project

    @staticmethod
    def _pre(project: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args and isinstance(args[0], torch.Tensor):
                u = project(args[0])
                return (u,) + tuple(u if a is args[0] else a for a in args[1:]), kwargs
            key = next(k for k in ("hidden_states", "x", "input") if k in kwargs)
            return args, {**kwargs, key: project(kwargs[key])}
        return hook


class Bench:
    """Step functions for one model: plain, floor variants and dipnet, sharing weights' shapes."""

    def __init__(self, factory: Callable[[], nn.Module], batch: Any, targets: torch.Tensor | None,
                 device: torch.device, bf16: bool, placement: str = "layers") -> None:
        torch.manual_seed(0)
        base = factory().to(device)
        self.device = device
        self.batch, self.targets = batch, targets
        self.cfg = dipnet.DIPConfig(placement=placement, init_variance=1e-2)
        self.plain = copy.deepcopy(base).train()
        self.dip = dipnet.project(copy.deepcopy(base), self.cfg).train()
        self.floor = copy.deepcopy(base).train()
        self.floor_noise = FloorNoise(self.floor, self.dip).to(device)
        self.pre = copy.deepcopy(base).train()
        self.pre_noise = FloorNoise(self.pre, self.dip, predrawn=True).to(device)
        self.loss = dipnet.DIPLoss(self.cfg, num_train=60_000)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())
        self.opts = {
            "plain": torch.optim.SGD(self.plain.parameters(), lr=1e-4),
            "floor": torch.optim.SGD(list(self.floor.parameters()) +
                                     list(self.floor_noise.parameters()), lr=1e-4),
            "pre": torch.optim.SGD(list(self.pre.parameters()) + list(self.pre_noise.parameters()),
                                   lr=1e-4),
            "dip": torch.optim.SGD(self.dip.parameters(), lr=1e-4),
        }

    # losses ---------------------------------------------------------------
    def _model_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        with self.autocast:
            if isinstance(batch, dict):
                return model(**batch).loss
            return nn.functional.cross_entropy(model(batch), self.targets)

    def loss_fn(self, which: str) -> Callable[[Any], torch.Tensor]:
        """A function batch -> loss for ``which`` in plain / pre / floor / dip."""
        if which == "dip":
            def dip_loss(batch: Any) -> torch.Tensor:
                with self.autocast:
                    return self.loss(self.dip, batch, self.targets).total
            return dip_loss
        model = {"plain": self.plain, "pre": self.pre, "floor": self.floor}[which]
        return lambda batch: self._model_loss(model, batch)

    def step(self, which: str, options: dict | None = None, grad_input: bool = False,
             loss: Callable[[Any], torch.Tensor] | None = None) -> Callable[[], None]:
        """One SGD step of ``which``; dipnet under the noise ``options``."""
        loss = loss or self.loss_fn(which)
        opt = self.opts[which]
        batch = self.batch
        if grad_input:
            batch = batch.clone().requires_grad_()
        settings = (lambda: noise.options(**options)) if options else contextlib.nullcontext

        def run() -> None:
            with settings():
                opt.zero_grad(set_to_none=True)
                loss(batch).backward()
                opt.step()
        return run

    def params(self) -> list[torch.Tensor]:
        return [p for m in (self.plain, self.dip, self.floor, self.floor_noise)
                for p in m.parameters()]

    def saved(self, which: str, options: dict | None = None, observer: bool = True) -> int:
        settings = noise.options(**options) if options else contextlib.nullcontext()
        with settings:
            return saved_bytes(lambda: self.loss_fn(which)(self.batch), self.params(), observer)


# ---------------------------------------------------------------------- sections
def section_floor(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    for name in args.models.split(","):
        x = torch.rand(args.batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        b = Bench(IMAGE_MODELS[name], x, y, device, args.bf16)
        times = interleaved(clock, {
            "plain": b.step("plain"),
            "plain+grad_in": b.step("plain", grad_input=True),
            "+addcmul pre-drawn": b.step("pre"),
            "floor": b.step("floor"),
            "dip store": b.step("dip", STORE),
            "dip regen": b.step("dip", REGEN),
        }, args.repeats, args.number)
        saved = {"plain": b.saved("plain"), "floor": b.saved("floor"),
                 "dip store": b.saved("dip", STORE), "dip regen": b.saved("dip", REGEN)}
        # Eval forward and m=4 batched vs looped, as before issue 10.
        loss4 = dipnet.DIPLoss(dipnet.DIPConfig(m=4), num_train=60_000)

        def loop4() -> None:
            b.opts["dip"].zero_grad(set_to_none=True)
            nll = sum(nn.functional.cross_entropy(b.dip(x), y) for _ in range(4)) / 4
            (nll + loss4.scaled_barrier(b.dip)).backward()
            b.opts["dip"].step()
        multi = interleaved(clock, {"batched_m4": b.step("dip", loss=lambda t: loss4(
            b.dip, t, y).total), "loop_m4": loop4}, args.repeats, max(1, args.number // 2))
        b.plain.eval()
        b.dip.eval()
        with torch.no_grad():
            ev = interleaved(clock, {"plain": lambda: b.plain(x), "dip": lambda: b.dip(x)},
                             args.repeats, args.number * 4)
        b.plain.train()
        b.dip.train()
        out[name] = {
            "ms": {k: 1e3 * v for k, v in times.items()},
            "x_plain": {k: v / times["plain"] for k, v in times.items()},
            "x_floor": {k: v / times["floor"] for k, v in times.items()},
            "saved_mb": {k: v / 1e6 for k, v in saved.items()},
            "saved_x_plain": {k: v / saved["plain"] for k, v in saved.items()},
            "batched_vs_loop_m4": multi["batched_m4"] / multi["loop_m4"],
            "eval_dip_vs_plain": ev["dip"] / ev["plain"],
            "params_added_fraction": sum(p.numel() for p in dipnet.variance_parameters(b.dip))
            / sum(p.numel() for p in b.plain.parameters()),
        }
        r = out[name]
        print(f"\n[floor] {name}, batch {args.batch}: ms (x plain, x floor); saved MB (x plain)")
        for k in times:
            print(f"  {k:<20} {r['ms'][k]:8.2f} ms  x plain {r['x_plain'][k]:6.3f}  "
                  f"x floor {r['x_floor'][k]:6.3f}"
                  + (f"   saved {r['saved_mb'][k]:7.2f} MB  x plain {r['saved_x_plain'][k]:5.2f}"
                     if k in saved else ""))
        print(f"  m=4 batched / loop {r['batched_vs_loop_m4']:.3f}   eval dip / plain "
              f"{r['eval_dip_vs_plain']:.3f}   params added "
              f"{100 * r['params_added_fraction']:.3f} %")
    return out


def _lm_batch(device: torch.device, batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 1024, (batch, seq), device=device)
    return {"input_ids": ids, "labels": ids}


def memory_row(b: Bench, clock: Clock, args: argparse.Namespace, number: int) -> dict:
    """Saved bytes and time of plain, floor, dip store and dip regen for one Bench."""
    saved = {"plain": b.saved("plain"), "floor": b.saved("floor"),
             "dip store": b.saved("dip", STORE), "dip regen": b.saved("dip", REGEN)}
    times = interleaved(clock, {"plain": b.step("plain"), "floor": b.step("floor"),
                                "dip store": b.step("dip", STORE),
                                "dip regen": b.step("dip", REGEN)},
                        args.repeats, number)
    return {"saved_mb": {k: v / 1e6 for k, v in saved.items()},
            "saved_x_plain": {k: v / saved["plain"] for k, v in saved.items()},
            "ms": {k: 1e3 * v for k, v in times.items()},
            "x_plain": {k: v / times["plain"] for k, v in times.items()},
            "x_floor": {k: v / times["floor"] for k, v in times.items()}}


def _print_memory(title: str, r: dict) -> None:
    print(f"\n[{title}]")
    for k in r["saved_mb"]:
        print(f"  {k:<10} saved {r['saved_mb'][k]:8.2f} MB  x plain {r['saved_x_plain'][k]:5.3f}"
              f"   {r['ms'][k]:8.2f} ms  x plain {r['x_plain'][k]:5.3f}  "
              f"x floor {r['x_floor'][k]:5.3f}")


def section_memory(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    out["mlp"] = memory_row(Bench(mlp, x, y, device, args.bf16), clock, args, args.number)
    _print_memory(f"memory] mlp 784-512-512-10, batch {args.batch}", out["mlp"])
    for placement in ("layers", "blocks"):
        b = Bench(gpt2, _lm_batch(device, 8, 128), None, device, args.bf16, placement)
        key = f"gpt2_{placement}"
        out[key] = memory_row(b, clock, args, max(1, args.number // 5))
        _print_memory(f"memory] GPT-2 4 layers d256 seq128 batch8, {placement}", out[key])
    return out


def section_compile(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    noise.prepare_compile()
    out: dict[str, Any] = {}
    for name in args.models.split(","):
        torch._dynamo.reset()
        x = torch.rand(args.batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        b = Bench(IMAGE_MODELS[name], x, y, device, args.bf16)
        default = dict(noise.OPTIONS.__dict__)  # the device's default formulation
        compiled = {k: torch.compile(b.loss_fn(k)) for k in ("plain", "floor", "dip")}
        t0 = time.perf_counter()
        times = interleaved(clock, {
            "plain": b.step("plain"), "floor": b.step("floor"), "dip": b.step("dip", default),
            "plain compiled": b.step("plain", loss=compiled["plain"]),
            "floor compiled": b.step("floor", loss=compiled["floor"]),
            "dip compiled": b.step("dip", default, loss=compiled["dip"]),
        }, args.repeats, args.number)
        out[name] = {"ms": {k: 1e3 * v for k, v in times.items()},
                     "dip_compiled_x_dip_eager": times["dip compiled"] / times["dip"],
                     "dip_compiled_x_floor_compiled": times["dip compiled"] / times["floor compiled"],
                     "dip_compiled_x_floor_eager": times["dip compiled"] / times["floor"],
                     "plain_compiled_x_plain_eager": times["plain compiled"] / times["plain"],
                     "floor_compiled_x_floor_eager": times["floor compiled"] / times["floor"],
                     "seconds_incl_compilation": time.perf_counter() - t0,
                     "formulation": noise.regenerates(device) and "regen" or "store"}
        r = out[name]
        print(f"\n[compile] {name}, batch {args.batch}, inductor with fallback_random, "
              f"formulation {r['formulation']}")
        for k, v in r["ms"].items():
            print(f"  {k:<16} {v:8.2f} ms")
        print(f"  dip compiled / dip eager {r['dip_compiled_x_dip_eager']:.3f}   dip compiled / "
              f"floor compiled {r['dip_compiled_x_floor_compiled']:.3f}   dip compiled / floor "
              f"eager {r['dip_compiled_x_floor_eager']:.3f}   plain compiled / eager "
              f"{r['plain_compiled_x_plain_eager']:.3f}   floor compiled / eager "
              f"{r['floor_compiled_x_floor_eager']:.3f}")
    return out


def section_chunks(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    m, batch, width = 8, 4 * args.batch, 512  # activations, not weights, dominate
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    torch.manual_seed(0)
    model = dipnet.project(mlp(width).to(device), dipnet.DIPConfig(m=m))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    fns = {}
    for chunks in (1, 2, 4):
        loss = dipnet.DIPLoss(dipnet.DIPConfig(m=m, chunks=chunks), num_train=60_000)

        def step(loss: dipnet.DIPLoss = loss) -> None:
            opt.zero_grad(set_to_none=True)
            loss(model, x, y).total.backward()
            opt.step()
        fns[f"chunks={chunks}"] = step
    times = interleaved(clock, fns, args.repeats, max(1, args.number // 5))
    peaks = {k: peak_memory(device, fn) for k, fn in fns.items()}
    out["mlp"] = {"m": m, "batch": batch, "width": width,
                  "ms": {k: 1e3 * v for k, v in times.items()},
                  "x_one_pass": {k: v / times["chunks=1"] for k, v in times.items()},
                  "peak_mb": peaks}
    print(f"\n[chunks] mlp 784-{width}-{width}-10, m={m}, batch {batch}: time and peak memory "
          f"({'CUDA max allocated' if device.type == 'cuda' else 'malloc bytes out'}"
          " above the start)")
    for k in fns:
        peak = peaks[k]
        print(f"  {k:<10} {1e3 * times[k]:8.2f} ms  x one pass {times[k] / times['chunks=1']:.3f}"
              f"   peak {'n/a' if peak is None else f'{peak:8.1f} MB'}")
    return out


def section_scale(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {"mlp": {}, "gpt2": {}}
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    for width in (256, 512, 1024, 2048, 4096):
        r = memory_row(Bench(lambda w=width: mlp(w), x, y, device, args.bf16), clock, args,
                       max(1, args.number * 256 // width // 2))
        out["mlp"][width] = r
        _print_memory(f"scale] mlp 784-{width}-{width}-10, batch {args.batch}", r)
    for depth in (2, 4, 8, 12):
        b = Bench(lambda d=depth: gpt2(d, 128, 64), _lm_batch(device, 8, 64), None, device,
                  args.bf16)
        r = memory_row(b, clock, args, max(1, args.number // depth))
        out["gpt2"][depth] = r
        _print_memory(f"scale] GPT-2 {depth} layers d128 seq64 batch8, layers", r)
    return out


def section_offload(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    benches = {f"{name}, batch {args.batch}": Bench(IMAGE_MODELS[name], x, y, device, args.bf16)
               for name in args.models.split(",")}
    benches["gpt2 4x256 seq 128 batch 8, layers"] = Bench(gpt2, _lm_batch(device, 8, 128), None,
                                                          device, args.bf16)
    print("\n[offload] bytes handed to a user's saved-tensor hooks (what activation offloading "
          "moves), x plain; 'alone': dipnet's own saved bytes with no other hooks")
    for name, b in benches.items():
        handed = {"plain": b.saved("plain", observer=False),
                  "dip store": b.saved("dip", STORE, observer=False),
                  "dip regen": b.saved("dip", REGEN, observer=False),
                  "dip regen alone": b.saved("dip", REGEN)}
        out[name] = {"mb": {k: v / 1e6 for k, v in handed.items()},
                     "x_plain": {k: v / handed["plain"] for k, v in handed.items()}}
        print(f"  {name:<36} plain {handed['plain'] / 1e6:8.2f} MB   " + "   ".join(
            f"{k} {v:.3f}x" for k, v in out[name]["x_plain"].items() if k != "plain"))
    return out


def _ratios(values: dict[str, float | None], base: str) -> dict[str, float | None]:
    ref = values.get(base)
    return {k: (None if v is None or not ref else v / ref) for k, v in values.items()}


def section_hf(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    for name, b in hf_benches(args, device).items():
        loss4 = dipnet.DIPLoss(dataclasses.replace(b.cfg, m=4), num_train=60_000)
        fns = {"plain": b.step("plain"), "floor": b.step("floor"),
               "dip store": b.step("dip", STORE), "dip regen": b.step("dip", REGEN),
               "dip m=4": b.step("dip", loss=lambda batch: loss4(b.dip, batch).total)}
        times = interleaved(clock, fns, args.repeats, max(1, args.number // 2))
        peaks = {k: peak_memory(device, fn) for k, fn in fns.items()}
        out[name] = {"ms": {k: 1e3 * v for k, v in times.items()},
                     "x_plain": _ratios(times, "plain"), "x_floor": _ratios(times, "floor"),
                     "peak_mb": peaks, "peak_x_plain": _ratios(peaks, "plain"),
                     "noise_default": "regen" if noise.regenerates(device) else "store"}
        r = out[name]
        print(f"\n[hf] {name}, layers placement: ms (x plain, x floor), peak memory (x plain)")
        for k in fns:
            peak = r["peak_mb"][k]
            print(f"  {k:<10} {r['ms'][k]:8.2f} ms  x plain {r['x_plain'][k]:6.3f}  x floor "
                  f"{r['x_floor'][k]:6.3f}   peak "
                  + ("n/a" if peak is None else f"{peak:8.1f} MB  x plain "
                     f"{r['peak_x_plain'][k]:5.3f}"))
    return out


def section_hf_compile(args: argparse.Namespace, clock: Clock, device: torch.device) -> dict:
    noise.prepare_compile()
    out: dict[str, Any] = {}
    for name, b in hf_benches(args, device).items():
        torch._dynamo.reset()
        compiled = {k: torch.compile(b.loss_fn(k), backend=args.compile_backend)
                    for k in ("plain", "dip")}
        t0 = time.perf_counter()
        times = interleaved(clock, {
            "plain": b.step("plain"), "dip": b.step("dip"),
            "plain compiled": b.step("plain", loss=compiled["plain"]),
            "dip compiled": b.step("dip", loss=compiled["dip"])},
            args.repeats, max(1, args.number // 2))
        out[name] = {"ms": {k: 1e3 * v for k, v in times.items()},
                     "dip_compiled_x_plain_compiled": times["dip compiled"]
                     / times["plain compiled"],
                     "dip_x_plain_eager": times["dip"] / times["plain"],
                     "dip_compiled_x_dip_eager": times["dip compiled"] / times["dip"],
                     "plain_compiled_x_plain_eager": times["plain compiled"] / times["plain"],
                     "seconds_incl_compilation": time.perf_counter() - t0,
                     "backend": args.compile_backend,
                     "formulation": "regen" if noise.regenerates(device) else "store"}
        r = out[name]
        print(f"\n[hf_compile] {name}, {args.compile_backend}, formulation {r['formulation']}")
        for k, v in r["ms"].items():
            print(f"  {k:<16} {v:8.2f} ms")
        print(f"  dip compiled / plain compiled {r['dip_compiled_x_plain_compiled']:.3f}   "
              f"eager dip / plain {r['dip_x_plain_eager']:.3f}   dip compiled / eager "
              f"{r['dip_compiled_x_dip_eager']:.3f}   plain compiled / eager "
              f"{r['plain_compiled_x_plain_eager']:.3f}")
    return out


SECTIONS = {"floor": section_floor, "memory": section_memory, "compile": section_compile,
            "chunks": section_chunks, "scale": section_scale, "offload": section_offload,
            "hf": section_hf, "hf_compile": section_hf_compile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="floor,memory,compile,chunks",
                        help=f"comma-separated subset of {list(SECTIONS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda if present)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=15,
                        help="interleaved rounds; medians are over these (default 15)")
    parser.add_argument("--number", type=int, default=5,
                        help="calls per round, averaged (default 5)")
    parser.add_argument("--models", default=",".join(IMAGE_MODELS),
                        help=f"floor section: comma-separated subset of {list(IMAGE_MODELS)}")
    parser.add_argument("--hf-size", default="small", choices=list(HF_SIZES),
                        help="hf sections: model sizes (base: GPT-2 124M and ViT-B/16 at 224 px)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="hf_compile section: torch.compile backend (default inductor)")
    parser.add_argument("--wall", action="store_true", help="CPU: wall time, not CPU time")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.bf16 and device.type != "cuda":
        raise SystemExit("--bf16 is for CUDA (autocast); on a CPU leave it out")
    names = args.sections.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    clock = Clock(device, args.wall)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"torch {torch.__version__}, {hardware}, {args.threads} thread(s), "
          f"{'bf16 autocast' if args.bf16 else 'float32'}, medians of {args.repeats} interleaved "
          f"rounds of {args.number} steps, {'wall' if args.wall or device.type == 'cuda' else 'CPU'}"
          f" time; noise default on {device.type}: "
          f"{'regenerate' if noise.regenerates(device) else 'store'}")
    results: dict[str, Any] = {}
    for name in names:
        results[name] = SECTIONS[name](args, clock, device)
        if args.json:  # after every section: a run stopped by a time limit keeps what it had
            with open(args.json, "w") as f:
                json.dump({"settings": vars(args), "torch": torch.__version__, "device": hardware,
                           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                           "results": results}, f, indent=2, default=str)
    print("\ngoals (issue 10): saved bytes dip regen <= 1.10x plain (MLP), <= 1.03x (GPT-2 "
          "layers); m=1 step <= 1.03x floor; compiled dip <= eager dip and <= 1.10x compiled "
          "floor")
    print("goals on a GPU with --bf16 (issue 18, hf sections): m=1 step <= 1.05x plain (ViT, "
          "GPT-2, layers); peak memory dip regen <= 1.05x plain; compiled dip <= 1.02x "
          "compiled plain")


if __name__ == "__main__":
    main()
