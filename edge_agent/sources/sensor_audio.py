"""Audio as a sensor: WAV files (stdlib ``wave``) and ALSA capture through ``arecord``.

Samples are float32 in [-1, 1) (16-bit PCM divided by 32768), one channel per audio channel;
``window`` and ``hop`` count samples. ``wav:///path/clip.wav`` takes its sample rate from
the file. ``alsa:default`` (or ``alsa:hw:1,0``) records 16-bit PCM at the config's
``sample_rate`` (default 16000) by running ``arecord`` from alsa-utils: there is no
pure-Python ALSA binding, and this avoids a compiled dependency.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import PluginUnavailableError, SourceError
from edge_agent.sensor_uri import SensorUri
from edge_agent.sources.sensor_base import Chunk

CHUNK_FRAMES = 4096


def pcm_to_float(data: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian PCM bytes -> (n, channels) float32 in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(data, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise SourceError(f"unsupported PCM sample width {width} bytes")
    n = x.size // channels
    return x[: n * channels].reshape(n, channels)


class WavSensorReader:
    """Reads a PCM WAV file (finite; ``loop: true`` replays it)."""

    live = False
    bad_lines = 0

    def __init__(self, path: str, channels: int) -> None:
        self.path = Path(path)
        self.channels = channels
        self.sample_rate: float | None = None
        self._wav: wave.Wave_read | None = None
        self._index = 0

    def open(self) -> None:
        """Open the file and check its channel count."""
        try:
            wav = wave.open(str(self.path), "rb")  # noqa: SIM115 - closed in close()
        except (OSError, EOFError, wave.Error) as exc:
            raise SourceError(f"cannot open WAV file {self.path}: {exc}") from None
        if wav.getnchannels() != self.channels:
            wav.close()
            raise SourceError(f"{self.path} has {wav.getnchannels()} audio channel(s); set "
                              f"channels: {wav.getnchannels()} in the source")
        self._wav = wav
        self.sample_rate = float(wav.getframerate())
        self._index = 0

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The next CHUNK_FRAMES samples; EOFError at the end."""
        if self._wav is None:
            raise SourceError("WAV file is not open")
        data = self._wav.readframes(CHUNK_FRAMES)
        if not data:
            raise EOFError(str(self.path))
        v = pcm_to_float(data, self._wav.getsampwidth(), self.channels)
        rate = self.sample_rate or 1.0
        t = (self._index + np.arange(len(v), dtype=np.float64)) / rate
        self._index += len(v)
        return Chunk(t, v)

    def rewind(self) -> None:
        """Back to the first sample."""
        if self._wav is not None:
            self._wav.rewind()
        self._index = 0

    def close(self) -> None:
        """Close the file."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None


class AlsaSensorReader:
    """Captures 16-bit PCM from an ALSA device by running ``arecord`` (live)."""

    live = True
    bad_lines = 0

    def __init__(self, device: str, channels: int, sample_rate: float | None) -> None:
        self.device = device or "default"
        self.channels = channels
        self.sample_rate = sample_rate or 16000.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def open(self) -> None:
        """Start arecord; PluginUnavailableError when alsa-utils is not installed."""
        exe = shutil.which("arecord")
        if exe is None:
            raise PluginUnavailableError(
                "alsa: audio capture runs the arecord program, which is not installed; "
                "install alsa-utils (apt-get install alsa-utils), or use a wav:// file")
        cmd = [exe, "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE",
               "-r", str(round(self.sample_rate)), "-c", str(self.channels)]
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise SourceError(f"cannot start arecord: {exc}") from None
        self._buf = b""

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The audio that arrived within ``timeout``."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise SourceError("ALSA capture is not running")
        fd = proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, 65536)
        if not data:
            raise SourceError(f"arecord stopped (exit {proc.poll()}) for device {self.device}")
        self._buf += data
        frame = 2 * self.channels
        n = len(self._buf) // frame
        whole, self._buf = self._buf[: n * frame], self._buf[n * frame:]
        if n == 0:
            return None
        v = pcm_to_float(whole, 2, self.channels)
        now = time.time()
        t = now - (n - 1 - np.arange(n, dtype=np.float64)) / self.sample_rate
        return Chunk(t, v)

    def rewind(self) -> None:
        """Live capture cannot be replayed."""

    def close(self) -> None:
        """Stop arecord."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2.0)
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()


def wav_reader(uri: SensorUri, cfg: SensorSourceConfig) -> WavSensorReader:
    """``wav:///path`` (or a path ending in .wav)."""
    return WavSensorReader(uri.path, cfg.channels)


def alsa_reader(uri: SensorUri, cfg: SensorSourceConfig) -> AlsaSensorReader:
    """``alsa:<device>``."""
    return AlsaSensorReader(uri.path, cfg.channels, cfg.sample_rate)
