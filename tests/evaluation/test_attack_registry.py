"""The attack registry (`dipnet.evaluation.settings.ATTACKS`) is the one list of attacks: the
CLI's choices, the suite's families, the attack modules' names and the report's titles all
come from it (issue 21: the strong attacks' names were written twice, their titles a third time)."""

from __future__ import annotations

import pytest

from dipnet.evaluation import attacks, settings, strong_attacks
from dipnet.experiments.report import eval_tables


def test_every_list_of_attacks_is_read_from_the_registry() -> None:
    assert settings.ATTACK_NAMES == ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square")
    assert attacks.ATTACKS == settings.GRADIENT_ATTACKS == ("fgsm", "pgd")
    assert strong_attacks.STRONG_ATTACKS is settings.STRONG_ATTACKS
    assert set(settings.GRADIENT_ATTACKS) | set(settings.STRONG_ATTACKS) == set(settings.ATTACKS)
    assert eval_tables._ATTACK_TITLES == {n: a.title for n, a in settings.ATTACKS.items()}
    # every registered attack has a report panel per norm
    assert {a for a, _, _ in eval_tables._ATTACK_PANELS} == set(settings.ATTACKS)
    assert [a for a, info in settings.ATTACKS.items() if info.needs_images] == ["square"]


def test_a_bad_registration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "ATTACKS", dict(settings.ATTACKS))
    with pytest.raises(ValueError, match="registered already"):
        settings._register_attack("pgd", "PGD again", "gradient")
    with pytest.raises(ValueError, match="family"):
        settings._register_attack("cw", "C&W", "optimisation")
    settings._register_attack("cw", "C&W", "strong")
    assert settings.ATTACKS["cw"] == settings.AttackInfo("cw", "C&W", "strong", False)


def test_the_suite_settings_accept_exactly_the_registered_attacks() -> None:
    assert settings.get_settings("quick", attacks=("pgd", "square")).attacks == ("pgd", "square")
    with pytest.raises(Exception, match="cw"):
        settings.get_settings("quick", attacks=("pgd", "cw"))
