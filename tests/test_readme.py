"""README is the user's contract: it opens with the two commands and documents every setting and metric."""

from __future__ import annotations

from pathlib import Path

from monitor.config import Settings
from tests.metric_contract import daemon_registry, exported_families

README = (Path(__file__).parent.parent / "README.md").read_text()
CI_RUN = (Path(__file__).parent.parent / ".ci" / "run").read_text()


def test_readme_opens_with_the_demo_and_the_test_command_that_ci_runs() -> None:
    """The first code block holds `make demo` and `make test`, and .ci/run calls that same test command."""
    first_block = README.split("```")[1]
    assert "make demo" in first_block
    assert "make test" in first_block
    assert "make test" in CI_RUN


def test_every_setting_is_documented() -> None:
    """Each environment variable the daemon reads appears in README (`*_FILE` variants by the general rule)."""
    assert "<NAME>_FILE" in README
    names = [name.upper() for name in Settings.model_fields if name not in {"alerts", "routes"}]
    missing = [n for n in names if n not in README and not (n.endswith("_FILE") and n.removesuffix("_FILE") in README)]
    assert missing == []


def test_every_metric_family_is_documented() -> None:
    """Each family the daemon exports has a row in README's metric table."""
    families = exported_families(daemon_registry())
    missing = [name for name in families if f"`{name}`" not in README and name not in README]
    assert missing == []
