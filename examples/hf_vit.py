"""A Hugging Face ViT fine-tuned with DIPNet by `dipnet.hf.DIPTrainer` (drop-in for Trainer).

A tiny randomly initialised ViT (no download) on random 16x16 images so that it runs in seconds;
use ``ViTForImageClassification.from_pretrained(...)`` and your data set instead.

Run: .venv/bin/python examples/hf_vit.py   (needs dipnet[hf]; about 10 s on 2 cores)
"""
import tempfile

import torch
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification

import dipnet
from dipnet.hf import DIPTrainer, project_model

torch.manual_seed(0)
model = ViTForImageClassification(ViTConfig(
    image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64, num_labels=3))
project_model(model, dipnet.DIPConfig(placement="blocks"))  # the residual stream of each block

images = torch.randn(48, 3, 16, 16)
labels = (images[:, 0].mean(dim=(1, 2)) > 0).long() + (images[:, 1].mean(dim=(1, 2)) > 0).long()
train_ds = [{"pixel_values": im, "labels": lab} for im, lab in zip(images, labels)]


def collate(rows):
    return {key: torch.stack([r[key] for r in rows]) for key in rows[0]}


args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16,
                         num_train_epochs=2, learning_rate=3e-3, report_to="none",
                         save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=3,
                         remove_unused_columns=False)
trainer = DIPTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collate)
trainer.train()
print(trainer.evaluate(train_ds))  # eval mode: projections off, the plain model's loss
pred = dipnet.predict(model, {"pixel_values": images[:8]}, k=4,
                      output_fn=lambda out: out.logits)  # 4 sampled trajectories
print("predicted:", pred.labels.tolist())
print(dipnet.summary(model))
