"""Running the m trajectories of a `DIPLoss` step: in one stacked pass, or in chunks.

One pass stacks m copies of the batch on axis 0 (m x B rows). When that does not fit in memory,
``DIPConfig.chunks = c`` runs the trajectories in c passes of about m / c copies each. Every
chunk runs under activation checkpointing (`torch.utils.checkpoint`, non-reentrant): its forward
keeps only its inputs and outputs, and backward runs it again, one chunk at a time, and
accumulates its gradients. So at most one chunk's activations are alive, ``loss.backward()``
works unchanged (loss scaling, gradient accumulation), and the outputs of all m trajectories
are there for the stability term, which is therefore computed exactly as in one pass. The cost
is one more forward pass per step.

Each trajectory draws the same noise in a chunk as in one pass (`dipnet.noise.trajectories`),
so the gradients equal the one-pass gradients up to floating-point summation order, for any
gamma, except for layers that mix the examples of a pass: BatchNorm normalises over the rows
of a chunk, not of all m x B rows. Its running statistics are updated once per chunk, not again
when backward recomputes the chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from dipnet import noise
from dipnet.batching import repeat_batch


def chunk_sizes(m: int, chunks: int) -> list[int]:
    """Trajectories per pass: ``chunks`` passes whose sizes differ by at most one.

    Raises:
        ValueError: ``chunks`` not in 1..m.
    """
    if not 1 <= chunks <= m:
        raise ValueError(f"chunks must be between 1 and m={m}, got {chunks}")
    base, extra = divmod(m, chunks)
    return [base + (1 if i < extra else 0) for i in range(chunks)]


def _own_loss(raw: Any) -> torch.Tensor | None:
    loss = getattr(raw, "loss", None)
    if loss is None and isinstance(raw, Mapping):
        loss = raw.get("loss")
    return loss if isinstance(loss, torch.Tensor) else None


def _one_pass(model: nn.Module, inputs: Any, batch_size: int, first: int, count: int,
              base_seed: int | None, output_fn: Callable[[Any], torch.Tensor],
              forward_kwargs: dict[str, Any], options: dict[str, Any] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    stacked = repeat_batch(inputs, count, batch_size)
    scope = (noise.trajectories(base_seed, first, count) if base_seed is not None
             else contextlib.nullcontext())
    # Backward's recomputation of a chunk runs under the noise options of its forward pass,
    # so that it saves what the forward saved (checkpoint checks this).
    settings = noise.options(**options) if options is not None else contextlib.nullcontext()
    with scope, settings:
        if isinstance(stacked, Mapping):
            raw = model(**stacked, **forward_kwargs)
        else:
            raw = model(stacked, **forward_kwargs)
    return output_fn(raw), _own_loss(raw)


@contextlib.contextmanager
def _keep_running_stats(model: nn.Module) -> Iterator[None]:
    # Backward's recomputation of a chunk must not update BatchNorm's running statistics a
    # second time: they are put back as they were before it.
    norms = [mod for mod in model.modules()
             if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.training
             and mod.track_running_stats]
    saved = [[b.detach().clone() if b is not None else None
              for b in (mod.running_mean, mod.running_var, mod.num_batches_tracked)]
             for mod in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for mod, values in zip(norms, saved):
                for buf, value in zip((mod.running_mean, mod.running_var,
                                       mod.num_batches_tracked), values):
                    if buf is not None and value is not None:
                        buf.copy_(value)


def run_trajectories(model: nn.Module, inputs: Any, m: int, batch_size: int, chunks: int,
                     output_fn: Callable[[Any], torch.Tensor],
                     forward_kwargs: dict[str, Any] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run m trajectories of ``inputs`` through ``model``, in ``chunks`` passes.

    Args:
        model: the projected model.
        inputs: the batch (tensor passed positionally, mapping passed as keywords).
        m: trajectories.
        batch_size: B, the rows of one copy.
        chunks: passes (1 = all m copies stacked in one pass).
        output_fn: picks the output tensor (the logits) from the model's return value.
        forward_kwargs: extra keyword arguments for the model, not repeated.
    Returns:
        ``(outputs, own_loss)``: the outputs of all trajectories stacked trajectory-major
        (m x B rows, as one pass gives), and the model's own loss averaged over the
        trajectories (None if the model returns none).
    Raises:
        ValueError: ``chunks`` not in 1..m.
    """
    forward_kwargs = forward_kwargs or {}
    sizes = chunk_sizes(m, chunks)
    compiling = torch.compiler.is_compiling()
    # One seed per step; every trajectory's noise derives from it (dipnet.noise.trajectories).
    base_seed = None if compiling else noise.new_seed()
    if chunks == 1:
        return _one_pass(model, inputs, batch_size, 0, m, base_seed, output_fn, forward_kwargs)
    outs: list[torch.Tensor] = []
    losses: list[torch.Tensor | None] = []
    first = 0
    options = dataclasses.asdict(noise.OPTIONS)
    for count in sizes:
        run = functools.partial(_one_pass, model, inputs, batch_size, first, count, base_seed,
                                output_fn, forward_kwargs, options)
        if torch.is_grad_enabled() and not compiling:
            out, loss = torch.utils.checkpoint.checkpoint(
                run, use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _keep_running_stats(model)))
        else:
            out, loss = run()
        outs.append(out)
        losses.append(loss)
        first += count
    own = None
    if all(loss is not None for loss in losses):
        # Each chunk's loss is a mean over its own copies, which all count the same items.
        own = sum(loss * (count / m) for loss, count in zip(losses, sizes))  # type: ignore
    return torch.cat(outs), own
