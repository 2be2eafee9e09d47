"""The Hugging Face experiments' parts: e-mail parsing, character noise, calibration, PGD on
embeddings, answer extraction, the answer-only collator, problem generation, the CLI."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

import dipnet  # noqa: E402
from dipnet.experiments.hf import math as hmath  # noqa: E402
from dipnet.experiments.hf import text  # noqa: E402
from dipnet.experiments.hf.tokenizers import char_tokenizer  # noqa: E402

torch.set_num_threads(1)


def test_email_text_keeps_subject_and_body_only():
    raw = ("From: a@b.c\nReceived: from x by y\nSubject: Cheap   pills\nX-Spam: yes\n\n"
           "Buy\n now!\n")
    assert text.email_text(raw) == "Cheap pills Buy now!"


def test_char_noise_rate_zero_is_identity_and_seeded():
    s = "the quick brown fox jumps over the lazy dog" * 3
    assert text.char_noise(s, 0.0, random.Random(0)) == s
    a = text.char_noise(s, 0.2, random.Random("k"))
    assert a == text.char_noise(s, 0.2, random.Random("k")) and a != s
    # Edits are local: at rate 0.2 most characters survive in order.


    assert 0.7 * len(s) < len(a) < 1.3 * len(s)


def test_calibration_metrics_on_known_values():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    m = text.calibration(probs, labels, bins=10)
    assert m["acc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    assert m["brier"] == pytest.approx(np.mean([0.02, 0.08, 0.72, 0.18]))
    # Bins: 0.9 (right), 0.8 (right), 0.6 (wrong), 0.7 (right): |1-.9|+|1-.8|+|0-.6|+|1-.7| over 4.
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.3) / 4)


def _tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=50, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=2)).eval()


def test_pgd_embedding_attack_zero_budget_is_clean_and_attack_hurts():
    model = _tiny_bert()
    g = torch.Generator().manual_seed(0)
    enc = {"input_ids": torch.randint(3, 50, (16, 12), generator=g),
           "attention_mask": torch.ones(16, 12, dtype=torch.long)}
    with torch.no_grad():
        clean_pred = model(**enc).logits.argmax(-1)
    y = clean_pred.clone()  # every example starts correct
    zero = text.pgd_embedding_attack(model, enc, y, "l2", torch.zeros(16), steps=3)
    assert zero.all()
    big = text.pgd_embedding_attack(model, enc, y, "linf", torch.tensor(2.0), steps=5)
    assert big.float().mean() < 0.5
    # The hook is gone afterwards: the model is unchanged.
    with torch.no_grad():
        assert torch.equal(model(**enc).logits.argmax(-1), clean_pred)


def test_pgd_eot_on_projected_model_runs_and_restores_mode():
    model = _tiny_bert()
    dipnet.project(model, dipnet.DIPConfig(placement="blocks", init_variance=0.5))
    enc = {"input_ids": torch.randint(3, 50, (4, 8)),
           "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    y = torch.zeros(4, dtype=torch.long)
    out = text.pgd_embedding_attack(model, enc, y, "l2", torch.full((4,), 0.5), steps=2,
                                    eot_k=3, eval_k=3)
    assert out.shape == (4,) and out.dtype == torch.bool
    assert all(p.mode == "auto" for p in dipnet.projections(model).values())


def test_split_is_disjoint_and_fixed_by_seed():
    s = text.TextSettings(train_size=50, val_size=20, test_size=30)
    a, b = text.split(200, s), text.split(200, s)
    assert a == b
    assert not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])
    from dipnet.errors import UserError

    with pytest.raises(UserError, match="lower the sizes"):
        text.split(90, s)


def test_load_spam_missing_folder_is_a_clear_error(tmp_path):
    from dipnet.errors import UserError

    with pytest.raises(UserError, match="setup.sh"):
        text.load_spam(str(tmp_path))


@pytest.mark.parametrize("out,expected", [
    (" The answer is 42.", ("42", True)),
    (" the answer is -1,234.\nQuestion", ("-1234", True)),
    (" 17 apples", ("17", False)),
    (" no idea", (None, False)),
])
def test_extract_answer(out, expected):
    assert hmath.extract_answer(out) == expected


def test_is_correct_is_exact_numeric():
    assert hmath.is_correct("42", "42") and hmath.is_correct("42.0", "42")
    assert not hmath.is_correct("41", "42") and not hmath.is_correct(None, "42")


def test_answer_collator_labels_only_the_target():
    tok = char_tokenizer()
    tok.padding_side = "left"
    items = [{"question": "1 + 2 =", "answer": "3"}, {"question": "10 + 20 =", "answer": "30"}]
    b = hmath.AnswerCollator(tok)(items)
    keep = b["logits_to_keep"]
    assert b["labels"].shape == (2, keep)
    for r, x in enumerate(items):
        lab = b["labels"][r]
        tgt = tok.decode(lab[lab != -100])
        assert tgt == hmath.target(x["answer"]) + tok.eos_token
        # The window's first position is the last prompt token: it predicts the target's start.
        assert lab[0] == -100
    # Left padding: the last position is real in every row; positions count real tokens only.
    assert (b["attention_mask"][:, -1] == 1).all()
    assert b["position_ids"][1, -1] == b["attention_mask"][1].sum() - 1


def test_answer_collator_loss_equals_full_logits_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16,
                                         intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=0)).eval()
    items = [{"question": "1 + 2 =", "answer": "3"}, {"question": "10 + 20 =", "answer": "-30"}]
    b = hmath.AnswerCollator(tok)(items)
    with torch.no_grad():
        cut = model(**b).loss
        full_labels = torch.full_like(b["input_ids"], -100)
        full_labels[:, -b["labels"].shape[1]:] = b["labels"]
        full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     position_ids=b["position_ids"], labels=full_labels).loss
    torch.testing.assert_close(cut, full)


def test_make_problems_are_held_out():
    pytest.importorskip("reasoning_gym")
    s = hmath.MathSettings(train_size=40, test_size=20)
    train, test = hmath.make_problems(s)
    assert len(train) == 40 and len(test) == 20
    assert not {x["question"] for x in train} & {x["question"] for x in test}
    assert {x["task"] for x in test} == set(s.tasks)


def test_cli_help_lists_every_option(capsys):
    from dipnet.cli import build_parser

    parser = build_parser()
    for cmd, cls in (("text-classify", text.TextSettings), ("math", hmath.MathSettings)):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        out = capsys.readouterr().out
        import dataclasses

        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in out


@pytest.mark.slow
def test_math_cli_end_to_end_tiny_model(tmp_path):
    """The whole math pipeline on the random tiny Llama (plumbing, not accuracy); resumable."""
    from dipnet.cli import main

    args = ["math", "--model", "tiny", "--train-size", "8", "--test-size", "4", "--seeds", "1",
            "--eval-batch-size", "4", "--max-new-tokens", "4", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    runs = sorted(p.name for p in (tmp_path / "per_run").iterdir())
    assert runs == ["base.json", "dipnet@blocks_seed0.json", "fixed_noise@blocks_seed0.json",
                    "rs_seed0.json", "sam_seed0.json", "standard_seed0.json"]
    mtime = (tmp_path / "per_run" / "standard_seed0.json").stat().st_mtime
    assert main(args) == 0  # second call: nothing left to run
    assert (tmp_path / "per_run" / "standard_seed0.json").stat().st_mtime == mtime
    assert (tmp_path / "results.png").is_file() and (tmp_path / "results.md").is_file()


# ---------------------------------------------------------------------- arms under today's recipe
def test_projected_methods_run_once_per_placement():
    from dipnet.experiments.hf.common import expand_arms

    arms = expand_arms(["standard", "dipnet", "fixed_noise", "rs"], ["blocks", "layers"],
                       text.METHODS)
    assert arms == ["standard", "dipnet@blocks", "dipnet@layers", "fixed_noise@blocks",
                    "fixed_noise@layers", "rs"]
    # An explicit placement is kept as written, and a duplicate arm runs once.
    assert expand_arms(["dipnet@layers", "dipnet"], ["layers"], text.METHODS) == ["dipnet@layers"]


@pytest.mark.parametrize("methods, placements, fragment", [
    (["nosuch"], ["blocks"], "unknown method 'nosuch'"),
    (["rs@blocks"], ["blocks"], "only dipnet and fixed_noise take a placement"),
    (["dipnet@nowhere"], ["blocks"], "unknown placement 'nowhere'"),
    (["dipnet"], ["nowhere"], "unknown DIPNet placement 'nowhere'"),
    (["dipnet"], [], "--dip-placement is empty"),
])
def test_bad_arms_are_one_clear_error(methods, placements, fragment):
    from dipnet.errors import UserError
    from dipnet.experiments.hf.common import expand_arms

    with pytest.raises(UserError, match=fragment):
        expand_arms(methods, placements, text.METHODS)


def test_dip_config_is_todays_recipe_learned_or_frozen():
    from dipnet.experiments.hf.common import dip_config

    s = text.TextSettings(dip_init_scale=0.2, dip_variance_lr=0.05)
    learned, frozen = dip_config("dipnet@layers", s), dip_config("fixed_noise@layers", s)
    assert (learned.placement, learned.init_scale, learned.init_variance) == ("layers", 0.2, None)
    assert learned.parameterization == "exp" and learned.variance_lr == 0.05
    assert learned.learn_variance and not frozen.learn_variance
    # The frozen arm is the learned one with learning switched off, nothing else.
    assert {**frozen.to_dict(), "learn_variance": True} == learned.to_dict()


def _fit_tiny(arm, steps=6):
    """Train the tiny BERT as ``arm`` for a few steps; returns (start, end) variances."""
    from transformers import TrainingArguments

    from dipnet.experiments.hf.common import dip_trainer

    model = _tiny_bert().train()
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 50, (12,), generator=g),
             "attention_mask": torch.ones(12, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(16)]
    s = text.TextSettings(dip_init_scale=0.1, dip_variance_lr=0.5)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=8, max_steps=steps,
                                 learning_rate=1e-3, save_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True, seed=0)
        trainer = dip_trainer(arm, s, len(data), model=model, args=args,
                              train_dataset=data)
        start = {}

        def remember(*_):  # after the first batch's calibration, before any optimizer step
            if not start and all(p.calibrated for p in dipnet.projections(model).values()):
                start.update({k: v.detach().clone() for k, v in dipnet.variances(model).items()})

        handle = model.register_forward_pre_hook(remember)
        trainer.train()
        handle.remove()
    return start, {k: v.detach().clone() for k, v in dipnet.variances(model).items()}


@pytest.mark.parametrize("arm", ["dipnet@blocks", "fixed_noise@blocks"])
def test_learned_arm_moves_its_variances_and_the_frozen_arm_keeps_them(arm):
    start, end = _fit_tiny(arm)
    moved = max(float((end[k] - start[k]).abs().max()) for k in start)
    # Calibrated to the inputs: not the 0.01 placeholder every projection is created with.
    assert all(not torch.allclose(v, torch.full_like(v, 0.01)) for v in start.values())
    if arm.startswith("fixed_noise"):
        assert moved == 0.0
    else:  # 6 steps at variance lr 0.5 move a log-variance by far more than round-off
        assert moved > 1e-3


def test_headline_tests_holm_over_vs_standard_and_learned_vs_frozen():
    from dipnet.experiments.report.stats import holm, paired_by_seed
    from dipnet.experiments.hf.common import headline_tests

    vals = {"standard": {0: 0.90, 1: 0.92, 2: 0.91},
            "dipnet@blocks": {0: 0.93, 1: 0.94, 2: 0.95},
            "fixed_noise@blocks": {0: 0.91, 1: 0.925, 2: 0.92},
            "rs": {0: 0.89, 1: 0.93, 2: 0.90}}
    tests = headline_tests(vals)
    assert [(t["a"], t["b"]) for t in tests] == [
        ("dipnet@blocks", "standard"), ("fixed_noise@blocks", "standard"), ("rs", "standard"),
        ("dipnet@blocks", "fixed_noise@blocks")]
    raw = [paired_by_seed(vals[t["a"]], vals[t["b"]]).t_p for t in tests]
    assert [t["t_p"] for t in tests] == pytest.approx(raw)
    assert [t["p_holm"] for t in tests] == pytest.approx(holm(raw))
    assert all(t["p_holm"] >= t["t_p"] for t in tests)


def test_training_texts_perturb_only_when_asked_and_repeatably():
    texts = ["hello there, buy cheap pills now " * 4, "meeting at noon tomorrow " * 4]
    assert text.training_texts(texts, [1, 0], 0, 0.0) == [texts[1], texts[0]]
    a = text.training_texts(texts, [0, 1], 3, 0.2)
    assert a == text.training_texts(texts, [0, 1], 3, 0.2)
    assert a != [texts[0], texts[1]] and a != text.training_texts(texts, [0, 1], 4, 0.2)


def _fake_text_run(arm, seed, acc):
    det = {"acc": acc, "ece": 0.05, "nll": 0.2, "brier": 0.1}
    return {"method": arm, "seed": seed, "train_steps": 10, "train_time_s": 1.0, "det": det,
            "char_noise": {"0.05": acc - 0.01}, "pgd_l2_acc": 0.5, "pgd_linf_acc": 0.4,
            "attack_n": 16, "split": {"train": 10, "val": 5, "test": 100},
            "test_spam_fraction": 0.4, "settings": dataclasses.asdict(text.TextSettings())}


def test_text_report_shows_holm_beside_raw_p(tmp_path):
    accs = {"standard": [0.90, 0.92, 0.91], "dipnet@layers": [0.93, 0.94, 0.96],
            "fixed_noise@layers": [0.91, 0.93, 0.92]}
    for arm, values in accs.items():
        for seed, acc in enumerate(values):
            text.write_json(str(tmp_path / "per_run" / f"{arm}_seed{seed}.json"),
                            _fake_text_run(arm, seed, acc))
    text.write_report(str(tmp_path))
    import json

    res = json.loads((tmp_path / "results.json").read_text())
    pairs = [(t["a"], t["b"]) for t in res["headline"]]
    assert ("dipnet@layers", "fixed_noise@layers") in pairs and len(pairs) == 3
    md = (tmp_path / "results.md").read_text()
    assert "| dipnet@layers - fixed_noise@layers | +2.33 |" in md and "p (Holm)" in md
    assert "init_scale 0.1" in md


def test_math_power_and_gpu_command():
    from dipnet.cli import build_parser
    from dipnet.experiments.report.stats import detectable_difference, required_items

    power = hmath.test_size_power(0.3, 50)
    assert power["detectable"] == pytest.approx(detectable_difference(0.3, 50))
    assert power["items_for_target"] == required_items(0.3, 0.03)
    assert hmath.test_size_power(0.0, 50) is None and hmath.test_size_power(None, 50) is None
    s0 = dataclasses.asdict(hmath.MathSettings(dip_placement=["blocks", "layers"]))
    cmd = hmath.gpu_command(s0, power["items_for_target"])
    assert cmd.startswith("dipnet math ") and "--device cuda" in cmd
    args = build_parser().parse_args(cmd.split()[1:])  # the command parses as written
    assert args.test_size == power["items_for_target"] and args.dip_placement == ["blocks", "layers"]
    assert args.methods == list(hmath.METHODS)


def _fake_math_run(arm, seed, acc, n=40):
    settings = dataclasses.asdict(hmath.MathSettings(test_size=n))
    if arm == "base":
        return {"method": "base", "seed": None, "eval_time_s": 8.0, "n_train": 48, "n_test": n,
                "eval": {"acc": acc, "format_rate": 0.0, "n": n, "gen_s_per_problem": 0.2},
                "settings": settings}
    return {"method": arm, "seed": seed, "train_steps": 12, "train_time_s": 10.0,
            "eval_time_s": 8.0, "n_train": 48, "n_test": n, "settings": settings,
            "eval": {"acc": acc, "format_rate": 1.0, "n": n, "gen_s_per_problem": 0.2}}


@pytest.mark.parametrize("standard_acc, has_power", [(0.3, True), (0.0, False)])
def test_math_report_states_what_the_test_set_detects(tmp_path, standard_acc, has_power):
    import json

    runs = {"base": [0.1], "standard": [standard_acc] * 2, "dipnet@blocks": [0.35, 0.325],
            "fixed_noise@blocks": [0.3, 0.275]}
    for arm, values in runs.items():
        for seed, acc in enumerate(values):
            name = "base" if arm == "base" else f"{arm}_seed{seed}"
            hmath.write_json(str(tmp_path / "per_run" / f"{name}.json"),
                             _fake_math_run(arm, seed, acc))
    hmath.write_report(str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "results.md").read_text()
    assert "| dipnet@blocks - fixed_noise@blocks | +5.00 |" in md
    assert res["summary"]["dipnet@blocks"]["gen_s_per_problem"]["mean"] == pytest.approx(0.2)
    if has_power:
        assert res["power"]["items_for_target"] == hmath.required_items(0.3, 0.03)
        assert res["power"]["gpu_command"] in md and "--device cuda" in md
    else:  # no spread at 0 % accuracy: no power statement, never a crash
        assert res["power"] is None and "What this test set can detect" not in md
