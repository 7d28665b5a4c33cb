"""`leaky auth grant-role` refuses a PostgreSQL database that has no auth schema."""

from __future__ import annotations

import psycopg
import pytest

from leaky_tokens.cli import main
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.postgres import Postgres
from tests.support.stack import component

pytestmark = pytest.mark.integration


def test_a_postgres_database_without_the_auth_schema_is_refused_and_left_alone(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    postgres = component(stack, "postgres")
    assert isinstance(postgres, Postgres)
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS leaky_test_auth_cli_empty WITH (FORCE)")
        conn.execute("CREATE DATABASE leaky_test_auth_cli_empty")
    url = postgres.url("leaky_test_auth_cli_empty")
    monkeypatch.setenv("LEAKY_AUTH_DATABASE_URL", url)
    assert main(["auth", "grant-role", "--username", "alice"]) == 1
    out, err = capsys.readouterr()
    assert "auth database: postgresql" in out
    assert "leaky_test_auth_cli_empty has no auth schema" in err
    assert "LEAKY_AUTH_DATABASE_URL" in err
    empty = dsn.replace("dbname=postgres", "dbname=leaky_test_auth_cli_empty")
    with psycopg.connect(empty) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
