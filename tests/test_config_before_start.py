"""Mistakes the config models catch before anything starts (issue 13).

Each of these configs passed validation before the decoder options, sensor URIs and
normalisation were typed in the config models: ``check-config`` found some of them only by
opening the source or building the decoder, and ``run`` (whose preflight opens no source)
started with the pipeline stuck in ``error``. Now both exit 78 with one line naming the file,
the line and the key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main
from tests.conftest import REPO

HEAD = "device_id: dev-1\nstate_dir: STATE\npipelines:\n  - name: p\n"


def _sensor(*lines: str, decoder: str = "raw") -> str:
    return (HEAD + "    source:\n      type: sensor\n"
            + "".join(f"      {line}\n" for line in lines)
            + f"    model:\n      path: m.tflite\n      decoder: {decoder}\n")


def _options(decoder: str, *lines: str) -> str:
    return (HEAD + "    source: {type: synthetic, frames: 5}\n"
            + f"    model:\n      path: m.tflite\n      decoder: {decoder}\n"
            + "      decoder_options:\n" + "".join(f"        {line}\n" for line in lines))


# (name, config text, key path, words of the message)
CASES: list[tuple[str, str, str, str]] = [
    ("sensor uri scheme", _sensor("uri: foo://x"), "pipelines[0].source.uri",
     "unknown sensor scheme 'foo'"),
    ("zero std", _sensor("uri: synthetic:sine", "normalize:", "  mode: meanstd",
                         "  mean: [0]", "  std: [0]"),
     "pipelines[0].source.normalize.std", "std of 0"),
    ("unknown decoder option", _options("ssd", "max_detection: 5"),
     "pipelines[0].model.decoder_options.max_detection", "unknown key"),
    ("wrong option type", _options("yolo", "iou_threshold: high"),
     "pipelines[0].model.decoder_options.iou_threshold", "invalid value 'high'"),
    ("option of another decoder", _options("ssd", "max_detections: 10", "iou_threshold: 0.5"),
     "pipelines[0].model.decoder_options.iou_threshold", "unknown key"),
    ("option out of range", _options("classification", "top_k: 0"),
     "pipelines[0].model.decoder_options.top_k", "greater than or equal to 1"),
    ("yes is not a number", _options("raw", "max_values: yes"),
     "pipelines[0].model.decoder_options.max_values", "invalid value True"),
    ("bad choice", _options("threshold", "direction: sideways"),
     "pipelines[0].model.decoder_options.direction", "'above' or 'below'"),
    ("option no decoder has", _options("auto", "treshold: 0.5"),
     "pipelines[0].model.decoder_options", "unknown decoder option(s) treshold"),
    ("synthetic sensor shape", _sensor("uri: synthetic:square"),
     "pipelines[0].source.uri", "unknown synthetic shape 'square'"),
    ("sensor uri parameter type", _sensor('uri: "serial:///dev/ttyUSB0?baud=fast"'),
     "pipelines[0].source.uri", "baud='fast' (expected an integer > 0)"),
    ("sensor uri unknown parameter", _sensor('uri: "synthetic:sine?frq=2"'),
     "pipelines[0].source.uri", "unknown synthetic URI parameter 'frq'"),
    ("iio channels", _sensor("channels: 3",
                             'uri: "iio:///sys/bus/iio/devices/iio:device0?channels=a,b"'),
     "pipelines[0].source.uri", "names 2 channel(s) but the source has channels: 3"),
    ("normalise count", _sensor("channels: 3", "uri: synthetic:sine", "normalize:",
                                "  mode: meanstd", "  mean: [0, 0]", "  std: [1]"),
     "pipelines[0].source.normalize", "normalize.mean has 2 value(s) for 3 channel(s)"),
    ("minmax order", _sensor("uri: synthetic:sine", "normalize:", "  mode: minmax",
                             "  min: [1]", "  max: [0]"),
     "pipelines[0].source.normalize.max", "max must be greater than min"),
    ("meanstd without std", _sensor("uri: synthetic:sine", "normalize:", "  mode: meanstd",
                                    "  mean: [1]"),
     "pipelines[0].source.normalize", "mode meanstd needs std"),
    ("micro_frontend stereo", _sensor("channels: 2", "uri: wav:///x.wav",
                                      "features: micro_frontend"),
     "pipelines[0].source.features", "mono audio"),
    ("camera scheme", HEAD + "    source:\n      type: camera\n      uri: foo://cam\n"
     "    model: {path: m.tflite}\n", "pipelines[0].source.uri",
     "unknown stream scheme 'foo://'"),
    ("synthetic scene", HEAD + "    source:\n      type: synthetic\n      uri: dragons\n"
     "    model: {path: m.tflite}\n", "pipelines[0].source.uri",
     "unknown synthetic scene 'dragons'"),
    ("video scheme", HEAD + "    source:\n      type: video\n      uri: ftp://host/clip.mp4\n"
     "    model: {path: m.tflite}\n", "pipelines[0].source.uri",
     "unsupported scheme 'ftp://'"),
    ("empty separator", _sensor("uri: synthetic:sine", 'separator: ""'),
     "pipelines[0].source.separator", "at least 1 character"),
]


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(text.replace("STATE", str(tmp_path / "state")))
        return path
    return write


def _line(text: str, key: str) -> int:
    """The line of the key's last segment in ``text`` (its first occurrence)."""
    last = key.rsplit(".", 1)[-1]
    return next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(last + ":"))


@pytest.mark.parametrize(("name", "text", "key", "words"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_stops_before_start_with_one_line(write, capsys, command, name, text, key,
                                                     words):
    path = write(text)
    line = _line(text, key)
    assert main([command, "-c", str(path)]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}:{line} {key}: "), err[0]
    assert words in err[0], err[0]
    assert not (path.parent / "state").exists()  # nothing started: no state written


def test_there_are_at_least_twelve_cases():
    assert len(CASES) >= 12


def test_the_installed_command_says_the_same(write):
    # one case end to end through the console script, for both commands
    _name, text, key, words = CASES[0]
    path = write(text)
    line = _line(text, key)
    for command in ("check-config", "run"):
        proc = subprocess.run([sys.executable, "-m", "edge_agent", command, "-c", str(path)],
                              capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
        assert proc.returncode == 78, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"{path}:{line} {key}: " + proc.stderr.split(f"{key}: ", 1)[1].strip()]
        assert words in proc.stderr and "Traceback" not in proc.stderr


def test_good_options_still_pass_and_reach_the_decoder(write):
    from edge_agent.config import load_config

    cfg, _ = load_config(write(_options("yolo", "iou_threshold: 0.5", "version: 8")))
    model = cfg.pipelines[0].model
    assert model.options == {"iou_threshold": 0.5, "version": 8}
    cfg, _ = load_config(write(_options("auto", "top_k: 3")))
    assert cfg.pipelines[0].model.options == {"top_k": 3}
    cfg, _ = load_config(write(HEAD + "    source: {type: synthetic}\n"
                               "    model: {path: m.tflite}\n"))
    assert cfg.pipelines[0].model.options == {}


@pytest.mark.parametrize("decoder", ["auto", "ssd", "yolo", "classification", "anchors", "raw",
                                     "threshold"])
def test_a_config_dumps_without_serializer_warnings(write, decoder):
    """reload compares model_dump()s: a discriminator that cannot read an options object made
    pydantic warn on every dump (into the journal, on every SIGHUP)."""
    import warnings

    from edge_agent.config import load_config

    cfg, _ = load_config(write(_options(decoder)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = cfg.model_dump()
    assert dumped["pipelines"][0]["model"]["decoder_options"]["decoder"] == decoder
