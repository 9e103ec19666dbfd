"""OpencvCameraSource: missing devices, and live behaviour on a video file opened as a stream."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import CameraSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.camera import OpencvCameraSource, capture_target, display_uri
from edge_agent.sources.encoded import EncodedImage
from tests.sources.clips import SIZE, frame_number, level, write_numbered_video


def _camera(uri: str | int, **kw: object) -> OpencvCameraSource:
    return OpencvCameraSource(CameraSourceConfig(type="camera", uri=uri, **kw))


def _wait_until_reader_ends(source: OpencvCameraSource) -> None:
    deadline = time.monotonic() + 10.0
    while source.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not source.running


@pytest.mark.parametrize("uri", ["/dev/video57", 57, "57"])
def test_missing_device_is_a_source_error(uri: str | int) -> None:
    source = _camera(uri, width=640, height=480, fourcc="MJPG", fps=15)
    with pytest.raises(SourceError, match="cannot be opened"):
        source.open()
    assert not source.running
    with pytest.raises(SourceError, match="not open"):
        source.read(0.1)
    source.close()


def test_unreachable_stream_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot be opened"):
        _camera(f"file://{tmp_path}/missing.mp4").open()


def test_capture_targets() -> None:
    assert capture_target(0) == (0, cv2.CAP_V4L2)
    assert capture_target(" 2") == (2, cv2.CAP_V4L2)
    assert capture_target("/dev/video1") == ("/dev/video1", cv2.CAP_V4L2)
    assert capture_target("rtsp://cam/stream") == ("rtsp://cam/stream", cv2.CAP_FFMPEG)
    assert capture_target("HTTPS://cam/mjpg") == ("HTTPS://cam/mjpg", cv2.CAP_FFMPEG)
    assert capture_target("file:///x/y.mp4") == ("/x/y.mp4", cv2.CAP_FFMPEG)


def test_newest_frame_wins_and_drops_are_counted(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "stream.avi", 40)
    source = _camera(f"file://{path}")
    assert source.live is True
    source.open()
    try:
        _wait_until_reader_ends(source)  # the whole "stream" arrived while nobody read
        frame = source.read(1.0)
        assert frame is not None and frame.image is not None
        assert frame.index == 39 and frame_number(frame.image) == 39
        assert source.dropped == 39 and source.grabbed == 40
        with pytest.raises(SourceError, match="stopped delivering frames"):
            source.read(1.0)  # the stream ended: the pipeline reopens with backoff
    finally:
        source.close()


def test_concurrent_reader_sees_rising_indices(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "stream.avi", 60)
    source = _camera(str(path))
    source.open()
    seen: list[int] = []
    try:
        with pytest.raises(SourceError):
            while True:
                frame = source.read(5.0)
                if frame is not None:
                    assert frame.image is not None
                    assert frame_number(frame.image) == frame.index
                    seen.append(frame.index)
    finally:
        source.close()
    assert seen == sorted(set(seen)) and seen
    assert len(seen) + source.dropped == 60


def test_close_joins_the_reader_and_reopen_works(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "stream.avi", 20)
    source = _camera(str(path))
    before = set(threading.enumerate())
    source.open()
    source.close()
    assert not source.running
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
    source.open()  # the pipeline's reopen after a failure
    try:
        _wait_until_reader_ends(source)
        frame = source.read(1.0)
        assert frame is not None and frame.image is not None
        assert frame_number(frame.image) == 19
        assert frame.index >= 19  # indices keep counting every frame produced since creation
    finally:
        source.close()
        source.close()


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[str]:
    """Serve ``tmp_path`` over HTTP on a free loopback port; yields the base URL."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(tmp_path)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def test_http_stream_through_ffmpeg(tmp_path: Path, http_folder: str) -> None:
    write_numbered_video(tmp_path / "stream.avi", 30)
    source = _camera(f"{http_folder}/stream.avi")
    source.open()
    seen: list[int] = []
    try:
        with pytest.raises(SourceError, match="stopped delivering"):
            while True:
                frame = source.read(5.0)
                if frame is not None and frame.image is not None:
                    seen.append(frame_number(frame.image))
    finally:
        source.close()
    assert seen and seen == sorted(seen) and seen[-1] == 29
    assert len(seen) + source.dropped == 30


def test_http_stream_that_does_not_exist(http_folder: str) -> None:
    with pytest.raises(SourceError, match="cannot be opened"):
        _camera(f"{http_folder}/missing.avi").open()


def test_credentials_never_reach_logs_or_errors() -> None:
    assert display_uri("rtsp://admin:secret@10.0.0.5:554/stream") == "rtsp://***@10.0.0.5:554/stream"
    assert display_uri("http://cam/a@b") == "http://cam/a@b"  # an @ in the path is not userinfo
    assert display_uri(0) == "0"
    source = _camera("rtsp://admin:secret@127.0.0.1:9/none")
    assert "secret" not in repr(source) and "secret" not in source.name


def test_http_mjpeg_stream_hands_over_jpeg_packets_when_asked(tmp_path: Path,
                                                              http_folder: str) -> None:
    """defer_decode (a gated pipeline): an MJPEG stream through FFmpeg gives its packets,
    which decode to the same frames, in order; the first packet, read to check the stream,
    is not lost."""
    write_numbered_video(tmp_path / "stream.avi", 30)
    source = _camera(f"{http_folder}/stream.avi")
    source.defer_decode = True
    source.open()
    seen: list[int] = []
    try:
        assert source.raw_packets
        with pytest.raises(SourceError, match="stopped delivering"):
            while True:
                frame = source.read(5.0)
                if frame is None:
                    continue
                assert frame.image is None and frame.encoded is not None
                image = frame.encoded.decode()
                assert image is not None
                seen.append(frame_number(image))
    finally:
        source.close()
    assert seen and seen == sorted(seen) and seen[-1] == 29
    assert len(seen) + source.dropped == 30


def test_non_mjpeg_stream_is_decoded_as_before_when_asked(tmp_path: Path,
                                                          http_folder: str) -> None:
    path = tmp_path / "stream.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 25.0, SIZE)
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((SIZE[1], SIZE[0], 3), level(i), np.uint8))
    writer.release()
    source = _camera(f"{http_folder}/stream.avi")
    source.defer_decode = True
    source.open()
    try:
        assert not source.raw_packets
        frame = None
        while frame is None:
            frame = source.read(5.0)
        assert frame.image is not None and frame.encoded is None
    finally:
        source.close()


def _open_in_background(source: OpencvCameraSource) -> tuple[threading.Thread, list[object]]:
    """Start ``source.open()`` on a thread; its outcome list gets "opened" or the SourceError."""
    outcome: list[object] = []

    def run() -> None:
        try:
            source.open()
            outcome.append("opened")
        except SourceError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"test-open[{source.name}]")
    thread.start()
    return thread, outcome


def _feed_fifo(fifo: Path, data: bytes) -> threading.Thread:
    def feed() -> None:
        with open(fifo, "wb") as out:  # blocks until the source reads
            out.write(data)
    thread = threading.Thread(target=feed, daemon=True, name="test-fifo-writer")
    thread.start()
    return thread


def test_a_fifo_without_a_writer_stalls_only_its_own_camera(tmp_path: Path) -> None:
    # OpenCV opens FFmpeg captures under one process-wide lock: a FIFO blocked in open(2)
    # inside OpenCV kept every other camera and video of the daemon from opening
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    clip = write_numbered_video(tmp_path / "stream.avi", 20)
    waiting = _camera(str(fifo))
    opener, outcome = _open_in_background(waiting)
    time.sleep(0.5)  # the FIFO's open is waiting by now (it would wait for ever)
    other = _camera(str(clip))
    second, opened = _open_in_background(other)
    try:
        second.join(20.0)
        assert opened == ["opened"], "a second camera could not open while the FIFO waited"
        assert outcome == []
        # the program that feeds the FIFO starts: the waiting camera opens and delivers
        writer = _feed_fifo(fifo, clip.read_bytes())
        opener.join(20.0)
        assert outcome == ["opened"], outcome
        frame = waiting.read(10.0)
        assert frame is not None and frame.image is not None
        writer.join(20.0)
    finally:
        other.close()
        waiting.close()
        if opener.is_alive():  # a writer that opens and closes wakes a blocked open(2)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_writer_that_leaves_without_data_is_a_source_error(tmp_path: Path) -> None:
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    source = _camera(str(fifo))
    opener, errors = _open_in_background(source)
    deadline = time.monotonic() + 10.0
    while opener.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # ENXIO until the source holds its end open
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        opener.join(0.1)
    assert not opener.is_alive()
    assert len(errors) == 1 and "without sending a frame" in str(errors[0]), errors
    source.close()


def test_a_refused_stream_says_which_host_and_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(SourceError, match=f"127.0.0.1:{port} cannot be reached") as err:
            _camera(f"rtsp://user:secret@127.0.0.1:{port}/live").open()
    assert "secret" not in str(err.value)


def test_a_stream_host_that_does_not_answer_stalls_only_its_own_camera(tmp_path: Path) -> None:
    # OpenCV opens FFmpeg captures under one process-wide lock: a connect that hangs inside it
    # kept every other camera and video of the daemon from opening until the open timeout
    with socket.socket() as server, socket.socket() as queued:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # never accepted: once one connection waits, SYNs are dropped
        port = server.getsockname()[1]
        queued.connect(("127.0.0.1", port))
        silent = _camera(f"rtsp://127.0.0.1:{port}/live")
        opener, errors = _open_in_background(silent)
        time.sleep(0.5)  # the silent camera's connect is hanging by now
        other = _camera(str(write_numbered_video(tmp_path / "stream.avi", 20)))
        second, opened = _open_in_background(other)
        try:
            second.join(30.0)
            assert opened == ["opened"], opened
            assert opener.is_alive(), "the silent camera's open ended before the other's"
            opener.join(30.0)
            assert len(errors) == 1 and "no answer" in str(errors[0]), errors
        finally:
            other.close()
            silent.close()


def test_an_http_stream_behind_a_proxy_is_left_to_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    # FFmpeg reaches http(s) cameras through $http_proxy: a direct connect proves nothing
    from edge_agent.sources.camera import _PROXY_VARIABLES, _reach_stream_host

    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(SourceError, match="cannot be reached"):
            _reach_stream_host(f"http://127.0.0.1:{port}/mjpg", "cam")
        monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
        _reach_stream_host(f"http://127.0.0.1:{port}/mjpg", "cam")  # no error: not checked
        with pytest.raises(SourceError, match="cannot be reached"):
            _reach_stream_host(f"rtsp://127.0.0.1:{port}/live", "cam")  # RTSP: no proxy


class _BufferCapture:
    """Stands in for an opened V4L2 capture in raw mode: hands out the given buffers, then
    ends (the reader's logic only; tests/sources/test_v4l2_device.py runs a real driver)."""

    def __init__(self, buffers: list[np.ndarray]) -> None:
        self._buffers = list(buffers)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self._buffers.pop(0)) if self._buffers else (False, None)

    def release(self) -> None:
        pass


def test_a_damaged_mjpeg_buffer_from_a_v4l2_camera_is_handed_on_not_fatal() -> None:
    good = np.frombuffer(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1], np.uint8)
    damaged = np.frombuffer(b"\xff\xd8garbage", np.uint8)
    source = _camera("/dev/video0")
    source.raw_format, source._size = "jpeg", (64, 48)
    source._thread = threading.current_thread()  # read() needs an open source
    source._reader(_BufferCapture([good, damaged, good]))  # type: ignore[arg-type]
    # all three were handed on (the damaged one fails at decode, where the pipeline counts
    # it); the source ended only because the buffers did
    assert source.grabbed == 3 and source.dropped == 2
    frame = source.read(0.1)
    assert frame is not None and frame.encoded is not None
    decoded = frame.encoded.decode()
    assert decoded is not None and decoded.shape == (48, 64, 3)
    with pytest.raises(SourceError, match="stopped delivering frames"):
        source.read(0.1)
    assert EncodedImage("jpeg", damaged, 0, 0).decode() is None
