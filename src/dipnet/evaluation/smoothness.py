"""Smoothness measures of the paper's theory (docs/method.md), for a deterministic or an MC-averaged prediction.

What is measured (per test point unless said otherwise):
- input-gradient norm of the loss, ||grad_x loss(x, y)||_2;
- the logits' input Jacobian J(x) (C x D): spectral norm (the local Lipschitz constant of the
  logits, L2 -> L2) and Frobenius norm;
- an empirical local Lipschitz estimate, max ||f(x') - f(x)|| / ||x' - x|| over random and
  adversarially chosen x' at L2 distance <= radius;
- the input-Hessian spectral norm of the loss by power iteration on Hessian-vector products;
- weight-Hessian trace (Hutchinson) and largest-magnitude eigenvalue (power iteration) of the
  mean loss over a batch (sharpness);
- output variance across trajectories (sum over classes of the unbiased variance over k
  trajectories, the quantity of the stability penalty).

For a sampled prediction the measured function is the MC average of k trajectories with the
noise held fixed (common random numbers, `predictors.frozen`): the logits are mean_j f(x; eps_j)
and the loss is -log mean_j softmax(f(x; eps_j))_y. With fixed noise it is one deterministic,
differentiable function, so gradients, Hessian-vector products and Lipschitz ratios are exact
for it; fresh noise per evaluation would instead measure the noise (two draws at the same x
differ). It is an estimate of the smoothed function E_eps f(x; eps) that improves with k.

Hand-written with torch.autograd (double backward) rather than PyHessian (unmaintained since
2021, model-and-criterion only, no per-example input Hessians).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from dipnet.errors import UserError

LossFn = Callable[[torch.Tensor], torch.Tensor]  # x (B, ...) -> per-example loss (B,)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)


def _summary(values: torch.Tensor) -> dict[str, float]:
    v = values.detach().float()
    return {"mean": v.mean().item(), "max": v.max().item()}


def _dot(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum(g * v) for a constant v: its gradient reaches g as exactly v (1.0 * v), so
    ``grad(_dot(g, v), x)`` is bit for bit ``grad(g, x, grad_outputs=v)``, the Hessian-vector
    product. Written this way because passing a tensor as ``grad_outputs`` makes torch import
    its symbolic-shape machinery (sympy): about 0.4 s the first time in every process."""
    return (g * v.detach()).sum()


def loss_gradient_norms(loss_fn: LossFn, x: torch.Tensor) -> torch.Tensor:
    """Per-example ||grad_x loss||_2, shape (B,).

    Args:
        loss_fn: per-example losses of a batch; example i's loss may depend only on row i.
        x: inputs (B, ...).
    """
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
    return _rows(g).norm(dim=1)


def logit_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-example input Jacobian of ``fn`` (rows independent), shape (B, C, D) with D = prod(x.shape[1:]).

    One forward pass and C backward passes (cheap for classifiers with few classes).
    """
    x = x.detach().requires_grad_(True)
    out = fn(x)  # (B, C)
    cols = []
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=c < out.shape[1] - 1)
        cols.append(_rows(g))
    return torch.stack(cols, 1)


def jacobian_norms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spectral and Frobenius norms of the per-example Jacobian, each shape (B,)."""
    jac = logit_jacobian(fn, x)
    return {"spectral": torch.linalg.matrix_norm(jac, ord=2),
            "frobenius": torch.linalg.matrix_norm(jac, ord="fro")}


def local_lipschitz(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, radius: float,
                    n_random: int = 8, adv_steps: int = 10,
                    bounds: tuple[float, float] | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Empirical local Lipschitz ratios max ||f(x') - f(x)||_2 / ||x' - x||_2, per example.

    Random pairs: x' = x + radius * u with u uniform on the unit sphere, ``n_random`` draws.
    Adversarial pairs: ``adv_steps`` steps of ascent on ||f(x + d) - f(x)||^2 over the sphere
    of ``radius`` (each step moves d to radius * grad / ||grad||, starting from the best random
    direction), keeping the best ratio seen. Both are lower bounds of the local Lipschitz
    constant on the ball; the adversarial one is the tighter.

    Returns:
        ``{"random": (B,), "adversarial": (B,)}`` per-example ratios (adversarial >= random).
    """
    x = x.detach()
    with torch.no_grad():
        f0 = fn(x)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)

    def clip(xp: torch.Tensor) -> torch.Tensor:
        return xp if bounds is None else xp.clamp(bounds[0], bounds[1])

    def ratio(xp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        dist = _rows(xp - x).norm(dim=1).clamp_min(1e-12)
        return _rows(out - f0).norm(dim=1) / dist

    best_rand = torch.zeros(x.shape[0], device=x.device)
    best_dir = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(n_random):
            u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            u = u / _rows(u).norm(dim=1).view(shape).clamp_min(1e-12)
            xp = clip(x + radius * u)
            r = ratio(xp, fn(xp))
            better = r > best_rand
            best_dir[better] = (xp - x)[better]
            best_rand = torch.where(better, r, best_rand)
    best_adv = best_rand.clone()
    delta = best_dir.clone()
    for _ in range(adv_steps):
        delta = delta.detach().requires_grad_(True)
        out = fn(x + delta)
        (g,) = torch.autograd.grad(_rows(out - f0).pow(2).sum(), delta)
        with torch.no_grad():
            # Jump to the sphere along the gradient: for a linear f this is exactly power
            # iteration on W^T W (converges to the top singular direction); for a net it is
            # a fixed-point ascent, and the best ratio seen is kept.
            delta = radius * g / _rows(g).norm(dim=1).view(shape).clamp_min(1e-12)
            delta = clip(x + delta) - x
            r = ratio(x + delta, fn(x + delta))
            best_adv = torch.maximum(best_adv, r)
    return {"random": best_rand, "adversarial": best_adv}


def input_hessian_spectral_norm(loss_fn: LossFn, x: torch.Tensor, iters: int = 20,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example spectral norm of the input Hessian of the loss, by batched power iteration.

    The gradient is built once with ``create_graph`` and each iteration is one Hessian-vector
    product (double backward) for all examples at once (row i of the summed loss depends only
    on row i). Returns ||H v|| for the final unit vector v, which converges from below to the
    largest |eigenvalue| of each example's D x D Hessian.

    Returns:
        shape (B,).
    """
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x).sum(), x, create_graph=True)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / _rows(v).norm(dim=1).view(shape)
    norm = torch.zeros(x.shape[0], device=x.device)
    if not g.requires_grad:  # the gradient does not depend on x: the loss is affine
        return norm
    for i in range(iters):
        (hv,) = torch.autograd.grad(_dot(g, v), x, retain_graph=i < iters - 1, allow_unused=True)
        if hv is None:  # zero curvature
            return norm
        norm = _rows(hv).norm(dim=1)
        v = (hv / norm.view(shape).clamp_min(1e-30)).detach()
    return norm.detach()


def weight_hessian_stats(loss: torch.Tensor, params: Sequence[torch.Tensor], trace_probes: int = 20,
                         power_iters: int = 20, generator: torch.Generator | None = None) -> dict[str, float]:
    """Hutchinson trace and power-iteration top eigenvalue of the Hessian of ``loss`` in ``params``.

    Args:
        loss: a scalar built from ``params`` (with its graph).
        params: the parameters (e.g. a model's weights without DIPNet's variances).
        trace_probes: Rademacher probes v for tr(H) ~ mean v^T H v.
        power_iters: power-iteration steps for the largest-magnitude eigenvalue (signed Rayleigh
            quotient v^T H v at the final unit v).
    Returns:
        ``{"trace": ..., "trace_stderr": ..., "top_eigenvalue": ...}``.
    """
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        terms = [_dot(g, v) for g, v in zip(grads, vs) if g.requires_grad]
        if not terms:  # no gradient depends on the parameters: zero curvature
            return [torch.zeros_like(p) for p in params]
        out = torch.autograd.grad(sum(terms), params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for p, h in zip(params, out)]

    def rand_like(p: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype) * 2 - 1

    samples = []
    for _ in range(trace_probes):
        vs = [rand_like(p) for p in params]
        hs = hvp(vs)
        samples.append(sum((v * h).sum() for v, h in zip(vs, hs)).item())
    vs = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]
    top = 0.0
    for _ in range(power_iters):
        n = math.sqrt(sum((v * v).sum().item() for v in vs))
        vs = [v / max(n, 1e-30) for v in vs]
        hs = hvp(vs)
        top = sum((v * h).sum() for v, h in zip(vs, hs)).item()
        vs = [h.detach() for h in hs]
    t = torch.tensor(samples)
    stderr = (t.std(unbiased=True) / math.sqrt(len(samples))).item() if len(samples) > 1 else float("nan")
    return {"trace": t.mean().item(), "trace_stderr": stderr, "top_eigenvalue": top}


def output_variance(samples: torch.Tensor) -> torch.Tensor:
    """Per-example sum over outputs of the unbiased variance across trajectories.

    Args:
        samples: logits of k >= 2 trajectories, shape (k, B, C).
    Returns:
        shape (B,).
    """
    if samples.shape[0] < 2:
        return torch.zeros(samples.shape[1], device=samples.device)
    return samples.float().var(0, unbiased=True).sum(-1)


def stein_gradient(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, std: torch.Tensor | float,
                   n_samples: int = 10000, chunk: int = 1000,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo gradient of the Gaussian-smoothed g(x) = E_z fn(x + std * z), z ~ N(0, I).

    Uses Stein's identity, grad g(x) = E[(fn(x + std z) - fn(x)) z / std]: it needs only
    function values, so it applies to non-differentiable (even discontinuous) bounded fn; the
    fn(x) term is a control variate (zero mean) that reduces the variance.

    Args:
        fn: scalar per example, (B, D) -> (B,).
        x: points, shape (B, D).
        std: noise standard deviation, a float or a (D,) tensor.
    Returns:
        estimated gradients, shape (B, D).
    """
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        f0 = fn(x)
        acc = torch.zeros_like(x)
        done = 0
        while done < n_samples:
            m = min(chunk, n_samples - done)
            z = torch.randn((m,) + tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
            vals = fn((x.unsqueeze(0) + std_t * z).reshape(-1, *x.shape[1:])).reshape(m, x.shape[0])
            acc += ((vals - f0).unsqueeze(-1) * z).sum(0)
            done += m
    return acc / n_samples / std_t


def gaussian_smoothing_bound(std: torch.Tensor | float, dim: int | None = None, sup: float = 1.0,
                             n_mc: int = 200000, seed: int = 0) -> float:
    """Theorem 1's bound on max_x ||grad g(x)|| for g = h * N(0, diag(std^2)) and |h| <= sup.

    The bound is sup * integral ||grad mu(t)|| dt = sup * E||Sigma^{-1/2} z||, z ~ N(0, I). For
    isotropic std (a float, with ``dim`` given) that is sup * E||z|| / std with the chi mean
    E||z|| = sqrt(2) Gamma((d+1)/2) / Gamma(d/2); for per-feature std it is estimated by Monte
    Carlo with ``n_mc`` draws (relative error about 1 / sqrt(n_mc * d)).

    Raises:
        ValueError: if std is not positive, or a float std comes without ``dim``.
    """
    if isinstance(std, (int, float)):
        if dim is None or dim < 1 or std <= 0:
            raise ValueError("an isotropic std needs std > 0 and dim >= 1")
        chi_mean = math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
        return sup * chi_mean / std
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    if (s <= 0).any():
        raise ValueError("every std must be > 0")
    gen = torch.Generator().manual_seed(seed)
    total, done = 0.0, 0
    while done < n_mc:
        m = min(20000, n_mc - done)
        z = torch.randn(m, s.numel(), generator=gen, dtype=torch.float64)
        total += (z / s).norm(dim=1).sum().item()
        done += m
    return sup * total / n_mc


def cross_entropy_loss_fn(log_probs_fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> LossFn:
    """Per-example NLL of ``y`` under ``log_probs_fn`` (log-probabilities or logits alike)."""
    return lambda x: F.cross_entropy(log_probs_fn(x).float(), y, reduction="none")


def summarize(values: torch.Tensor) -> dict[str, float]:
    """``{"mean", "max"}`` of a per-example measure."""
    return _summary(values)




@contextlib.contextmanager
def _second_derivative(what: str) -> Iterator[None]:
    """Turn autograd's refusal of a double backward into one line that names the fix."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        # autograd's words for an op whose backward cannot be differentiated again
        if not (("derivative for" in text and "not implemented" in text)
                or "differentiate twice" in text):
            raise
        raise UserError(
            f"the {what} needs a second derivative, and an op of this model has none "
            f"({text.splitlines()[0][:120]}); for a Hugging Face model build it with "
            "attn_implementation='eager' (SDPA attention on a CPU has no double backward), or "
            "leave smoothness out of the evaluation parts.") from None


def measure_smoothness(predictor, x: torch.Tensor, y: torch.Tensor, *, radius: float | None = None,
                       n_random: int = 8, adv_steps: int = 10, hessian_iters: int = 20,
                       bounds: tuple[float, float] | None = None,
                       params: Sequence[torch.Tensor] | None = None,
                       weight_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                       trace_probes: int = 10, power_iters: int = 10, batch_size: int = 100,
                       seed: int = 0, output_variances: torch.Tensor | None = None) -> dict:
    """Every smoothness measure of this module for one `Predictor`.

    Args:
        predictor: deterministic or sampled prediction (a sampled one is measured as the MC
            average of its k trajectories with fixed noise, see the module docstring).
        x, y: test points for the per-example measures.
        radius: L2 radius of the local Lipschitz estimate; default 0.05 * sqrt(D), i.e. a
            root-mean-square change of 0.05 per input feature (inputs in [0, 1]).
        bounds: input range for the Lipschitz pairs, or None.
        params, weight_batch: parameters and (x, y) batch for the weight-Hessian measures;
            skipped when either is None.
        batch_size: examples per pass (each batch gets its own fixed noise seed).
        seed: base seed for the fixed noise and the random directions.
        output_variances: (N,) per-example output variance across k fresh trajectories at
            ``x`` if already computed (the suite's clean pass); computed here otherwise.
    Returns:
        a JSON-ready dict: ``{name: {"mean", "max"}}`` for per-example measures, floats for the
        weight-Hessian ones, and the settings used.
    """
    from dipnet.evaluation.predictors import frozen, frozen_log_probs, predict_samples

    d = int(x[0].numel())
    radius = 0.05 * math.sqrt(d) if radius is None else float(radius)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "loss_grad_norm", "logit_jacobian_spectral", "logit_jacobian_frobenius",
        "lipschitz_random", "lipschitz_adversarial", "input_hessian_spectral")}
    for b, i in enumerate(range(0, x.shape[0], batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits_fn = frozen(predictor, seed + b)
        loss_fn = cross_entropy_loss_fn(frozen_log_probs(predictor, seed + b), yb)
        parts["loss_grad_norm"].append(loss_gradient_norms(loss_fn, xb))
        jn = jacobian_norms(logits_fn, xb)
        parts["logit_jacobian_spectral"].append(jn["spectral"])
        parts["logit_jacobian_frobenius"].append(jn["frobenius"])
        lip = local_lipschitz(logits_fn, xb, radius, n_random, adv_steps, bounds, gen)
        parts["lipschitz_random"].append(lip["random"])
        parts["lipschitz_adversarial"].append(lip["adversarial"])
        with _second_derivative("input Hessian"):
            parts["input_hessian_spectral"].append(
                input_hessian_spectral_norm(loss_fn, xb, hessian_iters, gen))
    out: dict = {k: _summary(torch.cat(v)) for k, v in parts.items()}
    if predictor.stochastic:
        if output_variances is None:
            output_variances = output_variance(predict_samples(predictor, x, batch_size))
        out["output_variance"] = _summary(output_variances)
    else:
        out["output_variance"] = {"mean": 0.0, "max": 0.0}
    if params is not None and weight_batch is not None:
        xw, yw = weight_batch
        loss = F.nll_loss(frozen_log_probs(predictor, seed)(xw).float(), yw)
        with _second_derivative("weight Hessian"):
            w = weight_hessian_stats(loss, list(params), trace_probes, power_iters, gen)
        out["weight_hessian_trace"] = w["trace"]
        out["weight_hessian_trace_stderr"] = w["trace_stderr"]
        out["weight_hessian_top_eigenvalue"] = w["top_eigenvalue"]
        out["weight_hessian_points"] = int(xw.shape[0])
    out["settings"] = {"n_points": int(x.shape[0]), "k": predictor.k, "lipschitz_radius": radius,
                       "lipschitz_random_pairs": n_random, "lipschitz_adversarial_steps": adv_steps,
                       "hessian_power_iters": hessian_iters, "trace_probes": trace_probes,
                       "weight_power_iters": power_iters}
    return out
