"""The hand-written FGSM / PGD (dipnet.evaluation.attacks) against the Adversarial Robustness
Toolbox's FastGradientMethod / ProjectedGradientDescent on the same trained models.

Both attack the deterministic prediction of the small digits MLPs of test_evaluation_support
(a standard one and a DIPNet one, projections off), with the same budget, the same number of
steps and step size, and no random start, on all 1,797 digits images (1 % = 18 images, so the
tolerance of one example per hundred is not a demand for bit equality on a handful of points).

Measured when this test was written (robust accuracy, ours vs ART, over the 1,797 images):
FGSM agrees exactly (0 images differ, every norm and eps); PGD differs by at most 2 images
(0.11 %): ours keeps the first misclassified iterate while ART returns the last one, and the
L2 step / projection differ in their division guards (ART adds 1e-8 to the norm). The
tolerance, 1 %, is the issue's requirement and 9x the largest measured difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dipnet.evaluation.attacks import run_attack
from dipnet.evaluation.predictors import model_predictors
from test_evaluation_support import digits_split, dipnet_mlp, standard_mlp

art_cls = pytest.importorskip("art.estimators.classification")
art_evasion = pytest.importorskip("art.attacks.evasion")

TOL = 0.01  # one test example per hundred (the bound); measured max 0.0011
STEPS = 20


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    xtr, ytr, xte, yte = digits_split()
    return torch.cat([xtr, xte]), torch.cat([ytr, yte])


def _classifier(model: torch.nn.Module):
    return art_cls.PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,),
                                     nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def _art_correct(model: torch.nn.Module, adv: np.ndarray, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(adv)).argmax(-1) == y


# eps chosen where the robust accuracy is between 5 % and 95 % for both models, so that a
# broken attack (no step, wrong sign, wrong projection) moves it by far more than 1 %.
@pytest.mark.parametrize("model_name", ["standard", "dipnet"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_fgsm_and_pgd_agree_with_art(data, model_name, norm, eps):
    torch.set_num_threads(1)
    x, y = data
    model = standard_mlp() if model_name == "standard" else dipnet_mlp()
    (det, *_) = model_predictors(model)
    clf = _classifier(model)
    art_norm = np.inf if norm == "linf" else 2
    xn, yn = x.numpy(), y.numpy()

    ours = run_attack(det, x, y, "fgsm", norm, eps, bounds=(0.0, 1.0))
    adv = art_evasion.FastGradientMethod(clf, norm=art_norm, eps=eps, batch_size=2000).generate(xn, yn)
    theirs = _art_correct(model, adv, y)
    clean = (model(x).argmax(-1) == y).float().mean().item()
    assert 0.05 < theirs.float().mean().item() < clean - 0.1  # the attack matters here
    assert abs(ours.float().mean().item() - theirs.float().mean().item()) <= TOL
    assert (ours != theirs).float().mean().item() <= TOL  # and on the same examples

    step = 2.5 * eps / STEPS
    ours = run_attack(det, x, y, "pgd", norm, eps, steps=STEPS, step_size=step,
                      random_start=False, bounds=(0.0, 1.0))
    adv = art_evasion.ProjectedGradientDescent(
        clf, norm=art_norm, eps=eps, eps_step=step, max_iter=STEPS, num_random_init=0,
        batch_size=2000, verbose=False).generate(xn, yn)
    theirs = _art_correct(model, adv, y)
    assert 0.05 < theirs.float().mean().item() < clean - 0.1
    assert abs(ours.float().mean().item() - theirs.float().mean().item()) <= TOL
    assert (ours != theirs).float().mean().item() <= TOL
