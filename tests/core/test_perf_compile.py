"""torch.compile (issue 10 item 3): no graph break in training or evaluation, and the compiled
projection draws the noise the eager one draws for the same seed.

Inductor itself is not run here (a compilation takes tens of seconds on this machine);
benchmarks/bench_overhead.py --sections compile times it. ``aot_eager`` runs the same traced
graphs, the custom ops (dipnet::perturb) and their autograd with eager kernels.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn

import dipnet
from dipnet import noise

import small_models


def mlp() -> nn.Module:
    return small_models.mlp(20, 32, 32, 5, flatten=True)


@pytest.mark.parametrize("m,gamma", [(1, 0.0), (2, 0.1)])
def test_a_dip_loss_training_step_traces_without_graph_breaks(m, gamma) -> None:
    torch.manual_seed(0)
    cfg = dipnet.DIPConfig(m=m, gamma=gamma)
    model = dipnet.project(mlp(), cfg).train()
    loss = dipnet.DIPLoss(cfg, num_train=100)
    x, y = torch.rand(4, 20), torch.randint(0, 5, (4,))

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(model, x, y).total

    step(x, y)  # the first call calibrates the variances (init_scale), eagerly, once
    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_evaluation_and_sampled_prediction_trace_without_graph_breaks() -> None:
    torch.manual_seed(0)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.1))
    x = torch.rand(4, 20)
    model.eval()
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    with dipnet.sampling(model), torch.no_grad():  # Monte Carlo prediction: projections on
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_the_compiled_step_draws_the_eager_noise_and_gradients() -> None:
    """Where the noise is regenerated (accelerators), the compiled projection is the custom op
    dipnet::perturb: the same seed, noise and gradients as eager, and only the seed kept."""
    torch.manual_seed(0)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.1)).train()
    compiled = copy.deepcopy(model)
    forward = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    x = torch.rand(6, 20)
    results = []
    with noise.options(regenerate=True):
        for net, run in ((model, model), (compiled, forward)):
            torch.manual_seed(1)  # both draw their seeds from the global generator
            out = run(x)
            out.square().mean().backward()
            results.append((out.detach(), [p.grad for p in net.parameters()]))
    (out_eager, grads_eager), (out_compiled, grads_compiled) = results
    assert torch.allclose(out_eager, out_compiled, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads_eager, grads_compiled):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    variance_grads = [p.grad for p in dipnet.variance_parameters(compiled)]
    assert all(g is not None and g.abs().sum() > 0 for g in variance_grads)


def test_the_compiled_step_with_kept_noise_samples_and_trains() -> None:
    """Where the noise is kept (the CPU default) the compiler draws it itself."""
    torch.manual_seed(0)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.1)).train()
    forward = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.rand(6, 20)
    with noise.options(regenerate=False):
        a, b = forward(x), forward(x)
        (a.square().mean() + b.square().mean()).backward()
    assert not torch.allclose(a, b)
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in dipnet.variance_parameters(model))


def test_the_run_setting_compile_wraps_the_training_module() -> None:
    import torch._inductor.config as inductor_config

    from dipnet.errors import UserError
    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.zoo.methods import compile_for_training

    net = mlp()
    with inductor_config.patch(fallback_random=False):
        assert compile_for_training(net, RunConfig()) is net
        compiled = compile_for_training(net, RunConfig(compile=True))
        assert inductor_config.fallback_random  # ATen's CPU generator, not inductor's slow one
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert all(a is b for a, b in zip(compiled.parameters(), net.parameters()))
    assert RunConfig.from_dict(RunConfig(compile=True).to_dict()).compile is True
    with pytest.raises(UserError, match="'compile'='yes' is invalid"):
        RunConfig(compile="yes")


def test_dip_trainer_prepares_hugging_face_torch_compile(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch._inductor.config as inductor_config

    from dipnet.hf import DIPTrainer, project_model

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=8, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0))
    project_model(model, dipnet.DIPConfig(placement="blocks", init_variance=0.01))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                          use_cpu=True, torch_compile=True)
    with inductor_config.patch(fallback_random=False):
        DIPTrainer(model=model, args=args, train_dataset=[], num_train=10)
        assert inductor_config.fallback_random


def test_a_model_compiled_in_eval_mode_samples_under_dipnet_sampling() -> None:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=1.0)).eval()
    x = torch.rand(2, 20)
    with dynamo_config.patch(skip_nnmodule_hook_guards=True), \
            inductor_config.patch(fallback_random=False):
        noise.prepare_compile()  # what compile_for_training and DIPTrainer call
        assert not dynamo_config.skip_nnmodule_hook_guards and inductor_config.fallback_random
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            plain = compiled(x)
            with dipnet.sampling(model):
                a, b = compiled(x), compiled(x)
            again = compiled(x)
    assert torch.equal(plain, again) and torch.equal(plain, model(x))
    assert not torch.allclose(a, b) and not torch.allclose(a, plain)


def test_the_training_loop_calls_the_compiled_module(tmp_path, monkeypatch) -> None:
    """`compile: true` reaches the harness: the loop trains through compile_for_training's
    module (a stand-in here, so the test does not pay for inductor)."""
    from dipnet.experiments.run import loop
    from dipnet.experiments.run import train as train_mod
    from dipnet.experiments.run.config import RunConfig

    seen = {}

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    def fake_compile(net, cfg):
        seen["compile"] = bool(getattr(cfg, "compile", False))
        seen["module"] = Counting(net) if seen["compile"] else net
        return seen["module"]

    monkeypatch.setattr(loop, "compile_for_training", fake_compile)
    cfg = RunConfig(dataset="digits", method="standard", epochs=1, max_train=256, compile=True,
                    num_threads=1, device="cpu", eval_mc=False)
    train_mod.run_training(cfg, tmp_path / "run", progress=False)
    assert seen["compile"] is True
    assert seen["module"].calls > 0  # the training steps went through it


def _saved_for_backward_dtypes(model: nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    """dtypes of the tensors kept for backward by inductor's partitioner, after inductor's
    decompositions (inductor's code generation, slow here, is not run)."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._inductor.decomposition import select_decomp_table

    seen: list[torch.dtype] = []

    def backward_compiler(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        seen.extend(t.dtype for t in example_inputs if isinstance(t, torch.Tensor))
        return make_boxed_func(gm.forward)

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        return aot_module_simplified(gm, example_inputs,
                                     fw_compiler=lambda g, _: make_boxed_func(g.forward),
                                     bw_compiler=backward_compiler,
                                     partition_fn=min_cut_rematerialization_partition,
                                     decompositions=select_decomp_table())

    torch._dynamo.reset()
    out = torch.compile(model, backend=backend, fullgraph=True)(x)
    out.square().mean().backward()
    return seen


def test_the_compiled_step_keeps_no_bool_mask_for_backward() -> None:
    """On a CPU inductor's kernels that store or load a bool mask are slow (the ReLU's mask,
    kept when the noise sits between the ReLU and the next layer); dipnet keeps the ReLU's
    float output instead, which eager keeps too. The plain model keeps no mask either."""
    torch.manual_seed(0)
    x = torch.rand(6, 20)
    plain = mlp().train()
    assert torch.bool not in _saved_for_backward_dtypes(plain, x)
    model = dipnet.project(mlp(), dipnet.DIPConfig(init_variance=0.1)).train()
    with noise.options(regenerate=False):
        saved = _saved_for_backward_dtypes(model, x)
    assert saved and torch.bool not in saved, saved
