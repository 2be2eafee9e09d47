"""DIPNet in 30 lines: project a model, train it with the DIPNet objective, predict.

Run: .venv/bin/python examples/quickstart.py   (10-30 s on 2 cores; real data: sklearn digits)
"""
import torch
from sklearn.datasets import load_digits
from torch import nn

import dipnet

x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
config = dipnet.DIPConfig(placement="layers", m=4, gamma=0.05)  # from scratch: small gamma
dipnet.project(model, config)  # a learned Gaussian before each Linear, in place
loss_fn = dipnet.DIPLoss(config, num_train=len(x_train))  # ELBO-scaled barrier
opt = torch.optim.Adam(dipnet.parameter_groups(model), lr=3e-3)  # variances: own lr 0.1

for epoch in range(20):
    model.train()  # projections sample
    for idx in torch.randperm(len(x_train)).split(64):
        parts = loss_fn(model, x_train[idx], y_train[idx])  # m=4 trajectories, one pass
        opt.zero_grad()
        parts.total.backward()
        opt.step()
print("last step:", {k: round(v, 4) for k, v in parts.as_floats().items()})

det = dipnet.predict(model, x_test, k=0)  # deterministic: projections off
mc = dipnet.predict(model, x_test, k=16)  # average of 16 sampled trajectories
print(f"test accuracy: deterministic {(det.labels == y_test).float().mean():.3f}, "
      f"16 samples {(mc.labels == y_test).float().mean():.3f}")
print("mean predictive entropy / mutual information:",
      f"{mc.entropy.mean():.3f} / {mc.mutual_information.mean():.4f}")
for name, stats in dipnet.variance_stats(model).items():
    print(f"variance before layer {name!r}: init {stats['init']:.3g} -> mean {stats['mean']:.3g}")
print(dipnet.summary(model))
dipnet.save_pretrained(model, "/tmp/dipnet_quickstart")  # config + variances, PEFT-style
