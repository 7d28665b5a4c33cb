"""The stack's apt-get step: silent when nothing is missing, clear when it cannot install."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from leaky_tokens.stack import debian
from leaky_tokens.stack.component import ComponentError


def _machine(
    monkeypatch: pytest.MonkeyPatch, *, present: set[str], root: bool, apt: bool = True
) -> list[list[str]]:
    """Pretend the machine has `present` commands; record apt-get calls instead of running."""
    runs: list[list[str]] = []
    on_path = present | ({"apt-get"} if apt else set())
    monkeypatch.setattr(debian, "_present", lambda cmd: cmd in on_path)
    monkeypatch.setattr("leaky_tokens.stack.debian.os.geteuid", lambda: 0 if root else 1000)

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        runs.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("leaky_tokens.stack.debian.subprocess.run", run)
    return runs


def test_nothing_runs_when_every_command_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _machine(monkeypatch, present={"redis-server"}, root=False)
    debian.ensure_packages({"redis-server": "redis-server"})
    assert runs == []


def test_root_installs_only_what_is_missing_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _machine(monkeypatch, present={"mvn"}, root=True)
    debian.ensure_packages({"redis-server": "redis-server", "mvn": "maven"})
    assert runs == [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "redis-server"],
    ]
    said = capsys.readouterr().err
    assert "redis-server (for redis-server)" in said
    assert "native stack" in said
    assert "maven" not in said


def test_without_root_it_fails_with_the_command_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _machine(monkeypatch, present=set(), root=False)
    with pytest.raises(ComponentError, match=r"needs root.*sudo apt-get install -y postgresql"):
        debian.ensure_packages({"/usr/lib/postgresql": "postgresql"})
    assert runs == []


def test_without_apt_it_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _machine(monkeypatch, present=set(), root=True, apt=False)
    with pytest.raises(ComponentError, match=r"no apt-get: install maven redis-server"):
        debian.ensure_packages({"mvn": "maven", "redis-server": "redis-server"})
    assert runs == []


def test_a_failing_apt_get_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, present=set(), root=True)

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package nope")

    monkeypatch.setattr("leaky_tokens.stack.debian.subprocess.run", run)
    with pytest.raises(ComponentError, match="apt-get update -qq failed: E: Unable to locate"):
        debian.ensure_packages({"nope": "nope"})
