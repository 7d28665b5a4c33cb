"""`leaky auth grant-role|revoke-role` against a temporary SQLite auth database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from leaky_tokens.auth.domain.model import USER, User
from leaky_tokens.cli import main
from tests.conftest import fresh_store


async def _make_database(path: Path) -> None:
    store = await fresh_store(f"sqlite+aiosqlite:///{path}")
    user = User(
        "0b8a4c3e-0000-4000-8000-000000000001", "alice", "a@example.com", "x", datetime.now(UTC)
    )
    await store.add_user(user, [USER])
    await store.close()


async def _roles(path: Path, username: str) -> frozenset[str]:
    store = await fresh_store(
        f"sqlite+aiosqlite:///{path}"
    )  # migrating an up-to-date DB is a no-op
    user = await store.get_user_by_username(username)
    await store.close()
    assert user is not None
    return user.roles


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory with no auth settings in the environment."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("LEAKY_AUTH_DATABASE_URL", "LEAKY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return cwd


@pytest.fixture
def data_dir(tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory holding a migrated auth.db with the user alice, via LEAKY_DATA_DIR."""
    path = tmp_path / "data"
    path.mkdir()
    asyncio.run(_make_database(path / "auth.db"))
    monkeypatch.setenv("LEAKY_DATA_DIR", str(path))
    return path


def test_grant_then_revoke_changes_the_roles_and_says_which_database(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = data_dir / "auth.db"
    assert main(["auth", "grant-role", "--username", "ALICE"]) == 0
    out, err = capsys.readouterr()
    assert f"auth database: SQLite file {db}" in out
    assert "alice (0b8a4c3e-0000-4000-8000-000000000001) now has roles: ADMIN, USER" in out
    audit = json.loads(err.strip().splitlines()[-1])
    assert (audit["event"], audit["role"], audit["actor"]) == ("role.granted", "ADMIN", "operator")
    assert asyncio.run(_roles(db, "alice")) == {"ADMIN", "USER"}

    assert main(["auth", "revoke-role", "--username", "alice", "--role", "ADMIN"]) == 0
    out, err = capsys.readouterr()
    assert "now has roles: USER" in out
    assert json.loads(err.strip().splitlines()[-1])["event"] == "role.revoked"
    assert asyncio.run(_roles(db, "alice")) == {"USER"}


def test_revoking_a_role_the_user_lacks_or_an_unknown_user_fails(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["auth", "revoke-role", "--username", "alice", "--role", "ADMIN"]) == 1
    assert "alice does not have role ADMIN" in capsys.readouterr().err
    assert main(["auth", "grant-role", "--username", "bob"]) == 1
    assert "user 'bob' not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["grant-role", "revoke-role"])
def test_a_missing_database_is_refused_and_not_created(
    elsewhere: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["auth", command, "--username", "alice"]) == 1
    out, err = capsys.readouterr()
    expected = elsewhere / "data" / "auth.db"
    assert f"auth database: SQLite file {expected}" in out
    assert f"no auth database at SQLite file {expected}" in err
    assert "LEAKY_AUTH_DATABASE_URL" in err
    assert "LEAKY_DATA_DIR" in err
    assert list(elsewhere.iterdir()) == []  # neither ./data nor a database file appeared


def test_a_missing_database_url_target_is_refused_and_not_created(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = elsewhere / "nowhere" / "auth.db"
    monkeypatch.setenv("LEAKY_AUTH_DATABASE_URL", f"sqlite+aiosqlite:///{target}")
    assert main(["auth", "grant-role", "--username", "alice"]) == 1
    assert f"no auth database at SQLite file {target}" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_a_database_without_the_auth_schema_is_refused(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = elsewhere / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER)")
    conn.close()
    monkeypatch.setenv("LEAKY_AUTH_DATABASE_URL", f"sqlite+aiosqlite:///{other}")
    assert main(["auth", "grant-role", "--username", "alice"]) == 1
    err = capsys.readouterr().err
    assert f"SQLite file {other} has no auth schema" in err
    with sqlite3.connect(other) as conn:  # and it was left as it was
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"notes"}


def test_the_default_database_follows_the_path_settings(tmp_path: Path) -> None:
    from leaky_tokens.auth.bootstrap import AuthSettings
    from leaky_tokens.auth.cli import database_url
    from leaky_tokens.runtime.paths import PathSettings

    url = database_url(AuthSettings(), PathSettings(data_dir=tmp_path / "state"))
    assert url == f"sqlite+aiosqlite:///{(tmp_path / 'state').resolve() / 'auth.db'}"
    assert database_url(AuthSettings(database_url="sqlite+aiosqlite:///x.db")) == (
        "sqlite+aiosqlite:///x.db"
    )
