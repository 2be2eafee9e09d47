"""A timed ViT fine-tune with the Hugging Face Trainer: standard vs dipnet vs fixed_noise.

The model is transformers' ViTForImageClassification built from a config (random weights, no
download; ``--size``), trained for ``--steps`` optimizer steps on real images:

  standard     transformers' Trainer on the plain model
  dipnet       `dipnet.hf.DIPTrainer` on the model projected at ``--placement`` (default
               ``layers``), variances learned
  fixed_noise  the same projections with the variances frozen (``learn_variance=False``)

Per arm: images per second over the steps after ``--warmup`` (CUDA-synchronised wall time),
peak memory (``torch.cuda.max_memory_allocated``; not measured on a CPU), the training loss, and
the test accuracy of the deterministic prediction (a check that it trained, not a result:
random initial weights, a few hundred steps).

Data: a data set in dipnet's own-data ``.npz`` format (docs/cli.md; uint8 pixels travel
compactly). ``--prepare FILE`` writes one from Fashion-MNIST (``--train`` / ``--test`` images),
read where ``dipnet train --dataset fashion_mnist`` reads it; ~10 MB for 20,000 + 2,000 images,
small enough to travel to a GPU machine beside the working tree (scripts/gpu_check.sh).
Without ``--data`` (or when the default file is missing) it fine-tunes on scikit-learn's digits.

Run:  .venv/bin/python benchmarks/bench_finetune_vit.py --prepare runs/gpu-data/fashion_mnist.npz
      python benchmarks/bench_finetune_vit.py --device cuda --bf16 --data FILE --json out.json
A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dipnet
from dipnet.experiments.zoo.data import load_dataset

DEFAULT_DATA = Path("runs/gpu-data/fashion_mnist.npz")
ARMS = ("standard", "dipnet", "fixed_noise")
# ViT sizes: (hidden size, layers, heads, patch). "small" is ViT-Tiny's width at 6 layers.
SIZES = {"tiny": (32, 2, 2, 4), "small": (192, 6, 3, 4), "base": (384, 12, 6, 4)}


def prepare(path: Path, source: str, n_train: int, n_test: int) -> None:
    """Write ``n_train`` training and ``n_test`` test images of ``source`` (a registered data
    set) to ``path`` as an own-data ``.npz`` with uint8 pixels."""
    data = load_dataset(source, val_fraction=0.0, max_train=n_train)
    test_x, test_y = data.test.x[:n_test], data.test.y[:n_test]

    def pixels(x: torch.Tensor) -> np.ndarray:
        return (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, x_train=pixels(data.train.x), y_train=data.train.y.numpy(),
                        x_test=pixels(test_x), y_test=test_y.numpy(),
                        class_names=np.array(data.class_names))
    os.replace(tmp, path)
    print(f"wrote {path}: {len(data.train)} train / {len(test_y)} test images of {source} "
          f"{tuple(data.train.x.shape[1:])}, {path.stat().st_size / 1e6:.1f} MB")


class Images(torch.utils.data.Dataset):
    """(x, y) tensors as the Trainer's dicts of ``pixel_values`` and ``labels``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def make_model(size: str, shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    d, layers, heads, patch = SIZES[size]
    return ViTForImageClassification(ViTConfig(
        image_size=shape[-1], patch_size=patch, num_channels=shape[0], hidden_size=d,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * d,
        num_labels=classes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _timer(device: torch.device, warmup: int) -> Any:
    from transformers import TrainerCallback

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    class Timer(TrainerCallback):
        """Wall time from the end of step ``warmup`` to the end of training."""

        start: float | None = None
        end: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == warmup:
                self.start = now()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.end = now()

    return Timer()


def run_arm(arm: str, args: argparse.Namespace, data: Any, device: torch.device) -> dict:
    """Fine-tune one arm; returns its figures."""
    from transformers import Trainer, TrainingArguments

    from dipnet.hf import DIPTrainer, project_model

    torch.manual_seed(args.seed)
    shape = tuple(data.train.x.shape[1:])
    model = make_model(args.size, shape, len(data.class_names))
    kwargs: dict[str, Any] = {}
    trainer_cls: Any = Trainer
    if arm != "standard":
        cfg = dipnet.DIPConfig(placement=args.placement, learn_variance=arm == "dipnet")
        project_model(model, cfg)
        trainer_cls, kwargs = DIPTrainer, {"num_train": len(data.train)}
    timer = _timer(device, args.warmup)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
            learning_rate=args.lr, warmup_steps=0, lr_scheduler_type="constant",
            logging_steps=args.steps, report_to="none", save_strategy="no", disable_tqdm=True,
            seed=args.seed, bf16=args.bf16, use_cpu=device.type == "cpu",
            dataloader_pin_memory=device.type == "cuda")
        trainer = trainer_cls(model=model, args=targs, train_dataset=Images(*data.train),
                              callbacks=[timer], **kwargs)
        result = trainer.train()
    timed_steps = args.steps - args.warmup
    seconds = (timer.end - timer.start) if timer.start is not None else None
    model.eval()
    correct = 0
    x, y = data.test.x.to(device), data.test.y.to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        for i in range(0, len(y), 512):
            correct += int((model(pixel_values=x[i:i + 512]).logits.argmax(-1)
                            == y[i:i + 512]).sum())
    return {
        "images_per_s": None if not seconds else timed_steps * args.batch / seconds,
        "ms_per_step": None if not seconds else 1e3 * seconds / timed_steps,
        "peak_mb": (torch.cuda.max_memory_allocated(device) / 1e6 if device.type == "cuda"
                    else None),
        "train_loss": float(result.training_loss),
        "test_accuracy": correct / len(y),
        "trainer_samples_per_s": result.metrics.get("train_samples_per_second"),
        "projections": len(dipnet.projections(model)),
    }


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, prepare the data or run the arms; returns the results (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, default=None,
                        help="write the .npz data set to this file and stop")
    parser.add_argument("--source", default="fashion_mnist", help="--prepare: registered set")
    parser.add_argument("--train", type=int, default=20_000, help="--prepare: training images")
    parser.add_argument("--test", type=int, default=2_000, help="--prepare: test images")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"own-data .npz (default {DEFAULT_DATA} if present, else digits)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (Trainer)")
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--placement", default="layers", help="DIPConfig.placement")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {ARMS}")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="steps not timed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare, args.source, args.train, args.test)
        return {}
    arms = args.arms.split(",")
    if any(a not in ARMS for a in arms) or not 0 <= args.warmup < args.steps:
        parser.error(f"--arms takes a subset of {ARMS}; --warmup must be below --steps")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    source = args.data if args.data is not None else (
        DEFAULT_DATA if DEFAULT_DATA.is_file() else None)
    data = load_dataset(str(source) if source is not None else "digits", val_fraction=0.0)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"ViT fine-tune: torch {torch.__version__}, {hardware}, "
          f"{'bf16' if args.bf16 else 'float32'}, data {source or 'digits'} "
          f"({len(data.train)} train, {len(data.test)} test, {tuple(data.train.x.shape[1:])}), "
          f"size {args.size}, batch {args.batch}, {args.steps} steps ({args.warmup} untimed)")
    results = {}
    for arm in arms:
        r = results[arm] = run_arm(arm, args, data, device)
        ips = "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:9.0f} images/s"
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:8.1f} MB"
        print(f"  {arm:<12} {ips}  peak {peak}  loss {r['train_loss']:.3f}  "
              f"test acc {r['test_accuracy']:.3f}  ({r['projections']} projections)")
    base = results.get("standard")
    if base and base["images_per_s"]:
        for arm, r in results.items():
            r["time_x_standard"] = base["images_per_s"] / r["images_per_s"]
            if base["peak_mb"]:
                r["peak_x_standard"] = r["peak_mb"] / base["peak_mb"]
        print("  step time x standard: " + ", ".join(
            f"{a} {r['time_x_standard']:.3f}" for a, r in results.items()))
    out = {"settings": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
           "device": hardware, "data": str(source or "digits"),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
