"""The README documents every setting and the quickstart that CI relies on."""

from __future__ import annotations

import re
from pathlib import Path

from enginehost.core.settings import ENV_PREFIX, Settings
from enginehost.plugins.sandbox.config import SandboxConfig

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        variable = f"{ENV_PREFIX}{name.upper()}"
        if name == "engines":
            variable = f"{ENV_PREFIX}ENGINES__<NAME>__<KEY>"
        assert f"| `{variable}` |" in README, f"{variable} missing from README's configuration"


def test_every_sandbox_key_is_documented() -> None:
    for key in SandboxConfig.model_fields:
        assert re.search(rf"`{key.upper()}`", README), f"sandbox key {key} missing from README"


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
