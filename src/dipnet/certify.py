"""Certified robustness from the input projection: randomized smoothing (Cohen, Rosenfeld and
Kolter 2019, Algorithms CERTIFY and PREDICT), anisotropic included.

A projected model's input projection draws ``x + delta`` with delta ~ N(0, Sigma), Sigma
diagonal: learned per feature for DIPNet, frozen for fixed_noise. The model with every
projection sampling is a random base classifier f, and its smoothed classifier
``g(x) = argmax_c P(f(x + delta) = c)`` is certifiably robust (the internal projections only make
f random; the certificate holds for any base classifier, a random one included, when every Monte
Carlo sample draws fresh noise). If ``pA_lower`` bounds P(f(x + delta) = cA) from below, g
predicts cA for every x + e with ``||Sigma^{-1/2} e||_2 < Phi^-1(pA_lower)`` (Cohen et al.'s
Theorem 1 in the whitened coordinates Sigma^{-1/2} x). That ellipsoid holds the ball of radius
``min_i sigma_i * Phi^-1(pA_lower)``, the isotropic L2 radius that compares with other work.

sigma_i are the standard deviations of the input projection in the units of the model's input:
a projection behind an elementwise affine map of the input (the harness's input normalisation,
``(x - mean) / std``) has its standard deviations divided by that map's scale. The model input
is found by probing: the one projection whose input is an elementwise affine function of the
model input, through which alone the input reaches the output.

The Monte Carlo noise comes from torch's global generator: ``torch.manual_seed`` fixes it.
Needs scipy (the Clopper-Pearson bound and the binomial test): the ``eval`` extra.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from dipnet.batching import activation_size, default_rows
from dipnet.errors import UserError
from dipnet.inject import intercepted, projections, sampling, variances
from dipnet.predict import PredictInputError, check_inputs
from dipnet.projection import GaussianProjection

Internal = Literal["sample", "off"]

__all__ = ["Certificate", "CertifyError", "certify", "smoothed_predict", "with_input_noise",
           "clopper_pearson_lower", "binomial_p_value"]


class CertifyError(UserError):
    """The model or the arguments cannot give a sound certificate; the message says why."""


@dataclass
class Certificate:
    """Randomized-smoothing certificates for a batch, one entry per example.

    Attributes:
        label: (N,) int64, the smoothed classifier's class, -1 where it abstains.
        p_lower: (N,) float64, the one-sided (1 - alpha) Clopper-Pearson lower bound pA_lower
            on the probability of ``label`` under the noise.
        radius: (N,) float64, the isotropic L2 radius min_i sigma_i * Phi^-1(pA_lower), in the
            units of the model input (0 where it abstains).
        axis_radii: (N, *input_shape) float64, the certified ellipsoid's radius along each input
            feature, sigma_i * Phi^-1(pA_lower) (0 where it abstains).
        volume_radius: (N,) float64, the radius of the L2 ball with the ellipsoid's volume, the
            geometric mean of the axis radii (0 where it abstains).
        sigma: (*input_shape) float64, the noise standard deviation of every input feature, read
            once at the start (the certificate holds for these values).
        count: (N,) int64, the votes for ``label`` among the n samples.
        n, n0, alpha: the sample counts and the failure probability used.
        internal: ``"sample"`` (internal projections sampled) or ``"off"``.
        covers: what the radii are measured on: ``"the model input"``, or the input of the first
            projected layer (``from_first_projection``).
        projection: the host name of the projection that supplies the noise.
        seconds: wall-clock time of the Monte Carlo sampling.
    """

    label: torch.Tensor
    p_lower: torch.Tensor
    radius: torch.Tensor
    axis_radii: torch.Tensor
    volume_radius: torch.Tensor
    sigma: torch.Tensor
    count: torch.Tensor
    n: int
    n0: int
    alpha: float
    internal: str
    covers: str
    projection: str
    seconds: float = 0.0

    @property
    def abstained(self) -> torch.Tensor:
        """(N,) bool: where the smoothed classifier abstains."""
        return self.label < 0


@dataclass(frozen=True)
class _Noise:
    """The projection whose noise is certified, and its noise in the certified units."""

    name: str
    variance: torch.Tensor  # the projection's lambda as read at the start
    sigma: torch.Tensor  # (*shape) float64
    covers: str


# ---------------------------------------------------------------------- statistics
def clopper_pearson_lower(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    ``Beta.ppf(alpha; k, n - k + 1)``, 0 for k = 0: the bound of Cohen et al.'s code
    (statsmodels' ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``).

    Args:
        successes: (N,) counts k in 0..trials.
        trials: n.
        alpha: the failure probability, in (0, 1).
    Returns:
        (N,) float64 on the CPU.
    Raises:
        CertifyError: scipy is not installed.
    """
    beta = _scipy_stats("the Clopper-Pearson bound").beta
    k = successes.detach().cpu().to(torch.float64)
    low = torch.from_numpy(beta.ppf(alpha, k.clamp_min(1).numpy(), (trials - k + 1).numpy()))
    return torch.where(k > 0, low, torch.zeros_like(low))


def binomial_p_value(top: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two-sided binomial test of ``top`` successes in ``top + second`` trials at p = 1/2.

    The distribution is symmetric, so the p-value is min(1, 2 P(X <= min(top, second))): what
    ``scipy.stats.binomtest(top, top + second, 0.5).pvalue`` gives, for a whole batch at once.

    Returns:
        (N,) float64 on the CPU.
    Raises:
        CertifyError: scipy is not installed.
    """
    binom = _scipy_stats("the binomial test").binom
    a = top.detach().cpu().to(torch.float64)
    b = second.detach().cpu().to(torch.float64)
    p = torch.from_numpy(binom.cdf(torch.minimum(a, b).numpy(), (a + b).numpy(), 0.5))
    return (2 * p).clamp(max=1.0)


def _scipy_stats(what: str):
    try:
        from scipy import stats
    except ImportError:
        raise CertifyError(f"dipnet.certify needs scipy for {what}: pip install "
                           "'dipnet[eval]'.") from None
    return stats


# ---------------------------------------------------------------------- finding the noise
def _check_arguments(model: nn.Module, x: torch.Tensor, n: int, n0: int, alpha: float,
                     batch_size: int | None, internal: str) -> None:
    for name, value in (("n", n), ("n0", n0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CertifyError(f"dipnet.certify: {name} must be an integer >= 1, got {value!r}.")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise CertifyError(f"dipnet.certify: alpha must lie in (0, 1) (the failure "
                           f"probability, e.g. 0.001), got {alpha!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise CertifyError(f"dipnet.certify: batch_size must be an integer >= 1 or None, got "
                           f"{batch_size!r}.")
    if internal not in ("sample", "off"):
        raise CertifyError(f"dipnet.certify: internal must be 'sample' or 'off', got "
                           f"{internal!r}.")
    if (not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2
            or not len(x)):
        what = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                else type(x).__name__)
        raise CertifyError(f"dipnet.certify: x must be a floating-point batch (N, ...) of model "
                           f"inputs, got {what}.")
    try:
        check_inputs(model, x)
    except PredictInputError as err:
        raise CertifyError(str(err).replace("dipnet.predict", "dipnet.certify")) from None


def _probe_inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three inputs 0, 1, r (r standard normal, fixed) shaped like one example of x, and r.

    An elementwise affine map u = a * x + b shows as u(x0 + r) - u(x0) = (u(x0 + 1) - u(x0)) * r;
    r takes both signs, so a ReLU or a clamp before the projection does not pass for affine.
    """
    # From the origin, not from a certified point: the scale read here must be the same
    # whichever points a call certifies (float32 round-off of u(x0 + 1) - u(x0) depends on x0).
    x0 = torch.zeros_like(x[:1].detach())
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0)
    return torch.cat([x0, x0 + 1, x0 + r]), r[0]


def _elementwise_scale(u: torch.Tensor, r: torch.Tensor) -> torch.Tensor | None:
    """The scale a of u = a * x + b over the probes (flattened like x), or None if u is not an
    invertible elementwise affine function of the model input."""
    if u.dim() == 0 or u.shape[0] != 3 or u[0].numel() != r.numel():
        return None
    u0, u1, ur = u.detach().reshape(3, -1).to(torch.float64)
    a = u1 - u0
    rr = r.reshape(-1).to(torch.float64)
    scale = float(u.detach().abs().max()) + float(a.abs().max()) + 1e-12
    if not torch.allclose(ur - u0, a * rr, rtol=1e-3, atol=1e-5 * scale):
        return None
    if not bool((a.abs() > 1e-6 * float(a.abs().max())).all()):
        return None  # some input feature does not reach u: not invertible
    return a


def _per_element_std(proj: GaussianProjection, u: torch.Tensor, variance: torch.Tensor
                     ) -> torch.Tensor:
    """sqrt(lambda) broadcast to one example of u, float64, shape u.shape[1:]."""
    dim = proj.feature_axis(u)
    shape = [1] * u.dim()
    shape[dim] = proj.num_features
    std = variance.detach().to(torch.float64).sqrt().to(u.device).view(shape)
    return std.expand(u.shape)[0].clone()


def _locate(model: nn.Module, x: torch.Tensor, from_first_projection: bool) -> _Noise:
    """Find the projection whose noise smooths the model input (see the module docstring)."""
    projs = projections(model)
    if not projs:
        raise CertifyError(
            "dipnet.certify: the model has no DIPNet projection, so nothing smooths its input; "
            "project it (dipnet.project) or add fixed Gaussian input noise with "
            "with_input_noise(model, sigma, input_shape) from the module dipnet.certify.")
    # Read once, here: the certificate is computed for these values and records them.
    lam = variances(model)
    bad = {name: int((~torch.isfinite(v) | (v <= 0)).sum()) for name, v in lam.items()}
    probes, r = _probe_inputs(x)
    seen: dict[str, list[torch.Tensor]] = {}

    def capture(name: str, proj: GaussianProjection, t: torch.Tensor) -> torch.Tensor:
        seen.setdefault(name, []).append(t.detach().clone())
        return t

    with torch.no_grad(), intercepted(model, capture):
        out = model(probes)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 3:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CertifyError(f"dipnet.certify needs a classifier that returns logits (N, "
                           f"classes) for inputs (N, ...); this model returned {shape}.")
    order = list(seen)
    if not order:
        raise CertifyError("dipnet.certify: no projection of the model saw its input during a "
                           "forward pass; the projected layers are not on the path of x.")
    at_input = [name for name in order if len(seen[name]) == 1
                and _elementwise_scale(seen[name][0], r) is not None]
    if len(at_input) > 1:
        raise CertifyError(f"dipnet.certify: several projections ({', '.join(at_input[:4])}) "
                           "see the model input; a certificate needs exactly one source of "
                           "input noise.")
    if at_input:
        name = at_input[0]
        u = seen[name][0]
        scale = _elementwise_scale(u, r)
        std = _per_element_std(projs[name], u, lam[name]).reshape(-1)
        sigma = (std / scale.abs().to(std.device)).reshape(x.shape[1:])
        covers = "the model input"
    elif from_first_projection:
        name = order[0]
        if len(seen[name]) != 1:
            raise CertifyError(f"dipnet.certify: the first projection, on '{name}', runs "
                               f"{len(seen[name])} times per forward pass; its noise is not one "
                               "Gaussian smoothing of its layer's input.")
        u = seen[name][0]
        sigma = _per_element_std(projs[name], u, lam[name])
        covers = (f"the input of layer '{name}' (the first projection, in that layer's units), "
                  "not the model input")
    else:
        raise CertifyError(
            f"dipnet.certify: no projection sees the model input itself (the first one, on "
            f"'{order[0]}', gets a function of it that is not elementwise affine); project the "
            "input (DIPConfig placement 'input' or 'layers'), or pass from_first_projection=True "
            f"to certify the input of layer '{order[0]}' instead.")
    if bad[name]:
        raise CertifyError(
            f"dipnet.certify: the projection on '{name}' has {bad[name]} non-finite or "
            f"non-positive variance(s) of {lam[name].numel()}; the model diverged or its "
            "variances are damaged: retrain it or load valid variances.")
    _check_no_bypass(model, probes, name)
    return _Noise(name, lam[name], sigma.to(torch.float64).cpu(), covers)


def _check_no_bypass(model: nn.Module, probes: torch.Tensor, name: str) -> None:
    """Refuse a model whose input reaches the output other than through projection ``name``
    (then the noise there does not smooth the function of the input)."""
    def cut(host: str, proj: GaussianProjection, t: torch.Tensor) -> torch.Tensor:
        return t.detach() if host == name else t

    xg = probes.clone().requires_grad_(True)
    with torch.enable_grad(), intercepted(model, cut):
        out = model(xg)
    if not out.requires_grad:
        return
    (grad,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
    if grad is not None and bool(grad.abs().sum() > 0):
        raise CertifyError(
            f"dipnet.certify: the model input reaches the output also around the projection on "
            f"'{name}' (a skip connection or a second use of x), so that projection's noise does "
            "not smooth the model as a function of its input.")


def _check_fresh(model: nn.Module, x: torch.Tensor, noise: _Noise) -> None:
    """Refuse noise that is not drawn afresh for every sample: two copies of one input in one
    pass, and one input in two passes, must see different noise."""
    drawn: list[torch.Tensor] = []

    def record(host: str, proj: GaussianProjection, t: torch.Tensor) -> torch.Tensor:
        u = type(proj).project(proj, t)  # the class's own sampling, as the Monte Carlo uses
        if host == noise.name:
            drawn.append((u - t).detach().reshape(t.shape[0], -1))
        return u

    x0 = x[:1].detach()
    with torch.no_grad(), intercepted(model, record):
        model(torch.cat([x0, x0]))
        model(x0)
    if len(drawn) != 2:
        raise CertifyError(f"dipnet.certify: the projection on '{noise.name}' ran {len(drawn)} "
                           "times in two forward passes; its noise is not one draw per sample.")
    same_rows = torch.equal(drawn[0][0], drawn[0][1])
    same_calls = torch.equal(drawn[0][0], drawn[1][0])
    if same_rows or same_calls or not bool(drawn[1].abs().sum() > 0):
        where = "two samples in one pass" if same_rows else "two passes"
        raise CertifyError(
            f"dipnet.certify: the projection on '{noise.name}' drew the same noise for {where}; "
            "a certificate needs fresh independent noise in every sample (something reseeds "
            "torch's generator inside the forward pass, or the noise is cached).")


# ---------------------------------------------------------------------- Monte Carlo
@contextlib.contextmanager
def _base_classifier(model: nn.Module, noise: _Noise, internal: str) -> Iterator[None]:
    """The random base classifier: eval mode (BatchNorm's running statistics), no gradients,
    the input projection sampling and the others sampling (``internal="sample"``) or off."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sampling(model):
            if internal == "off":
                # `sampling` restores every projection's mode on exit.
                for name, p in projections(model).items():
                    if name != noise.name:
                        p.set_mode("off")
            yield
    finally:
        model.train(was_training)


def _default_batch_size(model: nn.Module, x: torch.Tensor) -> int:
    # the row budget the evaluation suite measured for one stacked pass on this device
    return default_rows(x.device, activation_size(model, x[:1]))


def _vote_counts(model: nn.Module, x: torch.Tensor, num: int, batch_size: int) -> torch.Tensor:
    """(N, classes) int64: how often the base classifier predicts each class over ``num`` noisy
    copies of each example. Passes of ``batch_size`` rows hold copies of one or several
    examples (row r is a copy of example r // num); every row draws its own noise."""
    rows = x.shape[0] * num
    counts: torch.Tensor | None = None
    for start in range(0, rows, batch_size):
        example = torch.arange(start, min(start + batch_size, rows), device=x.device) // num
        logits = model(x[example])
        if counts is None:
            counts = torch.zeros(x.shape[0], logits.shape[-1], dtype=torch.int64,
                                 device=x.device)
        votes = example * counts.shape[1] + logits.argmax(-1)
        counts.view(-1).index_add_(0, votes, torch.ones_like(votes))
    assert counts is not None  # rows >= 1
    return counts


def _prepare(model: nn.Module, x: torch.Tensor, n: int, n0: int, alpha: float,
             batch_size: int | None, internal: str, from_first_projection: bool
             ) -> tuple[_Noise, int]:
    _check_arguments(model, x, n, n0, alpha, batch_size, internal)
    was_training = model.training
    model.eval()
    try:
        noise = _locate(model, x, from_first_projection)
        _check_fresh(model, x, noise)
    finally:
        model.train(was_training)
    if batch_size is None:
        with _base_classifier(model, noise, internal):
            batch_size = _default_batch_size(model, x)
    return noise, batch_size


def _check_unchanged(model: nn.Module, noise: _Noise) -> None:
    if not torch.equal(variances(model)[noise.name], noise.variance):
        raise CertifyError(f"dipnet.certify: the variances of the projection on '{noise.name}' "
                           "changed during certification (is the model being trained?); "
                           "certify a model that nothing else modifies.")


def certify(model: nn.Module, x: torch.Tensor, *, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch_size: int | None = None, internal: Internal = "sample",
            from_first_projection: bool = False) -> Certificate:
    """Certify the smoothed classifier of a projected model at each example of ``x`` (CERTIFY).

    For each example, n0 noisy samples choose the class cA (the most frequent); n further
    samples give the one-sided Clopper-Pearson lower bound pA_lower on P(f(x + delta) = cA). The
    model abstains (label -1) where pA_lower <= 1/2; elsewhere, with probability >= 1 - alpha
    over the sampling, the smoothed classifier predicts cA on the whole certified ellipsoid.

    Args:
        model: a classifier with a DIPNet projection at its input (or behind an elementwise
            affine normalisation), returning logits (N, classes).
        x: (N, ...) inputs, in the units the certificate's radii are measured in.
        n0: samples that select the class.
        n: samples that estimate pA.
        alpha: failure probability of each certificate.
        batch_size: rows per forward pass (copies of one or several examples); default the
            evaluation suite's row budget for this device and model.
        internal: ``"sample"``: the internal projections sample, the base classifier is the
            model as trained; ``"off"``: only the input projection samples (the deterministic
            network, smoothed at its input).
        from_first_projection: if no projection sees the model input, certify the input of the
            first projected layer instead (radii in that layer's units; `Certificate.covers`).
    Returns:
        a `Certificate`.
    Raises:
        CertifyError: no projection at the input (unless ``from_first_projection``), input
            variances that are not all finite and positive, noise that is not fresh in every
            sample, a model output that is not logits, or bad arguments.
    """
    noise, rows = _prepare(model, x, n, n0, alpha, batch_size, internal, from_first_projection)
    t0 = time.perf_counter()
    with _base_classifier(model, noise, internal):
        selection = _vote_counts(model, x, n0, rows)
        label = selection.argmax(-1)
        counts = _vote_counts(model, x, n, rows)
    seconds = time.perf_counter() - t0
    _check_unchanged(model, noise)
    count = counts.gather(1, label[:, None])[:, 0].cpu()
    p_lower = clopper_pearson_lower(count, n, alpha)
    certified = p_lower > 0.5
    z = torch.where(certified, torch.special.ndtri(p_lower.clamp(0.5, 1.0)),
                    torch.zeros_like(p_lower))  # Phi^-1(pA_lower), 0 on abstain
    sigma = noise.sigma
    axis = z.view(-1, *([1] * sigma.dim())) * sigma
    return Certificate(
        label=torch.where(certified, label.cpu(), torch.full_like(label.cpu(), -1)),
        p_lower=p_lower, radius=z * float(sigma.min()), axis_radii=axis,
        volume_radius=z * math.exp(float(sigma.log().mean())), sigma=sigma, count=count,
        n=n, n0=n0, alpha=float(alpha), internal=internal, covers=noise.covers,
        projection=noise.name, seconds=seconds)


def smoothed_predict(model: nn.Module, x: torch.Tensor, *, n: int = 100_000,
                     alpha: float = 0.001, batch_size: int | None = None,
                     internal: Internal = "sample", from_first_projection: bool = False
                     ) -> torch.Tensor:
    """The smoothed classifier's prediction at each example of ``x`` (PREDICT).

    n noisy samples; the two most frequent classes are compared by a two-sided binomial test
    at p = 1/2; where its p-value exceeds ``alpha`` the model abstains. With probability
    >= 1 - alpha the returned class (where it does not abstain) is the smoothed classifier's.

    Args:
        model, x, batch_size, internal, from_first_projection: as in `certify`.
        n: samples per example.
        alpha: the test's level.
    Returns:
        (N,) int64 on the CPU: the class, or -1 where it abstains.
    Raises:
        CertifyError: as `certify`.
    """
    noise, rows = _prepare(model, x, n, 1, alpha, batch_size, internal, from_first_projection)
    with _base_classifier(model, noise, internal):
        counts = _vote_counts(model, x, n, rows).cpu()
    if counts.shape[1] < 2:
        return counts.argmax(-1)
    top = counts.topk(2, dim=-1)
    p = binomial_p_value(top.values[:, 0], top.values[:, 1])
    return torch.where(p <= alpha, top.indices[:, 0], torch.full_like(top.indices[:, 0], -1))


# ---------------------------------------------------------------------- plain models
class InputNoiseModel(nn.Module):
    """``model(x + sigma * eps)`` as a projected model: a frozen `GaussianProjection` (one
    variance sigma^2 for every feature) on an identity layer in front of ``model``. It adds
    noise only where projections sample (`dipnet.sampling`, `certify`); in eval mode it is
    ``model`` itself."""

    def __init__(self, model: nn.Module, sigma: float, num_features: int) -> None:
        super().__init__()
        self.noise = nn.Identity()
        self.model = model
        variance = float(sigma) ** 2
        proj = GaussianProjection(num_features, feature_dim=1, init_variance=variance,
                                  variance_floor=min(1e-6, variance / 2))
        proj.raw_variance.requires_grad_(False)
        proj.attach(self.noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.noise(x))


def with_input_noise(model: nn.Module, sigma: float, input_shape: tuple[int, ...]
                     ) -> InputNoiseModel:
    """Wrap a model without projections so that `certify` smooths it with N(0, sigma^2 I) at
    its input (randomized smoothing of a plain or an rs-trained model).

    Args:
        model: a classifier without DIPNet projections.
        sigma: the noise standard deviation, in the units of the model input, > 0.
        input_shape: the shape of one example (the features are on its first axis).
    Returns:
        an `InputNoiseModel` around ``model`` (the model itself is not changed).
    Raises:
        CertifyError: sigma not a finite number > 0, an empty input shape, or a model that
            already holds projections.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise CertifyError(f"with_input_noise: sigma must be a finite number > 0, got {sigma!r}.")
    if not input_shape:
        raise CertifyError("with_input_noise: input_shape must name at least one axis.")
    if projections(model):
        raise CertifyError("with_input_noise: the model already holds DIPNet projections; "
                           "certify it as it is.")
    return InputNoiseModel(model, float(sigma), int(input_shape[0]))
