"""OpenCV sources: live cameras and streams (newest frame wins) and video files (every frame).

:class:`OpencvCameraSource` opens a V4L2 device (an index such as ``0`` or ``"0"``, or a path
``/dev/videoN``) or a network stream (``rtsp://``, ``http(s)://``, ... through FFmpeg). A reader
thread grabs continuously and keeps only the newest frame, so the pipeline always works on the
present and the frames it could not take are counted in ``dropped``. With ``defer_decode`` it
hands frames over still encoded (a V4L2 device's YUYV, NV12 or MJPEG buffers, an FFmpeg
stream's MJPEG packets), so frames a motion gate finds still and frames dropped for newer ones
are never converted in full.

:class:`OpencvVideoSource` reads a file and hands over every frame in order, paced at the
file's own fps by default (``fps: 0`` as fast as the pipeline takes them, ``fps: N`` at N).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from edge_agent.config import CameraSourceConfig, VideoSourceConfig
from edge_agent.credentials import display_uri
from edge_agent.errors import SourceError
from edge_agent.sources.conform import MAX_FRAME_PIXELS
from edge_agent.sources.encoded import EncodedImage
from edge_agent.sources.pacing import FramePacer, PacedFileSource
from edge_agent.types import Frame

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                  "srt://")
OPEN_TIMEOUT_MS = 10_000  # FFmpeg: give up opening a stream after this long
READ_TIMEOUT_MS = 5_000  # FFmpeg: a stream that sends nothing for this long has failed
DEFAULT_FILE_FPS = 25.0  # when a file does not say its frame rate
JOIN_TIMEOUT_S = 6.0  # longer than READ_TIMEOUT_MS: a blocked read ends first
_MJPEG_FOURCCS = frozenset({b"MJPG", b"MJPA", b"AVRN", b"JPEG"})
# V4L2 formats whose raw buffers are handed over as encoded frames (``defer_decode``)
_V4L2_RAW = {b"YUYV": "yuyv", b"YUY2": "yuyv", b"NV12": "nv12", b"MJPG": "jpeg",
             b"JPEG": "jpeg"}


def _file_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def capture_target(uri: str | int) -> tuple[str | int, int]:
    """The VideoCapture argument and backend for a camera ``uri``.

    Args:
        uri: a V4L2 index (int or digits), ``/dev/videoN``, a stream URL or a file path.

    Returns:
        ``(target, api)`` for ``cv2.VideoCapture(target, api)``.
    """
    if isinstance(uri, int):
        return uri, cv2.CAP_V4L2
    text = uri.strip()
    if text.isdigit():
        return int(text), cv2.CAP_V4L2
    if text.startswith("/dev/video"):
        return text, cv2.CAP_V4L2
    if text.lower().startswith(STREAM_SCHEMES):
        return text, cv2.CAP_FFMPEG
    if text.startswith("file://") or Path(text).exists():
        return _file_path(text), cv2.CAP_FFMPEG
    return text, cv2.CAP_ANY


def _raw_buffer(kind: str, buffer: np.ndarray, size: tuple[int, int]) -> EncodedImage | None:
    """A V4L2 buffer that OpenCV handed over unconverted, as an encoded frame of ``size``;
    None when its bytes do not fit the format (a driver that pads lines, say)."""
    width, height = size
    if buffer.dtype != np.uint8 or width <= 0 or height <= 0:
        return None
    if kind == "jpeg":
        encoded = EncodedImage.jpeg(buffer)
        return encoded if encoded is not None and encoded.width == width else None
    if kind == "yuyv" and buffer.size == width * height * 2 and width % 2 == 0:
        return EncodedImage.yuyv(buffer, width, height)
    if kind == "nv12" and buffer.size == width * height * 3 // 2 and not (width | height) % 2:
        return EncodedImage.nv12(buffer, width, height)
    return None


def mjpeg_packet(packet: np.ndarray) -> EncodedImage:
    """An MJPEG packet from FFmpeg's raw mode as an encoded frame (a damaged one fails at
    decode, and the pipeline skips and counts it)."""
    encoded = EncodedImage.jpeg(packet)
    if encoded is None:
        return EncodedImage("jpeg", packet.reshape(-1), 0, 0)
    return encoded


# schemes that connect over TCP, with the port each implies (tcp:// always names one)
_TCP_PORTS: dict[str, int | None] = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80,
                                     "https": 443, "tcp": None}
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")


def _reach_stream_host(url: str, name: str) -> None:
    """Connect to a TCP stream's host in Python before OpenCV opens it.

    OpenCV's FFmpeg backend opens under one process-wide lock: a camera whose host is off (a
    connect that hangs until the open timeout) kept every other camera and video file of the
    daemon from opening for that long, at each retry. A host that cannot be reached is found
    here, outside the lock; one that accepts the connection is left to OpenCV.

    Raises:
        SourceError: the host does not resolve, refuses, or does not answer in time.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _TCP_PORTS:
            return  # UDP (udp://, srt://): nothing to connect to
        host, port = parts.hostname, parts.port or _TCP_PORTS[scheme]
    except ValueError:
        return  # a malformed URL (a port out of range): OpenCV's open says so
    if not host or port is None:
        return
    if scheme.startswith("http") and any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return  # FFmpeg goes through the proxy: the camera may not be reachable directly
    try:
        socket.create_connection((host, port), timeout=OPEN_TIMEOUT_MS / 1000).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SourceError(f"camera {name!r} cannot be opened: {host}:{port} cannot be "
                          f"reached ({reason}; check the address, the network and that "
                          "the camera is on)") from None


@contextlib.contextmanager
def _fifo_writer_waited(path: str, name: str) -> Iterator[None]:
    """Around OpenCV's open of ``path``: when it is a FIFO, wait for its writer here first.

    OpenCV's FFmpeg backend opens every capture under one process-wide lock. A FIFO that no
    program writes to blocks open(2), and so every other camera and video file of the daemon
    could not open either (measured with OpenCV 5.1: a video file's open waited as long as
    the FIFO's). Here the wait is a poll(2) on a non-blocking descriptor, which holds no lock:
    the FIFO's pipeline stalls alone (the watchdog sees its heartbeat age), the others run.

    Until the block ends, a reader's end stays open (a writer never finds the FIFO without a
    reader) and, once data is there, a writer's end too: OpenCV's blocking open(2) then
    returns at once even when the program that fed the FIFO has already written and left.

    Raises:
        SourceError: a writer came and went without sending anything.
    """
    fds: list[int] = []
    try:
        with contextlib.suppress(OSError):  # not there or not readable: OpenCV's open says so
            if stat.S_ISFIFO(os.stat(path).st_mode):
                fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        if fds:
            _wait_for_data(fds[0], name)
            fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _wait_for_data(fd: int, name: str) -> None:
    """Until the FIFO ``fd`` has data; a warning once it has waited the open timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    warn_at: float | None = time.monotonic() + OPEN_TIMEOUT_MS / 1000
    while True:
        events = poller.poll(500)
        if any(ev & select.POLLIN for _, ev in events):
            return
        if events:  # POLLHUP without data: a writer came and went without sending
            raise SourceError(f"camera {name!r}: the program writing to the FIFO closed it "
                              "without sending a frame")
        if warn_at is not None and time.monotonic() >= warn_at:
            warn_at = None
            logger.warning("camera %s: nothing has written to the FIFO for %.0f s; still "
                           "waiting (start the program that feeds it)", name,
                           OPEN_TIMEOUT_MS / 1000)


_opencv_note = threading.Lock()
_opencv_noted = False


def _note_quiet_opencv() -> None:
    """Say once per process that OpenCV's own warnings are quieted (edge_agent/__init__.py)."""
    global _opencv_noted
    with _opencv_note:
        if _opencv_noted:
            return
        _opencv_noted = True
    level = os.environ.get("OPENCV_LOG_LEVEL", "")
    if level.upper() in {"ERROR", "FATAL", "SILENT", "DISABLED", "0", "1", "2"}:
        logger.info("OpenCV's own warnings are quieted (OPENCV_LOG_LEVEL=%s); set "
                    "OPENCV_LOG_LEVEL=WARNING to see why it cannot open a camera", level)


def mjpeg_first_packet(cap: cv2.VideoCapture) -> EncodedImage | None:
    """Switch an FFmpeg capture of an MJPEG stream or file to raw packets and return the first
    one, checked to decode as a JPEG of the size its header says; None (the capture may have
    been switched) when the stream is not MJPEG or its packets are not decodable JPEGs."""
    # a capture that did not open (an empty or truncated file) reports -1: not MJPEG
    fourcc = (int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little")
    if fourcc.upper() not in _MJPEG_FOURCCS or not cap.set(cv2.CAP_PROP_FORMAT, -1):
        return None
    ok, packet = cap.read()
    if not ok or packet is None:
        return None
    encoded = EncodedImage.jpeg(packet)
    if encoded is None or encoded.width * encoded.height > MAX_FRAME_PIXELS:
        return None
    full = encoded.decode()
    if full is None or full.shape[:2] != (encoded.height, encoded.width):
        return None
    return encoded

class OpencvCameraSource:
    """A live camera or stream: a reader thread keeps only the newest frame.

    Args:
        cfg: the camera config (uri, optional width, height, fourcc and fps).

    Attributes:
        dropped: frames grabbed but replaced by a newer one before the pipeline took them.
        grabbed: frames the reader thread grabbed since open().
        live: always True.
        defer_decode: hand frames over still encoded (``Frame.encoded``), so that a motion
            gate looks at a cheap reduced copy first and frames dropped for newer ones are
            never decoded: an MJPEG stream opened through FFmpeg (``http://``, ``rtsp://``...)
            as its JPEG packets; a V4L2 device that delivers YUYV, NV12 or MJPEG as its raw
            buffers (``CAP_PROP_CONVERT_RGB`` off; the full conversion is the one OpenCV
            would have made). Set by the pipeline before open(); any other format is decoded
            as before.
        raw_packets: whether this open() reads JPEG packets from FFmpeg.
        raw_format: the V4L2 format this open() hands over undecoded (``yuyv``, ``nv12`` or
            ``jpeg``), or None.
    """

    live = True
    bad_lines = 0  # no text lines: nothing malformed to skip
    defer_decode = False

    def __init__(self, cfg: CameraSourceConfig) -> None:
        self.cfg = cfg
        self.name = display_uri(cfg.uri)  # safe to log: no credentials
        self.dropped = 0
        self.grabbed = 0
        self._index = 0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.raw_packets = False
        self.raw_format: str | None = None
        self._size = (0, 0)

    def __repr__(self) -> str:
        return f"OpencvCameraSource({self.name!r})"

    @property
    def running(self) -> bool:
        """Whether the reader thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def open(self) -> None:
        """Open the device or stream and start the reader thread.

        Raises:
            SourceError: the device or stream cannot be opened.
        """
        self.close()
        target, api = capture_target(self.cfg.uri)
        params: list[int] = []
        if isinstance(target, str) and "://" in target:
            _reach_stream_host(target, self.name)  # once: open() may capture twice
        if api == cv2.CAP_FFMPEG:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        cap = self._capture(target, api, params)
        first: Frame | None = None
        self.raw_packets = False
        if self.defer_decode and api == cv2.CAP_FFMPEG:
            first = self._first_packet(cap)
            if first is None:  # not MJPEG, or packets that are not whole JPEGs: as before
                cap.release()
                cap = self._capture(target, api, params)
        self._configure(cap)
        self.raw_format = None
        if self.defer_decode and api == cv2.CAP_V4L2:
            first = self._first_raw_buffer(cap)
        self._stop.clear()
        with self._cond:
            self._latest = first
            self._error = None
        self.grabbed = int(first is not None)
        # from here on the reader thread owns (and finally releases) the capture
        logger.info("camera %s opened (%s, %dx%d%s)", self.name, cap.getBackendName(),
                    int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    f", {self.raw_format} buffers decoded on demand" if self.raw_format else "")
        self._thread = threading.Thread(target=self._reader, args=(cap,), daemon=True,
                                        name=f"camera-reader[{self.name}]")
        self._thread.start()

    def _capture(self, target: str | int, api: int, params: list[int]) -> cv2.VideoCapture:
        if isinstance(target, str) and api == cv2.CAP_FFMPEG and "://" not in target:
            with _fifo_writer_waited(target, self.name):
                cap = cv2.VideoCapture(target, api, params)
        else:
            cap = cv2.VideoCapture(target, api, params)
        if not cap.isOpened():
            cap.release()
            _note_quiet_opencv()
            hint = ("check that the device exists and is not used by another program"
                    if api == cv2.CAP_V4L2 else "check the URL, the network and the credentials")
            raise SourceError(f"camera {self.name!r} cannot be opened ({hint})")
        return cap

    def _first_packet(self, cap: cv2.VideoCapture) -> Frame | None:
        """Switch an MJPEG stream to FFmpeg's raw packets; the first packet as a frame, or
        None when the stream is not MJPEG or its packets do not decode as JPEGs."""
        encoded = mjpeg_first_packet(cap)
        if encoded is None:
            return None
        self.raw_packets = True
        frame = Frame(index=self._index, ts=time.time(), encoded=encoded)
        self._index += 1
        return frame

    def _first_raw_buffer(self, cap: cv2.VideoCapture) -> Frame | None:
        """Switch a V4L2 device that delivers YUYV, NV12 or MJPEG to its raw buffers; the
        first buffer as a frame, or None (conversion left on) for any other format or a
        buffer that does not look like the format says."""
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        kind = _V4L2_RAW.get(fourcc)
        if kind is None or not cap.set(cv2.CAP_PROP_CONVERT_RGB, 0):
            return None
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        ok, buffer = cap.read()
        encoded = _raw_buffer(kind, buffer, size) if ok and buffer is not None else None
        if encoded is None:
            logger.info("camera %s: %s buffers of shape %s are not what OpenCV converts; "
                        "decoding every frame", self.name, fourcc.decode("ascii", "replace"),
                        None if buffer is None else buffer.shape)
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 1)
            return None
        self.raw_format, self._size = kind, size
        frame = Frame(index=self._index, ts=time.time(), encoded=encoded)
        self._index += 1
        return frame

    def _configure(self, cap: cv2.VideoCapture) -> None:
        cfg = self.cfg
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*cfg.fourcc))
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        # a device-side queue adds latency; ask for the smallest (ignored where unsupported)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def _reader(self, cap: cv2.VideoCapture) -> None:
        try:
            while not self._stop.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    if not self._stop.is_set():
                        self._fail(f"camera {self.name!r} stopped delivering frames "
                                   f"(unplugged, stream ended or lost) after "
                                   f"{self.grabbed} frames")
                    return
                if self.raw_packets or self.raw_format == "jpeg":
                    # a damaged JPEG fails at decode; the pipeline skips and counts it
                    frame = Frame(index=self._index, ts=time.time(),
                                  encoded=mjpeg_packet(image))
                elif self.raw_format is not None:
                    encoded = _raw_buffer(self.raw_format, image, self._size)
                    if encoded is None:
                        self._fail(f"camera {self.name!r} delivered a {self.raw_format} "
                                   f"buffer of shape {image.shape} for "
                                   f"{self._size[0]}x{self._size[1]}")
                        return
                    frame = Frame(index=self._index, ts=time.time(), encoded=encoded)
                else:
                    frame = Frame(index=self._index, ts=time.time(), image=image)
                self._index += 1
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.grabbed += 1
                    self._cond.notify_all()
        except cv2.error as exc:
            self._fail(f"camera {self.name!r} failed: {exc}")
        except Exception:  # the reader's loop boundary: report, let the pipeline reopen
            logger.exception("camera %s: reader thread failed", self.name)
            self._fail(f"camera {self.name!r}: reader thread failed (see the log)")
        finally:
            cap.release()

    def _fail(self, message: str) -> None:
        with self._cond:
            self._error = message
            self._cond.notify_all()

    def read(self, timeout: float) -> Frame | None:
        """The newest frame not handed over yet, or None after ``timeout`` seconds.

        Raises:
            SourceError: the camera failed or vanished, or the source is not open.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None:
                if self._error is not None:
                    raise SourceError(self._error)
                if self._thread is None:
                    raise SourceError(f"camera {self.name!r} is not open")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        """Stop and join the reader thread, which releases the device. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("camera %s: reader thread did not stop within %.0f s",
                           self.name, JOIN_TIMEOUT_S)
        with self._cond:
            self._latest = None


class OpencvVideoSource(PacedFileSource):
    """A video file: every frame in order, paced at its own fps unless ``fps`` says otherwise.

    Args:
        cfg: the video config (uri, fps, loop).

    Attributes:
        dropped: always 0 (a file source never drops frames).
        live: always False.
        native_fps: the frame rate the file declares (after open()).
        loops: how many times the file restarted (``loop: true``).
        defer_decode: for an MJPEG file, hand frames over as their JPEG packets
            (``Frame.encoded``, FFmpeg's raw packet mode) so a motion gate can look at a
            DCT-scaled decode first; set by the pipeline, before open(), when it has a gate.
            Other codecs are decoded as before.
        raw_packets: whether this open() reads JPEG packets (``defer_decode`` on an MJPEG file
            whose first packet decodes as a JPEG).
    """

    live = False
    bad_lines = 0  # no text lines: nothing malformed to skip
    defer_decode = False

    def __init__(self, cfg: VideoSourceConfig) -> None:
        self.cfg = cfg
        self.path = _file_path(cfg.uri)
        self.name = display_uri(self.path)  # safe to log: no credentials
        self.dropped = 0
        self.loops = 0
        self.native_fps = 0.0
        self._cap: cv2.VideoCapture | None = None
        self._in_pass = 0  # frames read in the current pass over the file
        self.raw_packets = False
        self._lock = threading.Lock()
        self._init_pacing(self._lock)  # read() prefetches under it; close() takes it too

    def __repr__(self) -> str:
        return f"OpencvVideoSource({self.name!r})"

    def _open_capture(self) -> cv2.VideoCapture:
        is_url = "://" in self.path
        if not is_url and not Path(self.path).is_file():
            raise SourceError(f"video file {self.name} does not exist (check the source uri)")
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"video file {self.name} cannot be read (not a video, or a "
                              "codec this OpenCV build lacks)")
        if self.raw_packets:
            cap.set(cv2.CAP_PROP_FORMAT, -1)
        return cap

    def _packets_usable(self) -> bool:
        """Whether the file is MJPEG and FFmpeg hands over its packets as decodable JPEGs
        (AVI1-style packets without Huffman tables, for one, are not: decoded as before)."""
        if not self.defer_decode:
            return False
        probe = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        try:
            return mjpeg_first_packet(probe) is not None
        finally:
            probe.release()

    def open(self) -> None:
        """Open the file and start the pacing schedule.

        Raises:
            SourceError: the file is missing or not a readable video.
        """
        self.close()
        self.raw_packets = False
        self.raw_packets = self._packets_usable()
        cap = self._open_capture()
        with self._lock:
            self._cap = cap
            self._closed.clear()
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = fps if 0 < fps < 1000 else DEFAULT_FILE_FPS
        rate = self.native_fps if self.cfg.fps is None else self.cfg.fps
        self._pacer = FramePacer(rate, self._closed)
        self._in_pass = 0
        self._pending = None
        logger.info("video %s opened (%.1f fps in the file, delivered at %s)", self.name,
                    self.native_fps, f"{rate:g} fps" if rate else "the pipeline's pace")

    def _next_image(self) -> np.ndarray | EncodedImage:
        if self._cap is None:
            raise SourceError(f"video file {self.name} is not open")
        ok, image = self._cap.read()
        if ok and image is not None:
            self._in_pass += 1
            return mjpeg_packet(image) if self.raw_packets else image
        if self._in_pass == 0:
            raise SourceError(f"video file {self.name} has no readable frames")
        if not self.cfg.loop:
            raise EOFError(f"video file {self.name} ended after {self._index} frames")
        # reopening is more reliable across containers than seeking back to frame 0
        self._cap.release()
        self._cap = self._open_capture()
        self.loops += 1
        self._in_pass = 0
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError(f"video file {self.name} has no readable frames")
        self._in_pass = 1
        return mjpeg_packet(image) if self.raw_packets else image

    def close(self) -> None:
        """Release the file; a read() waiting on another thread returns None. Safe twice."""
        self._closed.set()
        with self._lock:
            cap, self._cap = self._cap, None
            if cap is not None:
                cap.release()
            self._pending = None
