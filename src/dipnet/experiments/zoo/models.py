"""A small model zoo (MLP, CIFAR-style ResNet, ViT, a Hugging Face ViT) behind a timm-style registry.

Every factory takes ``input_shape`` (one example, e.g. (1, 28, 28) or (40,)), ``num_classes``
and its own keyword parameters, and returns an ``nn.Module`` mapping (B, *input_shape) to
(B, num_classes) logits. Defaults are sized for 2 CPU cores.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dipnet._util import trust
from dipnet.errors import UserError

Factory = Callable[..., nn.Module]
_MODELS: dict[str, Factory] = {}


def register_model(fn: Factory | None = None, *, name: str | None = None):
    """Decorator registering a model factory under its function name (or ``name``).

    Usable as ``@register_model`` or ``@register_model(name="resnet20")``.

    Raises:
        ValueError: if the name is taken.
    """
    def deco(f: Factory) -> Factory:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f
    return deco(fn) if fn is not None else deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, input_shape: Sequence[int], num_classes: int,
                 **params: Any) -> nn.Module:
    """Build a model from the zoo, or a user's ``"package.module:factory"``.

    Args:
        name: a name from `list_models()` or ``"package.module:factory"``; the factory is
            called as ``factory(input_shape=..., num_classes=..., **params)``.
        input_shape: shape of one example.
        num_classes: number of output logits.
        params: the factory's keyword parameters.
    Returns:
        The model (freshly initialised from torch's global RNG).
    Raises:
        UserError: unknown name, an import failure, unknown or bad parameters.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if ":" in name:
        factory = trust.load_factory(name, "model")
    elif name in _MODELS:
        factory = _MODELS[name]
    else:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())} "
                        "or give 'package.module:factory'.")
    try:
        sig = inspect.signature(factory)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        unknown = [k for k in params if k not in sig.parameters and not accepts_any]
    except (TypeError, ValueError):
        unknown = []
    if unknown:
        known = [k for k in sig.parameters if k not in ("input_shape", "num_classes")]
        raise UserError(f"model {name!r} has no parameter(s) {unknown}; its parameters are "
                        f"{known}.")
    try:
        model = factory(input_shape=input_shape, num_classes=int(num_classes), **params)
    except (TypeError, ValueError) as err:
        raise UserError(f"model {name!r} cannot be built with {params or 'its defaults'} for "
                        f"input shape {input_shape}: {err}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {name!r} returned {type(model).__name__}, not an "
                        "nn.Module.")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return input_shape  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (1, *input_shape)  # type: ignore[return-value]
    raise ValueError(f"{model} needs image inputs (C, H, W); got examples of shape "
                     f"{input_shape}: use the mlp for vector data")


# ---------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks, then a Linear head."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


@register_model
def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256)) -> MLP:
    """A ReLU MLP on flattened inputs; ``hidden`` lists the hidden widths (default 256, 256)."""
    if isinstance(hidden, int):
        hidden = [hidden]
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a list of positive ints, got {hidden!r}")
    return MLP(math.prod(input_shape), list(hidden), num_classes)


# ---------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """He et al. (2016) basic block: conv-BN-ReLU-conv-BN plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # Option B of He et al.: a 1x1 conv shortcut (simpler than zero-padding option A).
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, Sec. 4.2): depth 6n+2, three stages of n blocks
    with widths w, 2w, 4w, global average pooling, a Linear head."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 >= 8 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        # One Sequential of same-class blocks, so DIPConfig(placement="blocks") finds them.
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))               # (B, 4w, H/4, W/4)
        return self.head(x.mean(dim=(2, 3)))        # (B, num_classes)


def _resnet(input_shape: Sequence[int], num_classes: int, depth: int, width: int) -> ResNet:
    c, _, _ = _image_shape(tuple(input_shape), "resnet")
    return ResNet(c, num_classes, depth, width)


@register_model
def resnet(input_shape: Sequence[int], num_classes: int, depth: int = 8,
           width: int = 16) -> ResNet:
    """CIFAR-style ResNet, depth 6n+2 (default 8: 77,754 parameters at width 16 on 1x28x28)."""
    return _resnet(input_shape, num_classes, depth, width)


@register_model
def resnet8(input_shape: Sequence[int], num_classes: int, width: int = 16) -> ResNet:
    """ResNet-8 (n = 1 block per stage)."""
    return _resnet(input_shape, num_classes, 8, width)


@register_model
def resnet20(input_shape: Sequence[int], num_classes: int, width: int = 16) -> ResNet:
    """ResNet-20 of He et al. (n = 3 blocks per stage, 0.27M parameters)."""
    return _resnet(input_shape, num_classes, 20, width)


# ---------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention with explicit qkv / proj Linears (so each is projectable)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)        # (B, heads, T, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): conv patch embedding, class token,
    learned position embeddings, pre-norm blocks, LayerNorm + Linear head on the class token."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, patch_size: int,
                 dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size {h}x{w}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(c, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, T, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed             # (B, T+1, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))                        # (B, num_classes)


@register_model
def vit(input_shape: Sequence[int], num_classes: int, patch_size: int | None = None,
        dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> ViT:
    """A small ViT (dim 64, depth 4, 4 heads: 0.14M parameters). ``patch_size`` defaults to 4
    for images of 16 px or more (7x7 patches at 28 px, 8x8 at 32 px), else 2."""
    shape = _image_shape(tuple(input_shape), "vit")
    if patch_size is None:
        patch_size = 4 if min(shape[1:]) >= 16 and shape[1] % 4 == 0 and shape[2] % 4 == 0 else 2
    return ViT(shape, num_classes, int(patch_size), dim, depth, heads, mlp_ratio)


# ---------------------------------------------------------------------- Hugging Face ViT
class HFViT(nn.Module):
    """`transformers`' ViTForImageClassification, built from a ViTConfig (no download), taking
    (B, C, H, W) images and returning logits, optionally starting from weights a previous run
    saved (its ``model.safetensors``): the paper's fine-tuning setting with a real
    Hugging Face architecture. Dropout is off, so the only noise is the method's."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, patch_size: int,
                 hidden: int, depth: int, heads: int, mlp_ratio: float,
                 weights: str | None, new_head: bool) -> None:
        super().__init__()
        try:
            from transformers import ViTConfig, ViTForImageClassification
        except ImportError:
            raise UserError("model 'hf_vit' needs transformers: run scripts/setup.sh.") from None
        c, h, w = image_shape
        if h != w or h % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the square image size {h}x{w}")
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        config = ViTConfig(image_size=h, patch_size=patch_size, num_channels=c,
                           hidden_size=hidden, num_hidden_layers=depth,
                           num_attention_heads=heads, intermediate_size=int(hidden * mlp_ratio),
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           num_labels=num_classes,
                           # Eager attention: SDPA's CPU kernel has no double backward, which
                           # the evaluation's Hessian measures need; both compute the same
                           # softmax attention.
                           attn_implementation="eager")
        self.net = ViTForImageClassification(config)
        if weights:
            self._load(weights, new_head)

    def _load(self, path: str, new_head: bool) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)  # safetensors: tensors only, no code runs on load
        except (OSError, SafetensorError) as err:
            raise UserError(f"cannot read ViT weights {path}: {err}; give the "
                            "model.safetensors of a finished hf_vit run.") from None
        # A run saves the whole model, so its keys start with "net."; variances of a projected
        # run (".variance"-like extras) are not ViT weights and are left out.
        own = self.net.state_dict()
        state = {k.removeprefix("net."): v for k, v in state.items()}
        head = [k for k in own if k.startswith("classifier.")]
        wanted = [k for k in own if not (new_head and k in head)]
        missing = [k for k in wanted if k not in state]
        wrong = [k for k in wanted if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            raise UserError(f"ViT weights {path} do not fit this hf_vit: "
                            f"{len(missing)} missing (e.g. {missing[:2]}), {len(wrong)} of another "
                            f"shape (e.g. {wrong[:2]}); build it with the pretraining run's "
                            "patch_size / hidden / depth / heads / mlp_ratio.")
        self.net.load_state_dict({k: state[k] for k in wanted}, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits                          # (B, num_classes)


@register_model
def hf_vit(input_shape: Sequence[int], num_classes: int, patch_size: int | None = None,
           hidden: int = 64,
           depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, weights: str | None = None,
           new_head: bool = True) -> HFViT:
    """A Hugging Face ViTForImageClassification from a config (hidden 64, depth 4, 4 heads,
    0.14M parameters at 28 px). ``patch_size`` defaults to the largest of 7, 4 and 2 that
    divides the image side (7 at 28 px, 4 at 32 px, 2 at 8 px). ``weights``: a
    ``model.safetensors`` of a finished hf_vit run to start from (fine-tuning); ``new_head``
    (default) then starts the classifier afresh, as when fine-tuning on another data set."""
    shape = _image_shape(tuple(input_shape), "hf_vit")
    if patch_size is None:
        patch_size = next((p for p in (7, 4, 2) if shape[1] % p == 0), 1)
    return HFViT(shape, num_classes, int(patch_size), int(hidden), int(depth), int(heads),
                 float(mlp_ratio), weights, bool(new_head))


# ---------------------------------------------------------------------- pretrained (fine-tuning)
class Normalize(nn.Module):
    """``(x - mean) / std`` as the first layer, so the model takes [0, 1] pixels and every
    attack's epsilon stays in pixel units."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PretrainedDigitCNN(nn.Module):
    """ccexam's MNISTNet (conv 32 - conv 64 - fc 128 - fc 10, 99.05% on MNIST test) behind its
    input normalisation, with the weights it ships and a NEW, freshly initialised head when the
    number of classes (or ``new_head``) asks for it: the paper's fine-tuning setting in small."""

    def __init__(self, num_classes: int, new_head: bool = True) -> None:
        super().__init__()
        try:
            from importlib.resources import files

            from ccexam.models import MNISTNet
        except ImportError:
            raise UserError("model 'ccexam_cnn' needs the ccexam package (pretrained MNIST CNN): "
                            "run scripts/setup.sh, or pip install --no-deps ccexam==1.0.0.") \
                from None
        net = MNISTNet(input_size=28)
        weights = files("ccexam") / "weights" / "mnist.pth"
        # weights_only: a received pickle must not run code.
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.normalize = Normalize(0.1307, 0.3081)  # the statistics ccexam trained with
        self.features = net.features
        self.classifier = net.classifier
        if new_head or num_classes != 10:
            self.classifier[2] = nn.Linear(self.classifier[2].in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))                           # (B, 64, 7, 7)
        return self.classifier(x.flatten(1))                            # (B, num_classes)


@register_model
def ccexam_cnn(input_shape: Sequence[int], num_classes: int,
               new_head: bool = True) -> PretrainedDigitCNN:
    """A PRETRAINED MNIST CNN from the ccexam package (421k parameters) to fine-tune: 28x28
    grayscale inputs in [0, 1]; ``new_head`` (default) replaces the last layer by a freshly
    initialised one, as when fine-tuning on another data set (e.g. Fashion-MNIST)."""
    shape = tuple(int(s) for s in input_shape)
    if shape[-2:] != (28, 28) or (len(shape) == 3 and shape[0] != 1):
        raise UserError(f"model 'ccexam_cnn' takes 1x28x28 images, got input shape {shape}.")
    return PretrainedDigitCNN(num_classes, bool(new_head))
