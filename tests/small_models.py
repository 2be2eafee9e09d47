"""The small models the tests share (one definition each; `conftest.py` offers them as fixtures).

A test module imports them directly (``from small_models import mlp``) where it calls them from
plain helper functions; a test function can take the ``make_mlp`` fixture instead.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(*widths: int, seed: int | None = None, flatten: bool = False) -> nn.Sequential:
    """A ReLU MLP ``Linear(widths[0], widths[1]), ReLU, ..., Linear(widths[-2], widths[-1])``.

    Args:
        widths: the layer widths, input first, at least two.
        seed: if given, ``torch.manual_seed(seed)`` first, so the weights are the same each call.
        flatten: start with ``nn.Flatten()`` (for inputs shaped like images).
    Raises:
        ValueError: fewer than two widths.
    """
    if len(widths) < 2:
        raise ValueError(f"mlp needs an input and an output width, got {widths}")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def tiny_llama(vocab_size: int = 40) -> nn.Module:
    """A seeded two-block Llama causal LM, hidden size 16 (needs transformers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, hidden_size=16,
                                        intermediate_size=32, vocab_size=vocab_size,
                                        max_position_embeddings=32, pad_token_id=0))
