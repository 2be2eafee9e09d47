"""A character-level tokenizer built in code: no download, for tiny models and tests."""

from __future__ import annotations

import string
from typing import Any

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def char_tokenizer(alphabet: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per character (printable ASCII by default).

    Ids 0-3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; unknown characters map to ``<unk>``.
    Returns:
        The tokenizer (padding on the right; set ``padding_side`` as needed).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = alphabet if alphabet is not None else string.printable
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split into single characters (including spaces) so every character is one token.
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")
