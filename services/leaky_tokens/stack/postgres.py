"""PostgreSQL from Debian's postgresql package: a throwaway cluster run as the postgres user."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

from leaky_tokens.stack.component import HOST, Component, ComponentError, Launch, StackPaths
from leaky_tokens.stack.debian import ensure_packages

DATABASES = ("leaky_auth", "leaky_token")


def pg_bin() -> Path:
    """Directory of the newest installed PostgreSQL server binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ComponentError("postgres: server binaries not found (apt-get install postgresql)")
    return Path(found[-1]).parent


class Postgres(Component):
    """One cluster, trust auth on loopback only, durability traded for speed (test data)."""

    name = "postgres"
    startup_timeout = 30.0
    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients to disconnect
    user = "postgres"

    def __init__(self, port: int = 5432) -> None:
        self.port = port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of one database."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def _dirs(self, paths: StackPaths) -> tuple[Path, Path]:
        root = paths.data(self.name)
        return root / "data", root / "sock"

    def _owned(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, self.user, self.user)

    def provision(self, paths: StackPaths) -> None:
        if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            ensure_packages({"/usr/lib/postgresql": "postgresql"})

    def prepare(self, paths: StackPaths) -> None:
        data, sock = self._dirs(paths)
        self._owned(data.parent)
        self._owned(sock)
        if (data / "PG_VERSION").exists():
            return
        self._owned(data)
        result = subprocess.run(
            [
                str(pg_bin() / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            text=True,
            user=self.user if os.geteuid() == 0 else None,
        )
        if result.returncode != 0:
            raise ComponentError(f"postgres: initdb failed: {result.stderr.strip()[-500:]}")

    def launch(self, paths: StackPaths) -> Launch:
        data, sock = self._dirs(paths)
        return Launch(
            [
                str(pg_bin() / "postgres"),
                "-D",
                str(data),
                "-k",
                str(sock),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            user=self.user,
        )

    def _psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(pg_bin() / "psql"),
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )

    def ready(self, paths: StackPaths) -> bool:
        try:
            return self._psql("SELECT 1").stdout.strip() == "1"
        except (OSError, subprocess.TimeoutExpired):
            return False

    def after_ready(self, paths: StackPaths) -> None:
        for database in DATABASES:
            # DATABASES are constants of this module, never user input.
            exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")  # noqa: S608
            if exists.stdout.strip() != "1":
                created = self._psql(f"CREATE DATABASE {database}")
                if created.returncode != 0:
                    raise ComponentError(f"postgres: {created.stderr.strip()}")
