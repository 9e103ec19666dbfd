"""A real PostgreSQL cluster for tests: initdb in a temp dir, a free loopback port, stopped by PID.

Debian's ``postgresql`` package (installed by ``./dev test``) puts the binaries in
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so as root the
cluster belongs to the unprivileged ``postgres`` user (the package creates it) and the
commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.broker import free_port, wait_port


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb, or one on PATH, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A throw-away cluster: ``start()``, ``stop()`` (SIGINT to the postmaster, by PID),
    ``url(db)``, ``create_database(name)``."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edge-agent-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.pid: int | None = None
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8", "--locale=C"])

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> PostgresCluster:
        """Start the postmaster on 127.0.0.1:``port`` and wait until it accepts connections."""
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                   "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                   "start"])
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        wait_port(self.port, 30)
        return self

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL after 30 s."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop and remove the cluster's folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        """A ``postgresql://`` URL for database ``db``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
