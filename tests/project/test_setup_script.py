"""scripts/setup.sh installs what the default test suite needs to run every test here."""

from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"


def test_setup_installs_the_browser_that_renders_the_report():
    text = SETUP.read_text()
    # Debian's chromium, guarded like the Fashion-MNIST package: only when no browser is there,
    # a warning (not a failure) when apt-get cannot.
    assert "apt-get install -y -qq chromium" in text
    assert "! command -v chromium" in text
    assert "could not install chromium" in text
