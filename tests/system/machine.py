"""A Debian bookworm container with systemd as PID 1 (systemd-nspawn --boot), for the system
tests: files in, commands run through ``nsenter`` into all of its namespaces, and the wheels
the project installs from, built and downloaded on the host (the container has no network of
its own beyond the host's loopback, which it shares).

The host here has no systemd of its own (no bus), so nspawn runs with ``--register=no
--keep-unit``: it neither registers a machine nor asks for a scope.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

CACHE = Path(os.environ.get("EDGE_AGENT_SYSTEM_CACHE",
                            Path.home() / ".cache" / "edge-agent" / "system"))
ROOTFS_SH = REPO / "tests" / "system" / "rootfs.sh"


def missing_tools() -> list[str]:
    """Host programs the system tests need and do not find."""
    need = ["systemd-nspawn", "nsenter", "debootstrap"]
    return [t for t in need if shutil.which(t) is None]


def build_wheels(dest: Path, platform: list[str] | None = None, python: str = "3.11") -> Path:
    """The project's wheel (built from this checkout) plus every dependency's wheel in
    ``dest``; dependencies are cached per platform and pyproject.toml. Returns the project's
    wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                    str(REPO)], check=True, capture_output=True)
    wheel = max(dest.glob("edge_agent-*.whl"), key=lambda p: p.stat().st_mtime)
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    tag = platform[0] if platform else "host"
    deps = CACHE / f"wheels-{tag}-{python}-{key}"
    if not (deps / ".complete").exists():
        deps.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(deps),
               "--only-binary=:all:", str(wheel)]
        for p in platform or ():
            cmd += ["--platform", p]
        if platform:
            cmd += ["--python-version", python, "--implementation", "cp"]
        subprocess.run(cmd, check=True, capture_output=True)
        (deps / ".complete").touch()
    for w in deps.glob("*.whl"):
        if not w.name.startswith("edge_agent-"):
            shutil.copy2(w, dest / w.name)
    return wheel


class Machine:
    """A booted bookworm container; stop it with :meth:`stop`."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    @classmethod
    def create(cls, workdir: Path) -> Machine:
        """Unpack the cached root (built on first use by rootfs.sh) into ``workdir``."""
        root = workdir / "root"
        subprocess.run([str(ROOTFS_SH), "amd64", str(root)], check=True)
        return cls(root, workdir / "console.log")

    def boot(self, timeout: float = 120.0) -> None:
        """Start systemd in the container and wait until it has finished booting."""
        log = open(self.log_path, "wb")  # noqa: SIM115 - nspawn's console, closed at stop
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--boot", "--quiet",
             "--console=pipe", "-D", str(self.root), "--machine=edge-sys"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.leader:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: "
                                   f"{self.console()}")
            self.leader = self._find_leader()
            time.sleep(0.2)
        if not self.leader:
            raise RuntimeError(f"no systemd in the container after {timeout} s")
        while time.monotonic() < deadline:
            r = self.run("systemctl", "is-system-running", "--wait", check=False,
                         timeout=max(1.0, deadline - time.monotonic()))
            state = r.stdout.strip()
            if state in {"running", "degraded"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the container did not finish booting: {self.console()}")

    def _find_leader(self) -> int:
        # nspawn's child is the container's PID 1 (systemd), seen from here with another pid
        assert self.proc is not None
        for pid in self._children(self.proc.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "systemd":
                return pid
            for grandchild in self._children(pid):
                if Path(f"/proc/{grandchild}/comm").read_text().strip() == "systemd":
                    return grandchild
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return out

    def run(self, *cmd: str, check: bool = True, timeout: float = 300.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the container (all its namespaces, its root)."""
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--",
                            "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                            "LANG=C.UTF-8", *cmd],
                           capture_output=True, text=True, timeout=timeout, input=input_text,
                           check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", *args, check=check).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args).stdout

    def path(self, inside: str) -> Path:
        """The host path of ``inside`` (an absolute path in the container)."""
        return self.root / inside.lstrip("/")

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn: an orderly shutdown), by pid."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
