"""GPT-2 with LoRA and DIPNet, trained by `dipnet.hf.DIPTrainer`, then merged for deployment.

A tiny randomly initialised GPT-2 (no download) so that it runs in seconds; put your own
``GPT2LMHeadModel.from_pretrained(...)`` and data set in their place.

Run: .venv/bin/python examples/gpt2_lora.py   (needs dipnet[hf]; about 10 s on 2 cores)
"""
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

import dipnet
from dipnet.hf import DIPTrainer, generate, merge_and_unload, project_model

torch.manual_seed(0)
base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64,
                                  n_positions=32, bos_token_id=0, eos_token_id=1))
model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
project_model(model, dipnet.DIPConfig(placement="blocks"))  # before each of the 2 blocks

ids = torch.randint(0, 64, (32, 12))  # 32 "sentences" of 12 tokens: a causal LM learns them
train_ds = [{"input_ids": row, "labels": row} for row in ids]


def collate(rows):
    return {key: torch.stack([r[key] for r in rows]) for key in rows[0]}


out = tempfile.mkdtemp()
args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, max_steps=4,
                         learning_rate=1e-2, report_to="none", save_strategy="no",
                         use_cpu=True, disable_tqdm=True, logging_steps=2)
trainer = DIPTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collate,
                     variance_lr=0.05)  # num_train defaults to len(train_ds)
trainer.train()
trainer.save_model(out)  # the adapter + out/dip_projections.safetensors
print(dipnet.summary(model))

prompt = ids[:2, :4]
mask = torch.ones_like(prompt)
text = generate(model, input_ids=prompt, attention_mask=mask, max_new_tokens=4, do_sample=False)
merged = merge_and_unload(model)  # LoRA merged into the weights, every projection kept
assert len(dipnet.projections(merged)) == 2
assert torch.equal(generate(merged, input_ids=prompt, attention_mask=mask, max_new_tokens=4,
                            do_sample=False), text)  # generate: projections off
print("merged model:", type(merged).__name__, "generates", text[0].tolist())
