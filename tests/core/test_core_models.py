"""Every architecture the issue names: shape kept, eval == original, train stochastic, gradients
reach every variance, remove() restores exactly. Real modules, random weights, no downloads."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import nn

import dipnet

import small_models

torch.set_num_threads(1)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(ResBlock(8), ResBlock(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Mixed(nn.Module):
    """Embedding + Conv1d + LSTM + MultiheadAttention, the odd-shaped layers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)  # (B, T, 16)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(h)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.mean(1))


def _mlp() -> tuple[nn.Module, Any]:
    return small_models.mlp(12, 32, 32, 5), torch.randn(6, 12)


def _resnet() -> tuple[nn.Module, Any]:
    return ResNetLike(), torch.randn(6, 1, 8, 8)


def _transformer_encoder() -> tuple[nn.Module, Any]:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), torch.randn(3, 5, 16)


def _mixed() -> tuple[nn.Module, Any]:
    return Mixed(), torch.randint(0, 50, (4, 7))


def _gpt2() -> tuple[nn.Module, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 64, (2, 9))}


def _bert() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(0, 64, (2, 9))
    return BertForSequenceClassification(cfg), {"input_ids": ids,
                                                "attention_mask": torch.ones_like(ids)}


def _vit() -> tuple[nn.Module, Any]:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16,
                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 16, 16)}


FACTORIES: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "mlp": _mlp, "resnet_bn": _resnet, "transformer_encoder": _transformer_encoder,
    "embedding_conv1d_lstm_mha": _mixed, "hf_gpt2": _gpt2, "hf_bert": _bert, "hf_vit": _vit,
}
PLACEMENTS = {
    "mlp": ["layers", "input"],
    "resnet_bn": ["layers", "blocks", "input"],
    "transformer_encoder": ["layers", "blocks", "input"],
    "embedding_conv1d_lstm_mha": ["layers", "input"],
    "hf_gpt2": ["layers", "blocks", "input"],
    "hf_bert": ["layers", "blocks", "input"],
    "hf_vit": ["layers", "blocks", "input"],
}
CASES = [(name, placement) for name, ps in PLACEMENTS.items() for placement in ps]


def _out(model: nn.Module, inputs: Any) -> torch.Tensor:
    raw = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return raw if isinstance(raw, torch.Tensor) else raw.logits


@pytest.mark.parametrize("name,placement", CASES)
def test_projection_contract(name: str, placement: str) -> None:
    torch.manual_seed(0)
    model, inputs = FACTORIES[name]()
    model.eval()
    with torch.no_grad():
        reference = _out(model, inputs)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    original = copy.deepcopy(model)

    dipnet.project(model, dipnet.DIPConfig(placement=placement, init_variance=0.05))
    projs = dipnet.projections(model)
    assert projs, "no projection inserted"
    # The original keys are untouched; each projection adds exactly one key.
    keys = set(model.state_dict())
    assert set(state_before) <= keys
    assert len(keys - set(state_before)) == len(projs)

    # eval: exactly the original model.
    model.eval()
    with torch.no_grad():
        assert torch.equal(_out(model, inputs), reference)

    # train: stochastic, same shape; gradients reach every variance.
    model.train()
    out1 = _out(model, inputs)
    out2 = _out(model, inputs)
    assert out1.shape == reference.shape
    assert not torch.allclose(out1, out2)
    (out1.square().mean() + out2.square().mean()).backward()
    for host, proj in projs.items():
        g = proj.raw_variance.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, host

    # sampling() makes eval-mode predictions stochastic, and is undone on exit. (Training
    # passes moved BatchNorm statistics, so the eval reference is taken again here.)
    model.eval()
    with torch.no_grad():
        eval_ref = _out(model, inputs)
        with dipnet.sampling(model):
            s1, s2 = _out(model, inputs), _out(model, inputs)
        assert not torch.allclose(s1, s2)
        assert torch.equal(_out(model, inputs), eval_ref)
    state_now = {k: v.clone() for k, v in model.state_dict().items()}

    # remove: the original model, exactly (same keys, same values, same outputs).
    dipnet.remove(model)
    assert not dipnet.projections(model)
    assert list(model.state_dict()) == list(state_before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_now[k]), k
    with torch.no_grad():
        assert torch.equal(_out(model, inputs), eval_ref)
    model.train()
    original.train()
    for (n1, m1), (n2, m2) in zip(model.named_modules(), original.named_modules()):
        assert n1 == n2 and type(m1) is type(m2)
        assert len(m1._forward_pre_hooks) == len(m2._forward_pre_hooks)
        assert len(m1._forward_hooks) == len(m2._forward_hooks)


def test_token_models_are_projected_after_the_embedding() -> None:
    model, _ = _gpt2()
    dipnet.project(model, dipnet.DIPConfig(placement="input"))
    (host, proj), = dipnet.projections(model).items()
    assert host == "transformer.wte" and proj.on == "output"
    assert proj.num_features == 16


def test_blocks_placement_finds_the_residual_stream() -> None:
    model, _ = _gpt2()
    dipnet.project(model, dipnet.DIPConfig(placement="blocks"))
    assert list(dipnet.projections(model)) == ["transformer.h.0", "transformer.h.1"]
    model, _ = _resnet()
    dipnet.project(model, dipnet.DIPConfig(placement="blocks"))
    assert list(dipnet.projections(model)) == ["blocks.0", "blocks.1"]
    assert all(p.feature_dim == 1 and p.num_features == 8
               for p in dipnet.projections(model).values())


def test_self_attention_gets_one_sample_for_query_key_value() -> None:
    """q, k, v passed as one tensor are one input: projected once, not three times."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    dipnet.project(attn, dipnet.DIPConfig(placement="layers"))
    assert list(dipnet.projections(attn)) == [""]  # the root itself, its out_proj is not called
    seen = []
    attn.register_forward_pre_hook(lambda m, a: seen.append(a))
    x = torch.randn(2, 3, 8)
    attn(x, x, x)
    q, k, v = seen[0][:3]
    assert q is k is v and not torch.equal(q, x)
