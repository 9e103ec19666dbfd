"""deploy/install.sh into a temporary root: files, user, idempotence, uninstall, the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from tests.conftest import REPO, missing

INSTALL = REPO / "deploy" / "install.sh"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def _fake_system(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\nplugdev:x:46:\ni2c:x:998:\n")


def test_example_config_is_valid() -> None:
    cfg = parse_config((REPO / "deploy/config.example.yaml").read_text(), "config.example.yaml")
    assert str(cfg.state_dir) == "/var/lib/edge-agent"
    assert cfg.metrics.prometheus.bind == "127.0.0.1"


def test_install_into_root_without_venv(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _fake_system(root)
    proc = _run("--root", str(root), "--no-venv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (REPO / "systemd/edge-agent.service").read_text()
    config = root / "etc/edge-agent/config.yaml"
    assert config.read_text() == (REPO / "deploy/config.example.yaml").read_text()
    assert (config.stat().st_mode & 0o777) == 0o640
    assert ((root / "etc/edge-agent").stat().st_mode & 0o777) == 0o750
    state = root / "var/lib/edge-agent"
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
    assert not (root / "opt/edge-agent/venv").exists()

    # the user exists in the root's passwd, in the device groups the root has
    sysusers = (root / "usr/lib/sysusers.d/edge-agent.conf").read_text()
    assert "u edge-agent" in sysusers and "m edge-agent video" in sysusers
    assert "m edge-agent gpio" not in sysusers  # no gpio group in this root: not created
    assert "m edge-agent i2c" not in sysusers  # the example config uses no I2C device
    if shutil.which("systemd-sysusers"):
        passwd = (root / "etc/passwd").read_text()
        assert "edge-agent:" in passwd and ":/var/lib/edge-agent:/usr/sbin/nologin" in passwd
        groups = {line.split(":")[0]: line.split(":")[3]
                  for line in (root / "etc/group").read_text().splitlines()}
        assert "edge-agent" in groups["video"]
        # only the groups the config's sources need: the example's V4L2 camera needs video,
        # not i2c (which this root has) nor plugdev (no Coral configured)
        assert "edge-agent" not in groups["i2c"] and "edge-agent" not in groups["plugdev"]
        if os.geteuid() == 0:
            uid = int(passwd.split("edge-agent:x:")[1].split(":")[0])
            assert state.stat().st_uid == uid

    # idempotent, and a changed config survives a second run (an upgrade)
    config.write_text(config.read_text() + "\n# mine\n")
    again = _run("--root", str(root), "--no-venv", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert config.read_text().endswith("# mine\n")
    assert (root / "etc/edge-agent/config.yaml.example").exists()
    users = [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()]
    assert users.count("edge-agent") == 1

    # uninstall keeps config and state; purge removes them
    gone = _run("--root", str(root), "--uninstall", cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists()
    assert config.exists() and state.exists()
    purged = _run("--root", str(root), "--uninstall", "--purge", cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert not config.exists() and not state.exists()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = _run("--root", str(root), "--dry-run", "--no-venv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "+ install -m 0644" in proc.stdout
    assert not (root / "etc").exists()


def test_help_prints_the_header_and_options_only(tmp_path: Path) -> None:
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("Install edge-agent as a systemd service")
    assert "--uninstall" in out and "Options:" in out
    assert "set -euo" not in out and "#" not in out.split("Options:")[0]


def test_unknown_option_fails(tmp_path: Path) -> None:
    proc = _run("--frobnicate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown option --frobnicate" in proc.stderr


@pytest.mark.slow
def test_install_with_venv_then_verify_unit(tmp_path: Path) -> None:
    """The real venv path: pip installs this checkout (no deps, for speed) into the root."""
    root = tmp_path / "root"
    # build from a copy, so pip's in-tree build never writes into the checkout
    src = tmp_path / "src"
    shutil.copytree(REPO / "edge_agent", src / "edge_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = _run("--root", str(root), "--from", str(src), "--python", sys.executable,
                "--pip-args", "--no-deps", cwd=tmp_path)
    if proc.returncode != 0 and "No matching distribution" in proc.stderr:
        pytest.skip("no package index reachable for the build backend")
    assert proc.returncode == 0, proc.stderr
    venv = root / "opt/edge-agent/venv"
    script = venv / "bin/edge-agent"
    # the venv's scripts name the path they will run at on the target, not the build root
    assert script.read_text().splitlines()[0] == "#!/opt/edge-agent/venv/bin/python"
    out = subprocess.run([str(venv / "bin/python"), "-c",
                          "import edge_agent, sys; print(edge_agent.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(venv))

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze (apt-get install systemd)")
        return  # not reached: missing() skips or fails
    unit_text = (root / "etc/systemd/system/edge-agent.service").read_text().replace(
        "ExecStart=/opt/edge-agent", f"ExecStart={root}/opt/edge-agent")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(unit_text)
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert verify.returncode == 0, verify.stderr


def test_device_groups_follow_the_config(tmp_path: Path) -> None:
    """A config with a Coral and a serial sensor: plugdev and dialout (when they exist), not
    video (no camera); --device-groups overrides."""
    root = tmp_path / "root"
    _fake_system(root)
    (root / "etc/group").write_text((root / "etc/group").read_text() + "dialout:x:20:\n")
    conf = root / "etc/edge-agent"
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text(
        "pipelines:\n"
        "  - name: vib\n"
        "    # source: {type: camera, uri: /dev/video0}   (commented out: not counted)\n"
        "    source: {type: sensor, uri: 'serial:///dev/ttyUSB0?baud=115200', window: 8}\n"
        "    model: {path: /etc/edge-agent/models/m.tflite, delegate: edgetpu}\n")
    proc = _run("--root", str(root), "--no-venv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sysusers = (root / "usr/lib/sysusers.d/edge-agent.conf").read_text()
    assert "m edge-agent plugdev" in sysusers and "m edge-agent dialout" in sysusers
    assert "m edge-agent video" not in sysusers and "m edge-agent i2c" not in sysusers
    proc = _run("--root", str(root), "--no-venv", "--device-groups", "i2c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sysusers = (root / "usr/lib/sysusers.d/edge-agent.conf").read_text()
    assert "m edge-agent i2c" in sysusers and "m edge-agent plugdev" not in sysusers
