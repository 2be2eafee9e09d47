"""`dipnet.hf.merge_and_unload` keeps the projections that PEFT's own merge drops."""

import warnings

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import dipnet  # noqa: E402
import dipnet.hf  # noqa: E402


def _lora_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                      n_head=2))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"],
                                                      fan_in_fan_out=True, init_lora_weights=False))
    # placement="layers" projects each LoRA layer as a whole: those are what PEFT's merge drops.
    dipnet.hf.project_model(model, dipnet.DIPConfig(placement="layers", init_variance=0.02))
    with torch.no_grad():  # distinct variances, so that a projection moved to the wrong layer shows
        for i, p in enumerate(dipnet.projections(model).values()):
            p.set_variance(0.01 + 0.001 * i)
    return model.eval()


def test_merge_keeps_every_projection_and_the_outputs():
    model = _lora_gpt2()
    ids = torch.randint(0, 64, (2, 8))
    before = dipnet.projections(model)
    on_lora = [n for n in before if n.endswith("c_attn")]
    assert len(on_lora) == 2  # the test exercises the case PEFT's merge gets wrong
    variances = {n.removeprefix("base_model.model."): p.variance.detach().clone()
                 for n, p in before.items()}
    with torch.no_grad():
        expected = model(ids).logits
        torch.manual_seed(1)
        with dipnet.sampling(model):
            sampled = model(ids).logits
    merged = dipnet.hf.merge_and_unload(model)
    after = dipnet.projections(merged)
    assert len(after) == len(before)
    assert set(after) == set(variances)
    for name, p in after.items():
        torch.testing.assert_close(p.variance, variances[name])
    assert dipnet.get_config(merged).placement == "layers"
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-5)
        torch.manual_seed(1)
        with dipnet.sampling(merged):
            torch.testing.assert_close(merged(ids).logits, sampled, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "lost" not in dipnet.summary(merged)


def test_peft_merge_dropping_projections_is_reported():
    model = _lora_gpt2()
    count = len(dipnet.projections(model))
    merged = model.merge_and_unload()  # PEFT's own: the LoRA layers' projections go
    assert len(dipnet.projections(merged)) == count - 2
    with pytest.warns(dipnet.DIPMisuseWarning, match="dipnet.hf.merge_and_unload"):
        text = dipnet.summary(merged)
    assert "2 more were lost" in text


def test_merge_of_a_plain_model_is_one_clear_error():
    from dipnet.errors import UserError

    with pytest.raises(UserError, match="needs a peft.PeftModel"):
        dipnet.hf.merge_and_unload(torch.nn.Linear(2, 2))
