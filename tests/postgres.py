"""A throwaway PostgreSQL server for tests, from the installed binaries (`initdb`, `pg_ctl`): a
data folder in a temporary directory, a free local port, trust authentication. Tests that need
one skip, printing why, where PostgreSQL is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in Path(path).parts[-3].split(".") if part.isdigit())

    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    """Why no throwaway server can start here, or None."""
    if _binaries() is None:
        return "PostgreSQL is not installed (no pg_ctl/initdb on PATH or in /usr/lib/postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: initdb refuses root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


def free_port() -> int:
    """A local TCP port free at the moment (the tests' servers bind it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`start()` initialises and starts it; `stop()` and `start()` again keep its data (a database
    that goes away and comes back); `destroy()` removes everything."""

    def __init__(self) -> None:
        self.bin = _binaries()
        assert self.bin is not None, missing_reason()
        # Under /tmp: the postgres user can reach it, and the socket path stays short.
        self.root = Path(tempfile.mkdtemp(prefix="alignd-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://alignd@127.0.0.1:{self.port}/postgres"
        # initdb refuses root: run the server as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            os.chmod(self.root, 0o777)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "alignd", "-E", "UTF8", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / program), *args], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            log = self.root / "log"
            server_log = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}\n{server_log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, removed afterwards (whatever happened)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
