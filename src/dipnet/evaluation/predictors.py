"""What every evaluation attacks and measures: a *prediction*, not a model.

A `Predictor` wraps a callable ``x -> logits`` (deterministic, differentiable) or a callable
``x -> one sampled trajectory's logits`` (stochastic, differentiable) together with the number
of trajectories ``k`` that the prediction averages. Every function in `dipnet.evaluation` takes
a `Predictor`, so the suite works for DIPNet, for any baseline method, and for small models
built in tests, without knowing where the logits come from.

Sampled predictions average probabilities over k trajectories (log of the mean softmax), the
same rule as `dipnet.predict`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

# the row budget of one stacked pass: re-exported (the suite and its tests read it here)
from dipnet.batching import CPU_ELEMENTS, GPU_ROWS, activation_size, default_rows  # noqa: F401
from dipnet.predict import average_log_probs, entropy  # entropy: re-exported for the suite

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

@dataclass
class Predictor:
    """A prediction to evaluate.

    Attributes:
        name: ``"deterministic"`` or ``"sampled"`` (used as the ``prediction`` field of results).
        logits_fn: for a deterministic prediction, ``x (B, ...) -> logits (B, C)``; for a
            stochastic one, one sampled trajectory per row, with independent noise in every
            row (true for DIPNet projections, Gaussian input noise, dropout).
        stochastic: whether ``logits_fn`` draws noise.
        k: trajectories averaged by the prediction (1 for a deterministic one).
        chunk: at most this many rows per forward pass when stacking trajectories (the memory
            budget: k copies of a batch of B rows run in passes of max(1, chunk // B) copies;
            the suite sets it from ``SuiteSettings.mc_max_rows``). None: `default_rows` for
            the input's device and the model's activation size (measured once per input
            shape by `activation_size`).
    """

    name: str
    logits_fn: LogitsFn
    stochastic: bool = False
    k: int = 1
    chunk: int | None = None
    _row_elements: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from dipnet.predict import check_count  # the core; imported here to keep this module torch-only

        self.k = check_count(self.k, "k", 1)
        if not self.stochastic:
            self.k = 1

    def sample_logits(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Logits of ``n`` trajectories (default ``k``), shape (n, B, C); differentiable.

        The n copies of the batch are stacked along the batch axis, trajectory-major (row
        j * B + i is trajectory j of example i, as `dipnet.batching.repeat_batch`), and run in
        as few forward passes as the ``chunk`` row budget allows, instead of a Python loop over
        trajectories. Valid because every row draws its own noise (DIPNet projections,
        Gaussian input noise, dropout): the trajectories are the same independent draws a loop
        would give (`sample_logits_looped` is that loop; tests compare the two). A
        deterministic predictor returns its logits once, shape (1, B, C), whatever ``n``.
        """
        if not self.stochastic:
            return self.logits_fn(x).unsqueeze(0)
        n = self.k if n is None else n
        b = x.shape[0]
        per_pass = max(1, self.rows_per_pass(x) // max(b, 1))
        outs = []
        done = 0
        while done < n:
            m = min(per_pass, n - done)
            stacked = x if m == 1 else x.repeat(m, *([1] * (x.dim() - 1)))  # (m*B, ...)
            out = self.logits_fn(stacked)
            outs.append(out.reshape(m, b, *out.shape[1:]))
            done += m
        return torch.cat(outs, 0)

    def rows_per_pass(self, x: torch.Tensor) -> int:
        """The row budget of one stacked pass for inputs like ``x`` (see ``chunk``)."""
        if self.chunk is not None:
            return self.chunk
        if x.device.type != "cpu":
            return default_rows(x.device)
        key = tuple(x.shape[1:])
        if key not in self._row_elements:
            self._row_elements[key] = activation_size(self.logits_fn, x)
        return default_rows(x.device, self._row_elements[key])

    def log_probs(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Log predictive probabilities, shape (B, C): log of the mean softmax over trajectories."""
        logits = self.sample_logits(x, n).float()
        return average_log_probs(torch.log_softmax(logits, -1))

    def mean_logits(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Mean logits over trajectories, shape (B, C) (the MC-averaged function of section 4)."""
        return self.sample_logits(x, n).mean(0)


def sample_logits_looped(predictor: Predictor, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The reference for `Predictor.sample_logits`: one forward pass per trajectory, (n, B, C).

    Kept for the tests and benchmarks/bench_evaluation.py, which check that the batched
    version is the same estimator and measure how much faster it is.
    """
    if not predictor.stochastic:
        return predictor.logits_fn(x).unsqueeze(0)
    n = predictor.k if n is None else n
    return torch.stack([predictor.logits_fn(x) for _ in range(n)], 0)


@dataclass
class PredictionSummary:
    """What every part of the suite needs from a prediction at unperturbed inputs, (N, ...).

    Attributes:
        log_probs: (N, C) log predictive probabilities (log of the mean softmax).
        trajectory_entropy: (N,) mean over trajectories of the entropy of each trajectory's
            softmax (the aleatoric part; equals the predictive entropy when deterministic).
        output_variance: (N,) sum over classes of the unbiased variance of the logits across
            trajectories (0 when deterministic or k = 1).
    """

    log_probs: torch.Tensor
    trajectory_entropy: torch.Tensor
    output_variance: torch.Tensor

    def take(self, idx: torch.Tensor) -> "PredictionSummary":
        """The rows ``idx``."""
        return PredictionSummary(self.log_probs[idx], self.trajectory_entropy[idx],
                                 self.output_variance[idx])


@torch.no_grad()
def predict_summary(predictor: Predictor, x: torch.Tensor, batch_size: int = 1000) -> PredictionSummary:
    """One pass of the prediction over a whole set, reduced to a `PredictionSummary`.

    The suite computes this once on the clean test points and shares it: clean accuracy and
    NLL, calibration, the eps = 0 rows of the attacks, the in-distribution OOD scores and the
    output variance are all functions of it. The log-probabilities are those of
    `predict_log_probs` (same trajectories, same formula).
    """
    lps, ents, vars_ = [], [], []
    for i in range(0, x.shape[0], batch_size):
        samples = predictor.sample_logits(x[i:i + batch_size]).float()  # (k, B, C)
        log_ps = torch.log_softmax(samples, -1)
        lps.append(average_log_probs(log_ps))
        ents.append(entropy(log_ps).mean(0))
        vars_.append(samples.var(0, unbiased=True).sum(-1) if samples.shape[0] > 1
                     else torch.zeros(samples.shape[1], device=samples.device))
    return PredictionSummary(torch.cat(lps, 0), torch.cat(ents, 0), torch.cat(vars_, 0))


def deterministic_predictor(fn: LogitsFn) -> Predictor:
    """A deterministic prediction from ``x -> logits``."""
    return Predictor("deterministic", fn, stochastic=False, k=1)


def sampled_predictor(fn: LogitsFn, k: int) -> Predictor:
    """A k-trajectory Monte Carlo prediction from ``x -> one sampled trajectory's logits``."""
    return Predictor("sampled", fn, stochastic=True, k=k)


@contextlib.contextmanager
def fixed_noise(seed: int) -> Iterator[None]:
    """Run the block with the global torch RNG seeded to ``seed``, restoring it afterwards.

    Two calls of a stochastic predictor on same-shaped batches inside ``fixed_noise(s)`` draw the
    same noise (common random numbers). The smoothness measures use it so that they measure one
    fixed smoothed function and not the difference between two noise draws.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def frozen(predictor: Predictor, seed: int, n: int | None = None) -> LogitsFn:
    """The MC-averaged logits ``x -> mean_j f(x; eps_j)`` with the noise eps fixed by ``seed``.

    For a deterministic predictor this is just its logits function. Inputs of the same shape
    always see the same noise, so the returned function is deterministic and differentiable:
    gradients, Hessian-vector products and Lipschitz ratios are those of one fixed function.
    """
    if not predictor.stochastic:
        return predictor.logits_fn

    def fn(x: torch.Tensor) -> torch.Tensor:
        with fixed_noise(seed):
            return predictor.mean_logits(x, n)

    return fn


def frozen_log_probs(predictor: Predictor, seed: int, n: int | None = None) -> LogitsFn:
    """Like `frozen`, but returns the log predictive probabilities (log of the mean softmax)."""
    if not predictor.stochastic:
        return lambda x: torch.log_softmax(predictor.logits_fn(x), -1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with fixed_noise(seed):
            return predictor.log_probs(x, n)

    return fn


@torch.no_grad()
def predict_log_probs(predictor: Predictor, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Log predictive probabilities for a whole set, in batches, without gradients; (N, C)."""
    out = [predictor.log_probs(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out, 0)


@torch.no_grad()
def predict_samples(predictor: Predictor, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The k trajectories' logits for a whole set, in batches, without gradients; (k, N, C)."""
    out = [predictor.sample_logits(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out, 1)


def accuracy(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return (log_probs.argmax(-1) == y).float().mean().item()


def nll(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels."""
    return F.nll_loss(log_probs.float(), y).item()


def model_predictors(model: torch.nn.Module, k: int = 8) -> list[Predictor]:
    """Predictors of a plain or DIPNet-projected model, in eval mode.

    Returns ``[deterministic]`` for a model without projections, ``[deterministic, sampled]``
    for a projected one (the sampled one runs the projections under `dipnet.sampling`).
    """
    from dipnet import inject  # the core; imported here to keep this module torch-only

    model.eval()

    def det(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    out = [deterministic_predictor(det)]
    if inject.projections(model):
        def one_sample(x: torch.Tensor) -> torch.Tensor:
            with inject.sampling(model):
                return model(x)

        out.append(sampled_predictor(one_sample, k))
    return out
