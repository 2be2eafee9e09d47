"""Batches of any shape the models take: their size, m copies stacked trajectory-major, and how
many rows one stacked forward pass may hold on a device (`default_rows`, `activation_size`).

A batch is a tensor (passed positionally) or a mapping of keyword inputs (a Hugging Face
tokenizer's output); `dipnet.objective`, `dipnet.trajectories`, `dipnet.monitor` and
`dipnet.predict` all read it through these two functions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

Batch = torch.Tensor | Mapping[str, Any]


def batch_size_of(inputs: Batch) -> int:
    """The batch size of a tensor or of the first tensor in a mapping.

    Raises:
        ValueError: if there is no tensor to read it from.
    """
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch axis; got a 0-d tensor")
        return inputs.shape[0]
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("inputs hold no tensor with a batch axis")


def repeat_batch(inputs: Any, m: int, batch_size: int | None = None) -> Any:
    """Stack ``m`` copies of a batch along axis 0, trajectory-major: row j*B + i is copy j of i.

    Tensors whose first axis is the batch are repeated; dicts/lists are handled recursively;
    anything else (flags, a scalar tensor) is passed through.
    """
    if m == 1:
        return inputs
    if batch_size is None:
        batch_size = batch_size_of(inputs)
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() > 0 and inputs.shape[0] == batch_size:
            return inputs.repeat(m, *([1] * (inputs.dim() - 1)))
        return inputs
    if isinstance(inputs, Mapping):
        # A plain dict even for a BatchEncoding: the result is only ever splatted into forward().
        return {k: repeat_batch(v, m, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(repeat_batch(v, m, batch_size) for v in inputs)
    return inputs


# How many rows one stacked forward pass may hold. Measured with benchmarks/bench_evaluation.py
# and by hand (1 CPU thread): on a CPU one pass over k * B rows is slower than k passes over B
# rows once the activations leave the caches (0.7x for an MLP 784-256-256 and 0.5x for a
# ResNet-8 at k * B = 4,000 rows; the best pass holds about a million elements in its largest
# activation: 1,000 rows of the MLP, one batch of 100-200 images of the ResNet, 4,000 rows of
# a 64-256-256 MLP). So on a CPU a pass holds up to CPU_ELEMENTS in the largest activation
# per row found by `activation_size`; a GPU runs up to GPU_ROWS rows in one pass.
CPU_ELEMENTS = 1_000_000
GPU_ROWS = 65536


def default_rows(device: torch.device | str, row_elements: int = 1) -> int:
    """The default row budget of one stacked forward pass on ``device``, for a model whose
    largest activation holds ``row_elements`` elements per row (see CPU_ELEMENTS)."""
    if torch.device(device).type == "cpu":
        return max(1, CPU_ELEMENTS // max(1, int(row_elements)))
    return GPU_ROWS


def activation_size(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """Elements per row of the largest tensor ``fn`` saves for backward on inputs like ``x``.

    One forward pass on 7 copies of ``x[0]`` with the global RNG forked (the caller's noise
    stream is untouched) and gradients on; the input's own size if ``fn`` saves nothing.
    """
    rows = 7  # a batch size no layer width is likely to equal
    probe = x[:1].detach().expand(rows, *x.shape[1:]).clone().requires_grad_(True)
    largest = [x[0].numel()]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 0 and t.shape[0] == rows:
            largest[0] = max(largest[0], t[0].numel())
        return t

    devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(probe)
    return largest[0]
