"""DIPNet in your own CNN: BatchNorm and a residual block, trained with `dipnet.DIPLoss`.

Projections go before every Conv2d / Linear (``placement="layers"``), one variance per input
channel; BatchNorm and the skip connection are untouched. Random images stand in for a data set.

Run: .venv/bin/python examples/own_cnn.py   (core install only: torch and safetensors; ~5 s)
"""
import torch
import torch.nn.functional as F
from torch import nn

import dipnet


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
    Residual(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
x = torch.randn(256, 1, 16, 16)
y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, :, :8].mean(dim=(1, 2, 3)) > 0).long()

dipnet.project(model, dipnet.DIPConfig(placement="layers"))
loss_fn = dipnet.DIPLoss(num_train=len(x))  # calibrates the relative start on its first batch
opt = torch.optim.Adam(dipnet.parameter_groups(model), lr=3e-3)
for epoch in range(3):
    model.train()
    for idx in torch.randperm(len(x)).split(64):
        parts = loss_fn(model, x[idx], y[idx])
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    print(f"epoch {epoch}: {parts}")

pred = dipnet.predict(model, x[:64], k=8)  # 8 sampled trajectories; BatchNorm in eval mode
print("accuracy on training images:", (pred.labels == y[:64]).float().mean().item())
print(dipnet.summary(model))
