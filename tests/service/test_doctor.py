"""`edge-agent doctor`: device checks, per-pipeline checks, the broker, and the exit code."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from edge_agent.config import make_config
from edge_agent.doctor import (
    FAIL,
    OK,
    WARN,
    Check,
    check_broker,
    check_cameras,
    check_clock,
    check_delegates,
    cmd_doctor,
    render_table,
)
from tests.broker import Mosquitto, free_port
from tests.conftest import IN_CI, shared_model


def _config(tmp_path: Path, model: Path, port: int, labels: Path | None = None,
            decoder: str = "anchors") -> Path:
    cfg = tmp_path / "config.yaml"
    lab = f", labels: {labels}" if labels else ""
    cfg.write_text(f"""
device_id: doctor-test
state_dir: {tmp_path / "state"}
mqtt: {{host: 127.0.0.1, port: {port}}}
pipelines:
  - name: cam
    source: {{type: synthetic, fps: 0, frames: 5}}
    model: {{path: {model}{lab}, decoder: {decoder}}}
""")
    return cfg


def _doctor(capsys: pytest.CaptureFixture[str], config: Path | None) -> tuple[int, dict]:
    code = cmd_doctor(argparse.Namespace(config=str(config) if config else None, json=True))
    return code, json.loads(capsys.readouterr().out)


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_good_config_passes(tmp_path: Path, broker: Mosquitto,
                            capsys: pytest.CaptureFixture[str]) -> None:
    model = shared_model("face_detection_full_range_sparse.tflite")  # default models
    labels = shared_model("face.txt")
    code, report = _doctor(capsys, _config(tmp_path, model, broker.port, labels))
    checks = _by_name(report)
    assert code == 0, report
    assert report["ok"] is True
    assert checks["cam: model"]["status"] == OK
    assert "ai_edge_litert" in checks["cam: model"]["detail"] or "tflite" in \
        checks["cam: model"]["detail"]
    assert checks["cam: decoder"]["status"] == OK
    assert checks["cam: source"]["status"] == OK
    assert checks["broker"]["status"] == OK and "CONNECT accepted" in checks["broker"]["detail"]
    assert checks["state_dir"]["status"] == OK
    assert checks["runtime"]["status"] == OK


def test_missing_model_fails(tmp_path: Path, broker: Mosquitto,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _doctor(capsys, _config(tmp_path, tmp_path / "nope.tflite", broker.port))
    checks = _by_name(report)
    assert code == 1
    assert checks["cam: model"]["status"] == FAIL
    assert "nope.tflite" in checks["cam: model"]["detail"]
    assert checks["cam: model"]["fix"]


def test_model_that_does_not_fit_its_decoder_fails(tmp_path: Path, broker: Mosquitto,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = shared_model("face_detection_full_range_sparse.tflite")  # anchors, not SSD
    code, report = _doctor(capsys, _config(tmp_path, model, broker.port, decoder="ssd"))
    assert code == 1
    assert _by_name(report)["cam: decoder"]["status"] == FAIL


def test_unreachable_broker_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = shared_model("face_detection_full_range_sparse.tflite")
    code, report = _doctor(capsys, _config(tmp_path, model, free_port()))
    assert code == 1
    broker = _by_name(report)["broker"]
    assert broker["status"] == FAIL and "mqtt.host" in broker["fix"]


def test_invalid_config_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pipelines: []\n")
    code, report = _doctor(capsys, cfg)
    assert code == 1
    assert _by_name(report)["config"]["status"] == FAIL


def test_device_checks_only_without_config(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    monkeypatch.setattr("edge_agent.doctor.DEFAULT_CONFIG_PATH", Path("/nonexistent/c.yaml"))
    code, report = _doctor(capsys, None)
    names = set(_by_name(report))
    assert {"runtime", "edgetpu", "clock"} <= names
    assert not any(n.startswith(("broker", "state_dir", "cam:")) for n in names)
    assert code == 0


def test_broker_refusing_credentials(tmp_path: Path) -> None:
    """A listener that answers CONNACK 5 (not authorised): the doctor says so."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"\x20\x02\x00\x05")

    t = threading.Thread(target=answer)
    t.start()
    try:
        # the fake listener speaks 3.1.1 (its CONNACK has no properties)
        checks = check_broker(make_config(mqtt={"host": "127.0.0.1", "port": port,
                                                "protocol": "3.1.1"}))
    finally:
        t.join(5)
        srv.close()
    assert checks[0].status == FAIL and "not authori" in checks[0].detail.lower()


def test_coral_usb_without_library_warns(tmp_path: Path) -> None:
    dev = tmp_path / "sys/bus/usb/devices/1-1"
    dev.mkdir(parents=True)
    (dev / "idVendor").write_text("18d1\n")
    (dev / "idProduct").write_text("9302\n")
    (checks,) = check_delegates(wanted=False, root=tmp_path)
    # on a machine with libedgetpu the check passes; without it the fix names the package
    assert checks.status in {OK, WARN}
    assert "18d1:9302" in checks.detail
    if checks.status == WARN:
        assert "libedgetpu1-std" in checks.fix


def test_wanted_tpu_absent_fails(tmp_path: Path) -> None:
    (checks,) = check_delegates(wanted=True, root=tmp_path)
    assert checks.status == FAIL


def test_cameras_from_fake_dev(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/video0").write_bytes(b"")
    (tmp_path / "sys/class/video4linux/video0").mkdir(parents=True)
    (tmp_path / "sys/class/video4linux/video0/name").write_text("USB Camera\n")
    checks = check_cameras(tmp_path, probe=False)
    assert checks[0].name.endswith("video0") and "USB Camera" in checks[0].detail


def test_clock_in_the_past_fails(tmp_path: Path) -> None:
    (check,) = check_clock(tmp_path, now=0.0)  # 1970: a Pi without RTC before NTP
    assert check.status == FAIL and "NTP" in check.fix


def test_table_shows_fixes_for_problems_only() -> None:
    text = render_table([Check("a", OK, "fine", "never shown"), Check("b", FAIL, "broken", "do x")])
    assert "never shown" not in text and "-> do x" in text
    assert text.splitlines()[-1] == "2 checks: 1 failed, 0 warnings"


def _password_broker(tmp_path: Path) -> Mosquitto:
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        if IN_CI:
            pytest.fail("mosquitto_passwd is missing (./dev test installs mosquitto)")
        pytest.skip("mosquitto_passwd missing")
    passwd = tmp_path / "broker.passwd"
    subprocess.run([passwd_tool, "-c", "-b", str(passwd), "device", "s3cret"], check=True)
    return Mosquitto(tmp_path / "broker",
                     extra_config=f"allow_anonymous false\npassword_file {passwd}\n")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_ok_with_the_password_from_systemd_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    """Under LoadCredential= the daemon reads $CREDENTIALS_DIRECTORY/mqtt-password; the doctor
    connects through the daemon's own client construction, so it reads it too (it used to
    read only password_file, and spoke 3.1.1 only)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    with _password_broker(tmp_path) as broker:
        cfg = make_config(mqtt={"host": "127.0.0.1", "port": broker.port, "username": "device",
                                "protocol": protocol})
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        (without,) = check_broker(cfg)
        assert without.status == FAIL and "password" in without.fix
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        (ok,) = check_broker(cfg)
        assert ok.status == OK, ok
        assert f"MQTT {protocol} CONNECT accepted" in ok.detail
        (creds / "mqtt-password").write_text("wrong\n")
        (bad,) = check_broker(cfg)
        assert bad.status == FAIL and "refused" in bad.detail


def test_doctor_command_reports_the_broker_ok_under_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The whole command, as systemd would run it: MQTT 5, password only as a credential."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with _password_broker(tmp_path) as broker:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"device_id: dev-1\nstate_dir: {tmp_path / 'state'}\n"
                       f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: device, "
                       "protocol: '5'}\n"
                       "pipelines:\n  - name: cam\n    source: {type: synthetic, frames: 2}\n"
                       "    model: {path: missing.tflite}\n")
        _code, report = _doctor(capsys, cfg)
    assert _by_name(report)["broker"]["status"] == OK
    assert "MQTT 5 CONNECT accepted" in _by_name(report)["broker"]["detail"]
