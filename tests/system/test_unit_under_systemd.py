"""The shipped unit under a real systemd (252, Debian bookworm, PID 1 in systemd-nspawn),
installed by deploy/install.sh from wheels built and downloaded on the host.

One container for the module; the tests run in order and each leaves the service as the next
one expects. What they show:
- READY=1 -> active (running), results on the host's broker;
- the sandbox holds over every code path that makes syscalls (video source, model update with
  an HTTP download, ``systemctl reload``, a metrics scrape, a signed restart command): the run
  uses a drop-in ``SystemCallErrorNumber=kill`` so any call the filter denies kills the daemon
  with SIGSYS instead of failing quietly with EPERM, and the journal must show none;
- the watchdog is enforced: a pipeline stalled by the test gets the daemon killed and
  restarted by systemd, NRestarts rises, and results resume with seq gap-free;
- exit 78 (a broken config) leaves the unit failed, not restarting;
- journald priorities;
- an upgrade by install.sh keeps config and state; --uninstall and --purge leave nothing.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.default_models import ensure_default_models
from edge_agent.signing import generate_key_pair, load_private_key, sign_command
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto, mosquitto_binary
from tests.conftest import IN_CI, REPO
from tests.e2e.agentproc import Inbox, subscribe
from tests.e2e.update_harness import write_scene_video
from tests.system.machine import Machine, build_wheels, missing_tools

pytestmark = [pytest.mark.slow, pytest.mark.allow_threads]

DEVICE = "nspawn-1"
PREFIX = f"edge-agent/{DEVICE}"
CONF = "/etc/edge-agent/config.yaml"
SHORT, FULL = "face_detection_short_range", "face_detection_full_range_sparse"
FATAL_SECCOMP = "/etc/systemd/system/edge-agent.service.d/50-test-fatal-seccomp.conf"


def _need_host() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    problems += [f"{t} missing" for t in missing_tools()]
    if mosquitto_binary() is None:
        problems.append("mosquitto missing")
    if problems:
        msg = f"system tests need root, systemd-nspawn, debootstrap, mosquitto: {problems}"
        if IN_CI:
            pytest.fail(msg + " (./dev system installs the packages)", pytrace=False)
        pytest.skip(msg)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    """Everything the module shares: the container, the broker, keys, the inbox."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = Mosquitto(tmp / "broker")
        self.broker.start()
        self.inbox = Inbox()
        self.sub = subscribe(self.broker.host, self.broker.port, [f"{PREFIX}/#"], self.inbox)
        self.machine = Machine.create(tmp / "machine")
        self.machine.boot()
        self.metrics_port = _free_port()
        self.http_port = _free_port()
        self.key_path, self.pub_path, _ = generate_key_pair(tmp / "keys")
        self.models = ensure_default_models()
        self.http = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.http_port),
            lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp / "www")))
        (tmp / "www").mkdir()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ helpers
    def put(self, inside: str, data: bytes | str, mode: int = 0o644) -> None:
        p = self.machine.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)

    def config(self, extra_pipelines: list[dict[str, Any]] | None = None,
               **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "device_id": DEVICE,
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port},
            "metrics": {"prometheus": {"bind": "127.0.0.1", "port": self.metrics_port}},
            "updates": {"enabled": True, "public_keys": ["/etc/edge-agent/keys/signing.pub"],
                        "watch_inferences": 5, "watch_seconds": 2},
            "pipelines": [{
                "name": "door",
                "source": {"type": "video", "uri": "/etc/edge-agent/scene.avi", "fps": 5,
                           "loop": True},
                "model": {"path": f"/etc/edge-agent/models/{SHORT}.tflite",
                          "labels": "/etc/edge-agent/models/face.txt", "decoder": "anchors",
                          "threads": 1},
            }, *(extra_pipelines or [])],
        }
        cfg.update(overrides)
        return cfg

    def write_config(self, cfg: dict[str, Any] | str) -> None:
        text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False)
        p = self.machine.path(CONF)
        p.write_text(text)  # keeps install.sh's owner root:edge-agent and mode 0640

    def results(self, since: int = 0) -> list[dict[str, Any]]:
        with self.inbox.lock:
            msgs = self.inbox.messages[since:]
        return [json.loads(p) for t, p, _ in msgs if "/results/door" in t]

    def mark(self) -> int:
        with self.inbox.lock:
            return len(self.inbox.messages)

    def wait(self, what: str, pred: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}\n--- journal ---\n"
                             f"{self.machine.journal('-u', 'edge-agent', '-n', '60')}")

    def wait_results(self, n: int, since: int, timeout: float = 90.0) -> None:
        self.wait(f"{n} results", lambda: len(self.results(since)) >= n, timeout)

    def state(self) -> dict[str, str]:
        return self.machine.show("edge-agent.service", "ActiveState", "SubState", "Result",
                                 "NRestarts", "MainPID", "ExecMainStatus", "StatusText")

    def close(self) -> None:
        self.http.shutdown()
        self.sub.stop()
        self.machine.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _need_host()
    s = Site(tmp_path_factory.mktemp("system"))
    try:
        yield s
    finally:
        s.close()


def _install(site: Site, wheel_dir: Path, wheel: Path, src: Path
             ) -> subprocess.CompletedProcess[str]:
    return site.machine.run(
        f"/root/{src.name}/deploy/install.sh", "--from", f"/root/wheels/{wheel.name}",
        "--pip-args", "--no-index --find-links /root/wheels", timeout=600)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)


def test_install_then_ready_and_results(site: Site) -> None:
    m = site.machine
    wheels = m.path("/root/wheels")
    wheel = build_wheels(wheels)
    _copy_checkout(m.path("/root/edge-agent"))
    out = _install(site, wheels, wheel, Path("edge-agent"))
    assert "done" in out.stdout, out.stdout + out.stderr
    assert m.path("/etc/systemd/system/edge-agent.service").is_file()
    assert m.run("id", "edge-agent").returncode == 0
    assert m.systemctl("is-enabled", "edge-agent.service").strip() == "enabled"
    # a fresh install is enabled but waits for the config to be edited
    assert site.state()["ActiveState"] == "inactive"

    for name in (SHORT, FULL):
        site.put(f"/etc/edge-agent/models/{name}.tflite", site.models[name].read_bytes())
    site.put("/etc/edge-agent/models/face.txt", "face\n")
    site.put("/etc/edge-agent/keys/signing.pub", site.pub_path.read_bytes())
    write_scene_video(site.tmp / "scene.avi", 60)
    site.put("/etc/edge-agent/scene.avi", (site.tmp / "scene.avi").read_bytes())
    site.write_config(site.config())
    # every denied system call kills the daemon with SIGSYS for the rest of the run
    site.put(FATAL_SECCOMP, "[Service]\nSystemCallErrorNumber=kill\n")
    m.systemctl("daemon-reload")
    # systemd 252 shows "kill" as its internal SECCOMP_ERROR_NUMBER_KILL (INT_MAX - 1)
    assert m.show("edge-agent.service", "SystemCallErrorNumber")["SystemCallErrorNumber"] \
        in {"kill", "2147483646"}, "systemd did not take SystemCallErrorNumber=kill"

    since = site.mark()
    m.systemctl("start", "edge-agent.service")   # returns once READY=1 arrived (Type=notify)
    st = site.state()
    assert (st["ActiveState"], st["SubState"]) == ("active", "running"), st
    assert st["StatusText"], "the agent sets a STATUS= line"
    status = m.systemctl("status", "edge-agent.service", "--no-pager", check=False)
    assert "active (running)" in status, status
    site.wait_results(10, since)
    assert {r["device"] for r in site.results(since)} == {DEVICE}
    print("\n" + status)


def test_sandbox_holds_over_every_code_path(site: Site) -> None:
    m = site.machine
    start_restarts = int(site.state()["NRestarts"])

    # 1. systemctl reload (SIGHUP): a changed threshold restarts the pipeline in place
    pid = site.state()["MainPID"]
    cfg = site.config()
    cfg["pipelines"][0]["score_threshold"] = 0.6
    site.write_config(cfg)
    since = site.mark()
    m.systemctl("reload", "edge-agent.service")
    site.wait("reload applied", lambda: "reload: applied" in m.journal("-u", "edge-agent"))
    site.wait_results(5, since)
    assert site.state()["MainPID"] == pid, "reload must not restart the process"

    # 2. metrics scrape from the host (the container shares the host's loopback)
    with urllib.request.urlopen(f"http://127.0.0.1:{site.metrics_port}/metrics",
                                timeout=10) as resp:
        body = resp.read().decode()
    assert "edge_agent" in body

    # 3. model update by download over HTTP: short range -> full range, signed manifest
    full = site.models[FULL]
    shutil.copy2(full, site.tmp / "www" / "full.tflite")
    manifest = build_manifest(name="face-full", version=1, sha256=sha256_file(full),
                              size=full.stat().st_size, key=load_private_key(site.key_path),
                              url=f"http://127.0.0.1:{site.http_port}/full.tflite",
                              labels="face\n")
    since = site.mark()
    site.sub.publish(f"{PREFIX}/cmd/model/update", json.dumps({
        "request_id": "u1", "pipeline": "door", "manifest": dict(manifest.raw)}).encode())
    new_sha = sha256_file(full)
    site.wait("the full-range model serving", lambda: any(
        r["model"]["sha256"] == new_sha for r in site.results(since)), 120)

    # 4. a signed restart command: exit 75, systemd starts it again
    since = site.mark()
    signed = sign_command({"request_id": "r1", "command": "restart", "device": DEVICE,
                           "reason": "system test"}, load_private_key(site.key_path))
    site.sub.publish(f"{PREFIX}/cmd/restart", json.dumps(signed).encode())
    site.wait("a restart by systemd",
              lambda: int(site.state()["NRestarts"]) == start_restarts + 1, 90)
    site.wait("active again", lambda: site.state()["SubState"] == "running", 90)
    site.wait_results(5, since)
    assert site.state()["MainPID"] != pid

    journal = m.journal("-u", "edge-agent", "-o", "cat")
    for sign in ("status=31/SYS", "SIGSYS", "code=killed, status=31"):
        assert sign not in journal, journal[-3000:]
    assert int(site.state()["NRestarts"]) == start_restarts + 1, "an unexpected restart"
    replies = site.inbox.json("/cmd/reply")
    assert any(r.get("request_id") == "r1" and r.get("ok") for r in replies), replies


def test_watchdog_kills_and_restarts_a_stalled_daemon(site: Site) -> None:
    m = site.machine
    m.run("mkfifo", "-m", "0644", "/var/lib/edge-agent/stall.fifo")
    # a camera on a FIFO nobody writes to: opening it blocks, the pipeline's heartbeat ages
    stalled = {"name": "stalled", "source": {"type": "camera",
                                              "uri": "/var/lib/edge-agent/stall.fifo"},
               "model": {"path": f"/etc/edge-agent/models/{SHORT}.tflite",
                         "decoder": "anchors", "threads": 1},
               "stall_timeout_s": 3}
    site.write_config(site.config([stalled]))
    since = site.mark()
    m.systemctl("restart", "edge-agent.service")
    before = int(site.state()["NRestarts"])  # a manual restart resets the counter
    site.wait_results(3, since)
    site.wait("the agent to withhold pings", lambda: "withholding watchdog pings" in
              m.journal("-u", "edge-agent", "-o", "cat"), 60)
    # the next start must not stall again: the config without the FIFO pipeline is read then
    site.write_config(site.config())
    site.wait("systemd's watchdog timeout", lambda: "Watchdog timeout" in
              m.journal("-u", "edge-agent", "-o", "cat"), 90)
    site.wait("the restart", lambda: int(site.state()["NRestarts"]) == before + 1, 60)
    site.wait("active again", lambda: site.state()["SubState"] == "running", 90)
    after = site.mark()
    site.wait_results(5, after)
    seqs = [r["seq"] for r in site.results(since)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gap: {seqs}"
    journal = m.journal("-u", "edge-agent", "-o", "cat")
    print("\n" + "\n".join(line for line in journal.splitlines()
                           if "atchdog" in line or "SIGABRT" in line or "Scheduled restart"
                           in line))


def test_broken_config_leaves_the_unit_failed(site: Site) -> None:
    m = site.machine
    site.write_config(site.config(pipelines=[{"name": "Bad Name!", "source": {"type": "x"}}]))
    m.systemctl("restart", "edge-agent.service", check=False)
    before = int(site.state()["NRestarts"])  # a manual restart resets the counter
    site.wait("the unit failed", lambda: site.state()["ActiveState"] == "failed", 60)
    time.sleep(8)  # longer than RestartSec=5: a restart loop would have started by now
    st = site.state()
    assert (st["ActiveState"], st["Result"], st["ExecMainStatus"]) == \
        ("failed", "exit-code", "78"), st
    assert int(st["NRestarts"]) == before, st
    journal = m.journal("-u", "edge-agent", "-o", "cat", "-n", "30")
    assert "pipelines" in journal, journal


def test_journald_priorities(site: Site) -> None:
    records = [json.loads(line) for line in site.machine.journal(
        "-u", "edge-agent", "-o", "json", "_COMM=edge-agent").splitlines() if line]
    records += [json.loads(line) for line in site.machine.journal(
        "-u", "edge-agent", "-o", "json").splitlines() if line]
    by_prio: dict[str, list[str]] = {}
    for r in records:
        if r.get("SYSLOG_IDENTIFIER") == "systemd":
            continue
        msg = r.get("MESSAGE")
        if isinstance(msg, str):
            by_prio.setdefault(r.get("PRIORITY", "?"), []).append(msg)
    warn = by_prio.get("4", [])
    info = by_prio.get("6", [])
    err = by_prio.get("3", [])
    assert any("withholding watchdog pings" in msg for msg in warn), by_prio.keys()
    assert any("reload: applied" in msg for msg in info), by_prio.keys()
    assert any("pipelines[0].name" in msg for msg in err), \
        f"the refused config is logged at err: {list(by_prio)}"
    assert not any(msg.startswith("<") for msgs in by_prio.values() for msg in msgs)


def test_upgrade_keeps_config_and_state(site: Site) -> None:
    m = site.machine
    site.write_config(site.config())
    m.systemctl("reset-failed", "edge-agent.service")
    since = site.mark()
    m.systemctl("start", "edge-agent.service")
    site.wait_results(5, since)
    conf_before = m.path(CONF).read_bytes()
    state_before = sorted(p.name for p in m.path("/var/lib/edge-agent").iterdir())
    assert state_before, "the agent keeps its state here"
    pid = site.state()["MainPID"]

    # a newer checkout: the same tree with a higher version
    src = m.path("/root/edge-agent-next")
    shutil.copytree(m.path("/root/edge-agent"), src)
    init = src / "edge_agent" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.1"'))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(m.path("/root/wheels")), str(src)], check=True, capture_output=True)
    wheel = next(m.path("/root/wheels").glob("edge_agent-0.1.1-*.whl"))
    since = site.mark()
    out = _install(site, m.path("/root/wheels"), wheel, Path("edge-agent-next"))
    assert "restarted edge-agent (upgrade)" in out.stdout, out.stdout + out.stderr
    assert m.path(CONF).read_bytes() == conf_before
    assert set(state_before) <= {p.name for p in m.path("/var/lib/edge-agent").iterdir()}
    site.wait("the new version online", lambda: any(
        s.get("state") == "online" and s.get("agent_version") == "0.1.1"
        for s in site.inbox.json("/status")), 90)
    site.wait_results(5, since)
    assert site.state()["MainPID"] != pid
    seqs = [r["seq"] for r in site.results(since - 0)]
    assert seqs == sorted(seqs), seqs


def test_uninstall_then_purge_leave_nothing(site: Site) -> None:
    m = site.machine
    m.run("/root/edge-agent/deploy/install.sh", "--uninstall")
    assert m.run("systemctl", "is-active", "edge-agent.service", check=False).stdout.strip() \
        in {"inactive", "unknown"}
    assert not m.path("/opt/edge-agent").exists()
    assert not m.path("/etc/systemd/system/edge-agent.service").exists()
    assert m.path(CONF).exists() and m.path("/var/lib/edge-agent").exists()
    m.run("/root/edge-agent/deploy/install.sh", "--uninstall", "--purge")
    left = m.run("find", "/", "-xdev", "-name", "*edge-agent*", "-not", "-path", "/root/*",
                 "-not", "-path", "/proc/*", check=False).stdout.split()
    assert left == [], left
    assert m.run("id", "edge-agent", check=False).returncode != 0
    assert m.run("getent", "group", "edge-agent", check=False).returncode != 0
