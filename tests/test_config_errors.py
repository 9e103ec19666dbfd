"""Bad configs: each gives exit 78 and one line ``FILE:LINE key.path: ...`` naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from tests.conftest import REPO

GOOD_PIPELINE = """\
pipelines:
  - name: door
    source: {type: synthetic, frames: 5}
    model:
      path: MODEL
"""


def _run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    code = main(["check-config", "-c", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture
def model() -> Path:
    """The default model (models/, fetched on every clone): a face detector with the anchors
    decoder, so ``decoder: ssd`` does not fit it."""
    return ensure_default_models()[DEFAULT_MODEL]


CASES: list[tuple[str, str, str]] = [
    ("unknown key", "bogus: 1\n" + GOOD_PIPELINE, ":1 bogus: unknown key"),
    ("wrong type", "mqtt: {port: abc}\n" + GOOD_PIPELINE, ":1 mqtt.port:"),
    ("bad port", "mqtt:\n  port: 70000\n" + GOOD_PIPELINE, ":2 mqtt.port:"),
    ("bad qos", "mqtt: {qos: 3}\n" + GOOD_PIPELINE, "mqtt.qos:"),
    ("missing model path", "pipelines:\n  - name: a\n    source: {type: synthetic}\n"
     "    model: {labels: x.txt}\n", ":4 pipelines[0].model.path: required key is missing"),
    ("duplicate names", GOOD_PIPELINE + "  - name: door\n    source: {type: synthetic}\n"
     "    model: {path: MODEL}\n", "pipelines: duplicate pipeline name door"),
    ("bad name", GOOD_PIPELINE.replace("name: door", "name: Door!"), ":2 pipelines[0].name:"),
    ("unknown source type", GOOD_PIPELINE.replace("type: synthetic", "type: webcam"),
     ":3 pipelines[0].source: unknown type 'webcam'"),
    ("score threshold", GOOD_PIPELINE + "    score_threshold: 1.5\n",
     "pipelines[0].score_threshold:"),
    ("no pipelines", "pipelines: []\n", "pipelines: at least one pipeline"),
    ("pipelines missing", "device_id: a\n", "pipelines: required key is missing"),
    ("short mask", GOOD_PIPELINE + "    privacy:\n      masks: [[[0, 0], [1, 1]]]\n",
     "pipelines[0].privacy.masks[0]"),
    ("cert without key", "mqtt:\n  tls: {ca_certs: ca.pem, certfile: c.pem}\n" + GOOD_PIPELINE,
     "mqtt.tls: certfile and keyfile go together"),
    ("bad aggregate", GOOD_PIPELINE + "    privacy: {aggregate: sum}\n",
     "pipelines[0].privacy.aggregate:"),
    ("invalid yaml", "pipelines: [\n  - name: x\n", "invalid YAML"),
    ("bad decoder name", GOOD_PIPELINE + "      decoder: sdd\n", "pipelines[0].model.decoder:"),
    ("bad device id", "device_id: 'pi door'\n" + GOOD_PIPELINE, ":1 device_id:"),
]


@pytest.mark.parametrize(("case", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_schema_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path,
                       case: str, text: str, expected: str) -> None:
    code, err = _run(tmp_path, text.replace("MODEL", str(model)), capsys)
    assert code == 78, err
    assert any(expected in line for line in err), err
    assert all(line.startswith(str(tmp_path / "config.yaml")) for line in err), err
    assert not any("Traceback" in line for line in err)


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(tmp_path, GOOD_PIPELINE.replace("MODEL", "nope.tflite"), capsys)
    assert code == 78
    assert err == [f"{tmp_path}/config.yaml:5 pipelines[0].model.path: model file not found: "
                   f"{tmp_path}/nope.tflite (expected a .tflite file)"]


def test_corrupt_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.tflite").write_bytes(b"\x00garbage" * 100)
    code, err = _run(tmp_path, GOOD_PIPELINE.replace("MODEL", "bad.tflite"), capsys)
    assert code == 78
    assert len(err) == 1 and ":5 pipelines[0].model.path: cannot load model" in err[0], err


def test_truncated_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path) -> None:
    (tmp_path / "cut.tflite").write_bytes(model.read_bytes()[:5000])
    code, err = _run(tmp_path, GOOD_PIPELINE.replace("MODEL", "cut.tflite"), capsys)
    assert code == 78 and len(err) == 1 and "pipelines[0].model.path" in err[0], err


def test_unreadable_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           model: Path) -> None:
    text = GOOD_PIPELINE.replace("MODEL", str(model)) + "      labels: missing.txt\n"
    code, err = _run(tmp_path, text, capsys)
    assert code == 78
    assert len(err) == 1 and ":6 pipelines[0].model.labels: labels file not found" in err[0], err


def test_decoder_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              model: Path) -> None:
    text = GOOD_PIPELINE.replace("MODEL", str(model)) + "      decoder: ssd\n"
    code, err = _run(tmp_path, text, capsys)
    assert code == 78
    assert len(err) == 1 and ":6 pipelines[0].model.decoder:" in err[0], err


def test_unopenable_source(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           model: Path) -> None:
    text = GOOD_PIPELINE.replace("MODEL", str(model)).replace(
        "{type: synthetic, frames: 5}", "{type: video, uri: nowhere.mp4}")
    code, err = _run(tmp_path, text, capsys)
    assert code == 78
    assert len(err) == 1 and ":3 pipelines[0].source: cannot open video source" in err[0], err


def test_delegate_without_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   model: Path) -> None:
    text = (GOOD_PIPELINE.replace("MODEL", str(model))
            + "      delegate: edgetpu\n      fallback_to_cpu: false\n")
    code, err = _run(tmp_path, text, capsys)
    assert code == 78
    assert len(err) == 1 and ":6 pipelines[0].model.delegate:" in err[0], err


def test_missing_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               model: Path) -> None:
    text = "mqtt:\n  password_file: secret.txt\n" + GOOD_PIPELINE.replace("MODEL", str(model))
    code, err = _run(tmp_path, text, capsys)
    assert code == 78
    assert len(err) == 1 and ":2 mqtt.password_file: file not found" in err[0], err


def test_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path) -> None:
    code, err = _run(tmp_path, GOOD_PIPELINE.replace("MODEL", str(model)), capsys)
    assert code == 0, err


def test_run_exits_78_without_traceback(tmp_path: Path) -> None:
    """The daemon itself (not just check-config) refuses a bad config with exit 78."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(GOOD_PIPELINE.replace("MODEL", "nope.tflite")
                   + f"state_dir: {tmp_path / 'state'}\n")
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pipelines[0].model.path: model file not found" in proc.stderr


def test_a_key_with_control_characters_stays_on_one_line() -> None:
    """Found by tests/fuzz: an unknown key named "\\r\\r" split its problem over lines."""
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError

    try:
        parse_config('"\\r\\r": null\n', "f.yaml")
    except ConfigError as exc:
        lines = str(exc).splitlines()
    else:
        raise AssertionError("no error")
    assert lines == ["f.yaml:1 pipelines: required key is missing",
                     "f.yaml:1 \\r\\r: unknown key (check the spelling; see README's config "
                     "reference)"]
