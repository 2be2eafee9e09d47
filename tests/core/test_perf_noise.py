"""Noise regenerated in backward (issue 10 item 1): the same gradients, less memory kept.

The stored-noise formulation (``regenerate=False``: autograd keeps eps, as before issue 10) is
the reference: for the same seed the regenerated and the packed formulations must give
bit-identical outputs and gradients. The memory goals are checked at the sizes the issue names.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dipnet
from dipnet import noise

FORMULATIONS = {
    "stored": {"regenerate": False},
    "regenerated": {"regenerate": True, "pack_inputs": False},
    "packed": {"regenerate": True, "pack_inputs": True},
}


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 5))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), _Res(4), nn.MaxPool2d(2),
                         _Res(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, formulation: dict,
         cfg: dipnet.DIPConfig) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    model = copy.deepcopy(model)
    xx = x.clone().requires_grad_()
    torch.manual_seed(1)
    with noise.options(**formulation):
        saved, parts = noise.saved_tensor_bytes(
            lambda: dipnet.DIPLoss(cfg, num_train=100)(model, xx, y), list(model.parameters()))
        parts.total.backward()
    return saved, parts.outputs.detach(), [xx.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("factory", [small_mlp, small_cnn], ids=["mlp", "cnn"])
def test_regenerated_noise_gives_bit_identical_outputs_and_gradients(factory) -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=2, gamma=0.1, init_variance=0.05)
    model = dipnet.project(factory(), cfg)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    runs = {name: _run(model, x, y, f, cfg) for name, f in FORMULATIONS.items()}
    _, ref_out, ref_grads = runs["stored"]
    variance_grads = [g for g, p in zip(ref_grads[1:], model.parameters())
                      if p is not None and any(p is q for q in dipnet.variance_parameters(model))]
    assert variance_grads and all(g.abs().sum() > 0 for g in variance_grads)
    for name in ("regenerated", "packed"):
        _, out, grads = runs[name]
        assert torch.equal(out, ref_out), name
        for a, b in zip(ref_grads, grads):
            assert torch.equal(a, b), name  # weights, biases, raw_variance and the input
    # Each formulation keeps less for backward than the one before: the comparison is not
    # between three runs of the same code.
    assert runs["stored"][0] > runs["regenerated"][0] > runs["packed"][0]


def _plain_and_projected_bytes(model: nn.Module, cfg: dipnet.DIPConfig, run,
                               formulations: tuple[str, ...] = tuple(FORMULATIONS)
                               ) -> dict[str, float]:
    plain = copy.deepcopy(model)
    projected = dipnet.project(copy.deepcopy(model), cfg)
    params = list(plain.parameters()) + list(projected.parameters())
    base, _ = noise.saved_tensor_bytes(lambda: run(plain, False), params)
    out = {}
    for name in formulations:
        formulation = FORMULATIONS[name]
        with noise.options(**formulation):
            torch.manual_seed(0)
            out[name], _ = noise.saved_tensor_bytes(lambda: run(projected, True), params)
    return {k: v / base for k, v in out.items()}


def test_saved_bytes_of_the_mlp_stay_within_ten_percent_of_plain() -> None:
    """Issue 10 goal: MLP 784-512-512-10, batch 128, <= 1.10x plain (it was 2.57x)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                        nn.ReLU(), nn.Linear(512, 10))
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    loss = dipnet.DIPLoss(dipnet.DIPConfig(), num_train=100)

    def run(model: nn.Module, projected: bool) -> torch.Tensor:
        return loss(model, x, y).total if projected else nn.functional.cross_entropy(model(x), y)

    ratios = _plain_and_projected_bytes(mlp, dipnet.DIPConfig(), run)
    assert ratios["packed"] <= 1.10
    assert ratios["stored"] > 2.0  # the count sees the noise when it is kept


def test_saved_bytes_of_a_gpt2_stay_within_three_percent_of_plain() -> None:
    """Issue 10 goal: 4-layer GPT-2 (d 256), layers placement, <= 1.03x (1.19x before). Here
    2 layers, seq 64 and batch 4 to stay fast (every layer saves the same); the bench measures
    4 layers, seq 128, batch 8: 1.001x.
    The attention output is kept by the fused attention kernel, so the input of c_proj is
    saved as its recipe."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1024, n_positions=64, n_embd=256, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    ids = torch.randint(0, 1024, (4, 64))
    batch = {"input_ids": ids, "labels": ids}
    loss = dipnet.DIPLoss(dipnet.DIPConfig(placement="layers"), num_train=100)

    def run(model: nn.Module, projected: bool) -> torch.Tensor:
        model.train()
        return loss(model, batch).total if projected else model(**batch).loss

    ratios = _plain_and_projected_bytes(gpt, dipnet.DIPConfig(placement="layers"), run,
                                        ("stored", "packed"))
    assert ratios["packed"] <= 1.03
    assert ratios["stored"] > 1.10


def test_the_seed_comes_from_torch_manual_seed_and_the_rng_state() -> None:
    torch.manual_seed(0)
    model = dipnet.project(small_mlp(), dipnet.DIPConfig(init_variance=0.1)).train()
    x = torch.rand(3, 64)
    torch.manual_seed(5)
    a1, a2 = model(x), model(x)
    torch.manual_seed(5)
    assert torch.equal(model(x), a1) and torch.equal(model(x), a2)
    assert not torch.equal(a1, a2)
    state = torch.get_rng_state()  # what a checkpoint stores: resuming continues the stream
    b1 = model(x)
    torch.set_rng_state(state)
    assert torch.equal(model(x), b1)


def test_noise_is_standard_normal_per_trajectory_block() -> None:
    plan = noise.NoisePlan(tuple(noise.derive_seed(7, 0, j) for j in range(4)))
    eps = noise.draw((4 * 5000, 8), plan, torch.float32, torch.device("cpu"))
    blocks = eps.view(4, 5000 * 8)
    # 40000 draws per block: the standard error of the mean is 0.005, of the std 0.0035.
    assert blocks.mean(1).abs().max() < 0.025 and (blocks.std(1) - 1).abs().max() < 0.02
    corr = torch.corrcoef(blocks)
    assert (corr - torch.eye(4)).abs().max() < 0.03  # independent blocks, not copies
    again = noise.draw((4 * 5000, 8), plan, torch.float32, torch.device("cpu"))
    assert torch.equal(eps, again)  # what backward relies on


def test_packed_inputs_survive_checkpointing_and_double_backward() -> None:
    torch.manual_seed(0)
    model = dipnet.project(small_mlp(), dipnet.DIPConfig(init_variance=0.05)).train()
    x = torch.rand(6, 64)

    def grads(formulation: dict, checkpointed: bool, penalty: bool) -> list[torch.Tensor]:
        net = copy.deepcopy(model)
        xx = x.clone().requires_grad_()
        torch.manual_seed(3)
        with noise.options(**formulation):
            out = (torch.utils.checkpoint.checkpoint(net, xx, use_reentrant=False)
                   if checkpointed else net(xx))
            loss = out.square().mean()
            if penalty:  # a gradient penalty differentiates through the packed inputs again
                (g,) = torch.autograd.grad(loss, xx, create_graph=True)
                loss = loss + g.square().sum()
            loss.backward()
        return [p.grad for p in net.parameters()]

    ref = grads(FORMULATIONS["stored"], False, False)
    for a, b in zip(ref, grads(FORMULATIONS["packed"], True, False)):
        assert torch.equal(a, b)
    ref = grads(FORMULATIONS["stored"], False, True)
    for a, b in zip(ref, grads(FORMULATIONS["packed"], False, True)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_failing_layer_leaves_no_saved_tensor_hooks_behind() -> None:
    class Boom(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Boom(4, 4))
    dipnet.project(model, dipnet.DIPConfig()).train()
    with noise.options(regenerate=True), pytest.raises(RuntimeError, match="boom"):
        model(torch.rand(2, 4))
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_noise_options_are_validated() -> None:
    with pytest.raises(TypeError, match="unknown noise option"):
        noise.configure(regenrate=True)
    with pytest.raises(ValueError, match="regenerate takes"):
        noise.configure(regenerate="yes")
    assert noise.OPTIONS.regenerate == "auto"
    assert not noise.regenerates(torch.device("cpu"))
    assert noise.regenerates(torch.device("cuda", 0))
