"""DIPNet on Hugging Face models: placement, DIPTrainer, LoRA, accumulation, saving, padding.

Tiny GPT-2 / Llama / BERT built from configs (random weights, dropout 0), no downloads.
"""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,  # noqa: E402
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainingArguments)

import dipnet  # noqa: E402
from dipnet.hf import (DIPTrainer, generate, load_projections_from,  # noqa: E402
                       masked_stability, project_model)

torch.set_num_threads(1)
V = 40


def tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=V,
                                          n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0, bos_token_id=1, eos_token_id=2))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=2,
                                            num_key_value_heads=2, hidden_size=16,
                                            intermediate_size=32, vocab_size=V,
                                            max_position_embeddings=32, bos_token_id=1,
                                            eos_token_id=2, pad_token_id=0))
    return BertForSequenceClassification(BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=V, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=2))


BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers", "bert": "bert.encoder.layer"}


def data(arch: str, n: int = 8, T: int = 10, pad: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(3, V, (T,), generator=g)
        am = torch.ones(T, dtype=torch.long)
        am[T - pad:] = 0
        ids[T - pad:] = 0
        if arch == "bert":
            lab = torch.tensor(i % 2)
        else:
            lab = ids.clone()
            lab[T - pad:] = -100
        out.append({"input_ids": ids, "attention_mask": am, "labels": lab})
    return out


def batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([x[k] for x in items]) for k in items[0]}


def targs(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                disable_tqdm=True, learning_rate=1e-2, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_blocks_placement_eval_equals_plain_and_train_samples(arch):
    model = tiny(arch)
    x = batch(data(arch, 2))
    x.pop("labels")
    model.eval()
    with torch.no_grad():
        ref = model(**x).logits
    project_model(model)  # default placement: blocks
    assert sorted(dipnet.projections(model)) == [f"{BLOCKS[arch]}.0", f"{BLOCKS[arch]}.1"]
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref)  # eval mode: exactly the plain model
        model.train()
        # The pre-hook must reach blocks whatever way they are called (positional or
        # hidden_states=...); if it silently did nothing, the outputs would be equal.
        assert not torch.allclose(model(**x).logits, ref)


def test_input_placement_projects_embedding_output_not_token_ids():
    model = tiny("llama")
    project_model(model, dipnet.DIPConfig(placement="input"))
    (name, proj), = dipnet.projections(model).items()
    assert name == "model.embed_tokens" and proj.on == "output"
    model.train()
    x = batch(data("llama", 2))
    model(**x)  # would raise ProjectionShapeError if token ids were projected


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_trainer_trains_and_logs_parts(tmp_path, arch):
    model = tiny(arch)
    project_model(model, dipnet.DIPConfig(placement="blocks"))
    before = {k: v.clone() for k, v in dipnet.variances(model).items()}
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data(arch))
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        for key in ("dip_nll", "dip_barrier", "dip_stability", "dip_variance_mean"):
            assert key in h and torch.isfinite(torch.tensor(h[key]))
        # The logged loss is the sum of the logged parts (gamma = 0, no accumulation).
        assert h["loss"] == pytest.approx(h["dip_nll"] + h["dip_barrier"], rel=1e-3)
    after = dipnet.variances(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_nll_gradient_reaches_every_variance(tmp_path, arch):
    model = tiny(arch)
    project_model(model)
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data(arch))
    model.train()
    x = batch(data(arch, 4))
    loss = tr.compute_loss(model, dict(x))
    model.zero_grad()
    loss.backward()
    g_total = {k: p.raw_variance.grad.clone() for k, p in dipnet.projections(model).items()}
    model.zero_grad()
    (dipnet.barrier(model, 0.1, 0.2) / tr.num_train).backward()
    for k, p in dipnet.projections(model).items():
        # What is left after the barrier's own gradient comes from the data term.
        assert (g_total[k] - p.raw_variance.grad).abs().sum() > 0, k


# Noise of std 1e-6 (variance 1e-12): trajectories are the same to 1e-6, so the m-trajectory
# loss equals the one-trajectory loss, and accumulated vs big-batch runs are comparable.
QUIET = dict(init_variance=1e-12, variance_floor=1e-13)


def _loss_path(tr: DIPTrainer, path: str) -> None:
    """Route the NLL through one of the Trainer's three loss paths."""
    if path == "label_smoothing":
        from transformers.trainer_pt_utils import LabelSmoother

        tr.label_smoother = LabelSmoother(epsilon=0.1)
    elif path == "compute_loss_func":
        def token_mean(outputs, labels, num_items_in_batch=None):
            logits = outputs["logits"][:, :-1].reshape(-1, V).float()
            target = labels[:, 1:].reshape(-1)
            total = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100,
                                                      reduction="sum")
            return total / (num_items_in_batch if num_items_in_batch is not None
                            else (target != -100).sum())

        tr.compute_loss_func = token_mean


@pytest.mark.parametrize("path", ["model_loss", "label_smoothing", "compute_loss_func"])
@pytest.mark.parametrize("num_items", [None, 23])
def test_m_trajectories_average_not_sum(tmp_path, path, num_items):
    model = tiny("llama")
    project_model(model, dipnet.DIPConfig(**QUIET))
    x = batch(data("llama", 4))
    total = {}
    for m in (1, 3):
        tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("llama"),
                        dip_config=dipnet.DIPConfig(**QUIET, m=m))
        _loss_path(tr, path)
        model.train()
        with torch.no_grad():
            total[m] = float(tr.compute_loss(model, dict(x), num_items_in_batch=num_items))
    # The m trajectories are averaged (num_items_in_batch is multiplied by m where it is
    # passed on), not summed.
    assert total[3] == pytest.approx(total[1], rel=1e-4)
    if num_items is not None:
        # 4 rows x 6 counted (shifted) tokens = 24 in this batch: the NLL is normalised by the
        # 23 given instead, as one micro-batch of an accumulated batch of 23 tokens.
        with torch.no_grad():
            per_batch = float(tr.compute_loss(model, dict(x)))
            bar = float(dipnet.barrier(model, 0.1, 0.2)) / tr.num_train
        assert total[3] - bar == pytest.approx((per_batch - bar) * 24 / 23, rel=1e-3)


def _one_sgd_step(tmp_path, arch: str, ga: int, bs: int, cfg: dipnet.DIPConfig,
                  loss_kwargs: bool = True, path: str = "model_loss") -> dict:
    model = tiny(arch)
    if not loss_kwargs:
        # The model's forward takes no **kwargs: the Trainer passes no num_items_in_batch and
        # divides each micro-batch loss by the accumulation steps itself.
        model.accepts_loss_kwargs = False
    project_model(model, cfg)
    args = targs(tmp_path / f"{arch}{ga}{loss_kwargs}{path}", per_device_train_batch_size=bs,
                 gradient_accumulation_steps=ga, max_steps=1, optim="sgd",
                 learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant")
    # Unequal token counts per micro-batch: only a per-token normalisation over the whole
    # accumulated batch makes the two runs agree.
    ds = data(arch, 4)
    if arch != "bert":
        ds[0]["labels"][:5] = -100
    tr = DIPTrainer(model=model, args=args, train_dataset=ds, num_train=4)
    _loss_path(tr, path)
    tr.train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_same_params(a: dict, b: dict) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4,
                                   msg=lambda s, k=k: f"{k}: {s}")


@pytest.mark.parametrize("arch,loss_kwargs,path", [
    ("llama", True, "model_loss"),       # the model normalises by num_items_in_batch
    ("bert", True, "model_loss"),        # it accepts the kwarg but returns a per-batch mean
    ("llama", False, "model_loss"),      # the Trainer divides by the accumulation steps
    ("bert", False, "model_loss"),
    ("llama", True, "label_smoothing"),  # the Trainer's label smoother gets num_items_in_batch
    ("llama", True, "compute_loss_func"),
])
def test_gradient_accumulation_matches_big_batch(tmp_path, arch, loss_kwargs, path):
    """One SGD step on 4 examples at once equals 2 accumulated micro-batches of 2, on every
    path the Trainer's loss can take; the barrier's gradient (N = 4, large next to the NLL's
    for variances of 1e-12) is in the comparison, so NLL and barrier must be weighted alike."""
    cfg = dipnet.DIPConfig(placement="blocks", **QUIET)
    big = _one_sgd_step(tmp_path, arch, 1, 4, cfg, loss_kwargs, path)
    small = _one_sgd_step(tmp_path, arch, 2, 2, cfg, loss_kwargs, path)
    _assert_same_params(small, big)


@pytest.fixture
def noise_from_content(monkeypatch):
    """Projection noise that is a fixed function of (trajectory, example content), so one big
    batch and two micro-batches draw the same noise for each example (m = 2)."""
    m = 2

    def perturb(x, std):
        rows = x.reshape(m, x.shape[0] // m, *x.shape[1:])
        j = torch.arange(m, dtype=x.dtype).view(m, *([1] * (x.dim())))
        eps = torch.sin(37.0 * rows + 1.3 * (j + 1)).reshape(x.shape) * 1.5
        return torch.addcmul(x, eps, std), None

    # dipnet.noise.perturb draws every projection's noise (u = x + std * eps).
    monkeypatch.setattr(dipnet.noise, "perturb", perturb)
    return m


@pytest.mark.parametrize("arch,loss_kwargs", [("llama", True), ("llama", False),
                                              ("bert", True)])
def test_stability_term_under_accumulation_matches_big_batch(tmp_path, noise_from_content,
                                                              arch, loss_kwargs):
    var0 = 1.0 if arch == "bert" else 0.01  # BERT's tiny pooled logits need more noise
    cfg = dipnet.DIPConfig(placement="blocks", m=noise_from_content, gamma=5.0,
                           init_variance=var0)
    big = _one_sgd_step(tmp_path, arch, 1, 4, cfg, loss_kwargs)
    small = _one_sgd_step(tmp_path, arch, 2, 2, cfg, loss_kwargs)
    _assert_same_params(small, big)
    # The stability term is on and moved the variances (it is not a vacuous comparison).
    plain = _one_sgd_step(tmp_path, arch, 1, 4, dipnet.DIPConfig(
        placement="blocks", m=noise_from_content, init_variance=var0), loss_kwargs)
    var = [k for k in big if "dip_projection" in k]
    assert any(not torch.allclose(big[k], plain[k], atol=1e-4) for k in var)


def test_padding_positions_are_ignored(tmp_path):
    model = tiny("llama")
    project_model(model, dipnet.DIPConfig(m=2, gamma=0.5))
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("llama"))
    model.train()
    x = batch(data("llama", 4))
    y = {k: v.clone() for k, v in x.items()}
    pad = x["attention_mask"] == 0
    y["input_ids"][pad] = 7  # different tokens where the mask is 0 and the labels are -100
    losses = []
    for b in (x, y):
        torch.manual_seed(123)  # the same noise draws for both
        with torch.no_grad():
            losses.append(float(tr.compute_loss(model, dict(b))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert tr._dip_sums["dip_stability"] > 0  # the stability term was on, and masked


def test_masked_stability_ignores_masked_positions():
    torch.manual_seed(0)
    out = torch.randn(3, 2, 5, 4)
    labels = torch.tensor([[1, 2, 3, -100, -100], [1, 2, 3, 4, -100]])
    ref = masked_stability(out, labels, causal=True)
    out2 = out.clone()
    out2[:, 0, 2:] += 100 * torch.randn(3, 3, 4)  # causal: position t counts if label t+1 does
    out2[:, 1, 3:] += 100 * torch.randn(3, 2, 4)
    assert float(masked_stability(out2, labels, causal=True)) == pytest.approx(float(ref))


def test_lora_projections_train_beside_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    project_model(model)
    projs = dipnet.projections(model)
    assert len(projs) == 2 and all(p.raw_variance.requires_grad for p in projs.values())
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" not in n
            and "dip_projection" not in n}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    var0 = {k: v.clone() for k, v in dipnet.variances(model).items()}
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("llama"))
    tr.train()
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in dipnet.variance_parameters(model))
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n], v) for n, v in base.items())  # base frozen
    assert all(not torch.equal(named[n], v) for n, v in lora_b.items())  # adapters trained
    assert all(not torch.equal(dipnet.variances(model)[k], v) for k, v in var0.items())


def test_lora_layers_placement_projects_lora_layer_not_its_parts():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    project_model(model, dipnet.DIPConfig(placement="layers"))
    names = list(dipnet.projections(model))
    assert any(n.endswith("self_attn.q_proj") for n in names)
    assert not any("base_layer" in n or "lora_A" in n or "lora_B" in n for n in names)
    assert any(n.endswith("mlp.gate_proj") for n in names)  # plain Linear layers too


def test_save_model_and_reload_round_trip(tmp_path):
    model = tiny("gpt2")
    project_model(model)
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("gpt2"))
    tr.train()
    out = tmp_path / "saved"
    tr.save_model(str(out))
    assert (out / "dip_projections.safetensors").is_file()
    assert (out / "dipnet_config.json").is_file()  # the dipnet.save_pretrained layout
    assert set(dipnet.projections(dipnet.from_pretrained(tiny("gpt2"), out, load_weights=False))
               ) == set(dipnet.projections(model))
    fresh = GPT2LMHeadModel.from_pretrained(str(out))
    load_projections_from(fresh, str(out))
    for k, v in dipnet.variances(model).items():
        torch.testing.assert_close(dipnet.variances(fresh)[k], v)
    x = batch(data("gpt2", 2))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**x).logits, model(**x).logits)
    # Projections alone, through the trainer.
    tr.save_projections(tmp_path / "p.safetensors")
    other = tiny("gpt2")
    load_projections_from(other, tmp_path / "p.safetensors")
    assert set(dipnet.projections(other)) == set(dipnet.projections(model))


def test_lora_save_and_reload_round_trip(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    project_model(model, dipnet.DIPConfig(placement="layers"))
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("llama"))
    tr.train()
    tr.save_model(str(tmp_path / "adapter"))
    fresh = peft.PeftModel.from_pretrained(tiny("llama"), str(tmp_path / "adapter"))
    load_projections_from(fresh, tmp_path / "adapter")
    for k, v in dipnet.variances(model).items():
        torch.testing.assert_close(dipnet.variances(fresh)[k], v)


def test_generate_deterministic_and_sampled():
    model = tiny("llama")
    ids = torch.tensor([[1, 5, 6, 7]])
    model.eval()
    plain = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    project_model(model, dipnet.DIPConfig(init_variance=4.0))
    model.train()  # generate() must still switch the noise off and restore the mode
    det = generate(model, input_ids=ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(det, plain) and model.training
    torch.manual_seed(0)
    samples = {tuple(generate(model, input_ids=ids, max_new_tokens=6, do_sample=False,
                              sample_projections=True)[0].tolist()) for _ in range(4)}
    assert len(samples) > 1 or tuple(plain[0].tolist()) not in samples


def test_trainer_refuses_unprojected_model(tmp_path):
    from dipnet.errors import UserError

    with pytest.raises(UserError, match="project_model"):
        DIPTrainer(model=tiny("gpt2"), args=targs(tmp_path), train_dataset=data("gpt2"))


_DDP_SCRIPT = r"""
import os, torch, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
torch.set_num_threads(1)
import test_hf_trainer as t
import dipnet
from dipnet.hf import DIPTrainer, project_model
model = t.tiny("llama"); project_model(model)
args = t.targs(sys.argv[2], ddp_backend="gloo", ddp_find_unused_parameters=False,
               gradient_accumulation_steps=2, per_device_train_batch_size=2)
tr = DIPTrainer(model=model, args=args, train_dataset=t.data("llama", 16))
tr.train()
v = torch.cat([x for x in dipnet.variances(model).values()])
torch.save(v, os.path.join(sys.argv[2], f"v{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    """Two gloo processes under torchrun: no unused-parameter error, variances in sync."""
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=29533", str(script), os.path.abspath(__file__), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v0, v1 = torch.load(tmp_path / "v0.pt"), torch.load(tmp_path / "v1.pt")
    torch.testing.assert_close(v0, v1)
    assert not torch.allclose(v0, torch.full_like(v0, 1e-2))


def test_vit_blocks_placement():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    project_model(model)
    names = sorted(dipnet.projections(model))  # transformers 5: vit.layers.N (4.x: vit.encoder.layer.N)
    assert len(names) == 2 and all(n.startswith("vit.") and n[-1] in "01" for n in names)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, ref)
        model.train()
        assert not torch.allclose(model(pixel_values=x).logits, ref)


def test_variances_get_no_weight_decay_and_eval_loss_is_the_plain_loss(tmp_path):
    model = tiny("llama")
    x = batch(data("llama", 4))
    model.eval()
    with torch.no_grad():
        plain = float(model(**x).loss)
    project_model(model, dipnet.DIPConfig(m=2, gamma=0.5, init_variance=0.5))
    tr = DIPTrainer(model=model, args=targs(tmp_path, weight_decay=0.1),
                    train_dataset=data("llama"))
    decay = tr.get_decay_parameter_names(model)
    assert decay and not any("dip_projection" in n for n in decay)
    # evaluate(): projections off, no barrier, no stability: exactly the plain model's loss.
    metrics = tr.evaluate(eval_dataset=data("llama", 4))
    assert metrics["eval_loss"] == pytest.approx(plain, rel=1e-5)


def test_variance_lr_comes_from_the_config_unless_given(tmp_path):
    model = tiny("gpt2")
    project_model(model, dipnet.DIPConfig(placement="blocks", variance_lr=0.07))
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("gpt2"))
    opt = tr.create_optimizer()
    var_ids = {id(p) for p in dipnet.variance_parameters(model)}
    groups = [g for g in opt.param_groups if any(id(p) in var_ids for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 0.07 and groups[0]["weight_decay"] == 0.0
    tr2 = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("gpt2"),
                     variance_lr=0.003)
    assert tr2.variance_lr == 0.003


def test_init_scale_calibrates_on_the_first_training_batch(tmp_path):
    model = tiny("gpt2")
    project_model(model, dipnet.DIPConfig(placement="blocks", init_scale=0.5))
    before = {k: float(v.mean()) for k, v in dipnet.variances(model).items()}
    assert all(v == pytest.approx(0.01) for v in before.values())  # init_variance until then
    acts = dipnet.activation_variances(model, batch(data("gpt2", 4)))
    tr = DIPTrainer(model=model, args=targs(tmp_path, max_steps=1, learning_rate=1e-12),
                    train_dataset=data("gpt2"))
    tr.train()
    for name, p in dipnet.projections(model).items():
        assert p.calibrated
        # 0.5 x the mean activation variance of that block's input (on the first batch, which
        # differs from the 4 examples above: same order of magnitude, not the same value)
        assert 0.1 < p.init_variance / (0.5 * float(acts[name].mean())) < 10


@pytest.mark.parametrize("peft_model", [False, True])
def test_frozen_variances_stay_bit_identical_under_dip_trainer(tmp_path, peft_model):
    """learn_variance=False (the fixed_noise control) must not learn under Hugging Face.

    project_model and DIPTrainer.__init__ once set requires_grad on every variance whatever the
    config said, so an HF study of learned vs frozen compared learned with learned."""
    model = tiny("llama")
    if peft_model:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    project_model(model, dipnet.DIPConfig(placement="blocks", learn_variance=False,
                                          init_variance=0.01))
    assert not any(p.requires_grad for p in dipnet.variance_parameters(model))
    var0 = {k: v.clone() for k, v in dipnet.variances(model).items()}
    tr = DIPTrainer(model=model, args=targs(tmp_path), train_dataset=data("llama"))
    assert not any(p.requires_grad for p in dipnet.variance_parameters(model))
    tr.train()
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in dipnet.variance_parameters(model))
    after = dipnet.variances(model)
    assert var0.keys() == after.keys()
    assert all(torch.equal(after[k], v) for k, v in var0.items())
    # A learned arm from the same start does move (the test can tell the two apart).
    learned = tiny("llama")
    project_model(learned, dipnet.DIPConfig(placement="blocks", init_variance=0.01))
    v1 = {k: v.clone() for k, v in dipnet.variances(learned).items()}
    DIPTrainer(model=learned, args=targs(tmp_path / "l"), train_dataset=data("llama")).train()
    assert all(not torch.equal(dipnet.variances(learned)[k], v) for k, v in v1.items())


def test_frozen_variances_stay_frozen_after_hf_reload(tmp_path):
    model = tiny("gpt2")
    project_model(model, dipnet.DIPConfig(placement="blocks", learn_variance=False,
                                          init_variance=0.01))
    dipnet.save_projections(model, tmp_path / "p.safetensors")
    fresh = tiny("gpt2")
    load_projections_from(fresh, tmp_path / "p.safetensors")
    assert dipnet.variance_parameters(fresh)
    assert not any(p.requires_grad for p in dipnet.variance_parameters(fresh))
