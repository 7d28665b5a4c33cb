"""docs/configuration.md is `leaky settings` verbatim, and every setting has a doc line."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from leaky_tokens import cli
from leaky_tokens.runtime import settings
from leaky_tokens.stack.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]


def generated_table() -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["settings"]) == 0
    return out.getvalue()


def test_configuration_doc_is_the_whole_generated_table() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    table = documented[documented.index("| variable |") :]
    assert table == generated_table(), "regenerate docs/configuration.md: make docs"


def test_every_setting_is_documented_and_lists_discovery_paths_and_stack() -> None:
    rows = [line.split(" | ") for line in generated_table().splitlines()[2:]]
    undocumented = [row[0] for row in rows if not row[2].strip(" |")]
    assert undocumented == []
    names = {row[0].strip("|` ") for row in rows}
    for name in ("LEAKY_DISCOVERY_SERVICES", "LEAKY_DATA_DIR", "LEAKY_STACK_DIR"):
        assert name in names
    assert {"LEAKY_CACHE_DIR", "LEAKY_STACK_KAFKA_CONTROLLER_PORT"} <= names


def test_stack_settings_keep_their_variable_names() -> None:
    loaded = settings.load(
        StackSettings,
        "LEAKY_STACK",
        {
            "LEAKY_STACK_DIR": "/tmp/s",
            "LEAKY_CACHE_DIR": "/tmp/c",
            "LEAKY_STACK_CONSUL_DNS_PORT": "18600",
        },
    )
    assert loaded.root() == Path("/tmp/s")
    assert loaded.cache() == Path("/tmp/c")
    assert loaded.consul_dns_port == 18600
