"""Save, load and merge a trained DIPNet, and check that nothing changed on the way.

1. Your own model: `dipnet.save_pretrained` (config, variances, and the weights you trained),
   `dipnet.from_pretrained` into a fresh copy of the architecture: the same outputs, with the
   projections off and with them sampling under the same seed.
2. A PEFT (LoRA) model: the adapter and the projections saved by ``DIPTrainer.save_model``,
   reloaded with ``PeftModel.from_pretrained`` + `dipnet.hf.load_projections_from`, then merged
   with `dipnet.hf.merge_and_unload`, which keeps every projection (PEFT's own merge drops those
   on LoRA layers).

Run: .venv/bin/python examples/save_load_merge.py   (part 2 needs dipnet[hf]; about 10 s)
"""
import tempfile

import torch
from torch import nn

import dipnet


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


# 1. your own model -------------------------------------------------------------------------
torch.manual_seed(0)
x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
model = dipnet.project(mlp())
loss_fn = dipnet.DIPLoss(num_train=len(x))
opt = torch.optim.Adam(dipnet.parameter_groups(model), lr=1e-2)
for _ in range(20):
    opt.zero_grad()
    loss_fn(model, x, y).total.backward()
    opt.step()
folder = tempfile.mkdtemp()
dipnet.save_pretrained(model, folder, save_weights=True)
again = dipnet.from_pretrained(mlp(), folder)  # projected with the saved config, then loaded
model.eval(), again.eval()
assert torch.equal(model(x), again(x))  # projections off
torch.manual_seed(1)
sampled = dipnet.predict(model, x, k=4).probs
torch.manual_seed(1)
assert torch.equal(dipnet.predict(again, x, k=4).probs, sampled)  # the same noise, the same λ
print("own model: saved and loaded, outputs equal")
print(dipnet.summary(again))

# 2. a PEFT model ---------------------------------------------------------------------------
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

from dipnet.hf import (DIPTrainer, load_projections_from, merge_and_unload,  # noqa: E402
                       project_model)


def gpt2() -> nn.Module:
    torch.manual_seed(0)  # the same base weights every time (a from_pretrained stand-in)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64,
                                      n_positions=32, bos_token_id=0, eos_token_id=1))


lora = get_peft_model(gpt2(), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
project_model(lora, dipnet.DIPConfig(placement="layers"))  # the LoRA layers are projected too
ids = torch.randint(0, 64, (16, 12))
rows = [{"input_ids": r, "labels": r} for r in ids]
out = tempfile.mkdtemp()
trainer = DIPTrainer(model=lora, train_dataset=rows,
                     data_collator=lambda b: {k: torch.stack([r[k] for r in b]) for k in b[0]},
                     args=TrainingArguments(output_dir=out, max_steps=3, report_to="none",
                                            per_device_train_batch_size=8, use_cpu=True,
                                            save_strategy="no", disable_tqdm=True))
trainer.train()
trainer.save_model(out)  # adapter_model.safetensors + dip_projections.safetensors

reloaded = load_projections_from(PeftModel.from_pretrained(gpt2(), out), out)
lora.eval(), reloaded.eval()
with torch.no_grad():
    expected = lora(ids).logits
    assert torch.allclose(reloaded(ids).logits, expected, atol=1e-6)
    merged = merge_and_unload(reloaded)
    assert len(dipnet.projections(merged)) == len(dipnet.projections(lora))
    assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
print(f"PEFT model: saved, reloaded and merged with all {len(dipnet.projections(merged))} "
      "projections, outputs equal")
