"""Audio as a sensor: WAV windows, the numpy TFLM micro-frontend, micro_speech yes/no."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import PluginUnavailableError, SourceError
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import prepare_window
from edge_agent.sources.audio_features import micro_frontend_features, micro_frontend_uint16
from edge_agent.sources.sensor import SensorSource
from tests.conftest import shared_model

LABELS = ("silence", "unknown", "yes", "no")


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def test_wav_windows_in_samples(tmp_path: Path) -> None:
    pcm = np.arange(-5000, 5000, 10, dtype=np.int16)  # 1000 samples
    path = write_wav(tmp_path / "ramp.wav", pcm, rate=8000)
    src = SensorSource(SensorSourceConfig(type="sensor", uri=f"wav://{path}", window=400,
                                          hop=300))
    src.open()
    frames = []
    try:
        while True:
            f = src.read(1.0)
            assert f is not None
            frames.append(f)
    except EOFError:
        pass
    finally:
        src.close()
    assert len(frames) == 3  # starts 0, 300, 600
    np.testing.assert_array_equal(frames[1].data[:, 0], pcm[300:700] / 32768.0)
    np.testing.assert_allclose(frames[2].timestamps[[0, -1]], [600 / 8000, 999 / 8000])


def test_wav_channel_mismatch_and_missing_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "st.wav", np.zeros(200, np.int16), channels=2)
    src = SensorSource(SensorSourceConfig(type="sensor", uri=str(path), window=10))
    with pytest.raises(SourceError, match="set channels: 2"):
        src.open()
    with pytest.raises(SourceError, match="cannot open WAV"):
        SensorSource(SensorSourceConfig(type="sensor", uri=f"wav://{tmp_path}/none.wav")).open()


def test_micro_frontend_needs_mono_and_a_long_enough_window(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="mono audio"):  # the config model refuses it
        SensorSourceConfig(type="sensor", uri="wav:///x.wav", channels=2,
                           features="micro_frontend")
    path = write_wav(tmp_path / "short.wav", np.zeros(1000, np.int16))
    src = SensorSource(SensorSourceConfig(type="sensor", uri=f"wav://{path}", window=400,
                                          features="micro_frontend"))
    with pytest.raises(SourceError, match="at least 30 ms"):
        src.open()
    src.close()


@pytest.mark.skipif(shutil.which("arecord") is not None, reason="arecord is installed")
def test_alsa_without_arecord_names_what_to_install() -> None:
    src = SensorSource(SensorSourceConfig(type="sensor", uri="alsa:default", window=160))
    with pytest.raises(PluginUnavailableError, match="alsa-utils"):
        src.open()
    src.close()


def test_frontend_shapes_and_silence() -> None:
    assert micro_frontend_uint16(np.zeros(479, np.int64)).shape == (0, 40)
    feats = micro_frontend_features(np.zeros(16000, np.float32))
    assert feats.shape == (49, 40) and feats.dtype == np.float32 and not feats.any()
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    f = micro_frontend_uint16(np.rint(tone * 32767).astype(np.int64))
    # a 1 kHz tone peaks in the channel whose mel centre is near 1 kHz (about 12 of 40)
    assert int(np.argmax(f[0])) in range(10, 15)


@pytest.mark.parametrize("word", ["yes", "no"])
def test_micro_speech_recognises_the_word(word: str) -> None:
    model = shared_model("sensor/micro_speech_quantized.tflite")
    clip = shared_model(f"sensor/{word}_1000ms.wav")
    src = SensorSource(SensorSourceConfig(type="sensor", uri=f"wav://{clip}", window=16000,
                                          features="micro_frontend"))
    rt = load_runtime(model, threads=1)
    src.open()
    try:
        frame = src.read(1.0)
        assert frame is not None and frame.data.shape == (49, 40)
        assert frame.timestamps is not None and frame.timestamps.shape == (49,)
        spec = rt.signature.inputs[0]
        x = prepare_window(spec, frame.data)
        assert x.shape == (1, 1960) and x.dtype == np.int8
        scores = rt.signature.outputs[0].dequantize(rt.infer([x])[0]).reshape(-1)
    finally:
        src.close()
        rt.close()
    assert LABELS[int(np.argmax(scores))] == word
    assert scores.max() > 0.9
