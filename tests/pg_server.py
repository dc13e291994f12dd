"""A throwaway PostgreSQL server for the tests and benchmarks: `initdb` + `pg_ctl` in a temp folder.

It listens only on 127.0.0.1 (a free port) and on a unix socket inside its own folder, with
password authentication for TCP. PostgreSQL refuses to run as root, so as root the server runs
as the `postgres` account (Debian's package creates it) or `nobody`, owning its folder.
`make test` installs Debian's `postgresql` package (Makefile target `postgres`).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "modalign"
# Set by `make test`: a machine meant to run the Postgres tests fails them instead of skipping.
REQUIRE_ENV = "MODALIGN_REQUIRE_POSTGRES"


class PostgresUnavailable(RuntimeError):
    """No server could be started here; the message says why."""


@dataclass
class PostgresServer:
    folder: Path  # data folder, log and unix socket
    port: int
    password: str
    run_as: list[str]  # command prefix: [] or ["runuser", "-u", account, "--"]
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.folder / "data"),
                        "-m", "fast", "-w"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def find_bindir() -> Path | None:
    """The newest PostgreSQL's bin folder: Debian's /usr/lib/postgresql/N/bin, else initdb on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def start_postgres(durable: bool = False) -> PostgresServer:
    """Start a server in a new temp folder; `durable=False` turns fsync off (tests: the server is never
    killed, only the app in front of it). Raises `PostgresUnavailable` naming the reason."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("no initdb found (install Debian's postgresql package: make postgres)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (pip install -e '.[dev]')") from None
    run_as, owner = _unprivileged()
    # not under pytest's tmp_path: its parents are private to root, and the server runs as another account
    folder = Path(tempfile.mkdtemp(prefix="modalign-pg-"))
    password = secrets.token_urlsafe(16)
    (folder / "pw").write_text(password)
    if owner is not None:
        shutil.chown(folder, *owner)
        shutil.chown(folder / "pw", *owner)
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", USER,
                           f"--pwfile={folder / 'pw'}", "--auth-host=scram-sha-256", "--auth-local=trust",
                           "-E", "UTF8", "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=120)
    (folder / "pw").unlink()
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
    for attempt in range(3):  # the free port may be taken between our check and the server's bind
        port = _free_port()
        if _pg_ctl_start(bindir, run_as, folder, port, durable):
            return PostgresServer(folder, port, password, run_as, bindir)
    log = (folder / "server.log").read_text(errors="replace")[-800:] if (folder / "server.log").exists() else ""
    shutil.rmtree(folder, ignore_errors=True)
    raise PostgresUnavailable(f"pg_ctl start failed: {log.strip()}")


def _pg_ctl_start(bindir: Path, run_as: list[str], folder: Path, port: int, durable: bool) -> bool:
    options = ["-c listen_addresses=127.0.0.1", f"-c port={port}", f"-c unix_socket_directories={folder}",
               "-c max_connections=200"]
    if not durable:
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    started = subprocess.run([*run_as, str(bindir / "pg_ctl"), "start", "-D", str(folder / "data"), "-w", "-t", "60",
                              "-l", str(folder / "server.log"), "-o", " ".join(options)],
                             capture_output=True, text=True, timeout=90)
    return started.returncode == 0


def _unprivileged() -> tuple[list[str], tuple[str, str] | None]:
    """(command prefix, (user, group) to own the folder): nothing to change unless we are root."""
    if os.geteuid() != 0:
        return [], None
    import grp
    import pwd

    for account in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and no runuser to start PostgreSQL as another account")
        return [runuser, "-u", account, "--"], (account, grp.getgrgid(entry.pw_gid).gr_name)
    raise PostgresUnavailable("running as root and no postgres or nobody account to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_or_skip():
    """Generator for a session fixture: the running server, stopped at the end; a skip (or, with
    $MODALIGN_REQUIRE_POSTGRES=1, a failure) naming the reason when none can be started."""
    import pytest

    try:
        server = start_postgres()
    except PostgresUnavailable as err:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL required (${REQUIRE_ENV}=1) but could not be started: {err}")
        pytest.skip(f"no PostgreSQL server could be started: {err}")
    try:
        yield server
    finally:
        server.stop()
