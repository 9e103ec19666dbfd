"""Frames whose full decode can wait: JPEG bytes and raw YUYV / NV12 camera buffers.

The motion gate compares a copy about 160 pixels wide; decoding a 640x480 frame in full only
to shrink it again is most of what a gated pipeline spends on a still scene. An
:class:`EncodedImage` gives the gate a small BGR copy cheaply and the full frame only when
asked:

- JPEG: libjpeg's DCT scaling (``cv2.IMREAD_REDUCED_COLOR_2/4/8``) decodes 1/2, 1/4 or 1/8 of
  each axis straight from the coefficients, at a fraction of a full decode's cost;
- YUYV (4:2:2 packed) and NV12 (4:2:0 planar): every n-th pixel of the planes is taken
  (no colour conversion of the pixels the gate never looks at).

The gate always measures the reduced copy of such frames, so its background and decisions do
not depend on whether the full frame was decoded too (``tests/test_encoded.py`` shows the
same motion episodes as with full decodes on the synthetic clips).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.errors import SourceError

# libjpeg's DCT scaling: the reduced-decode flags by factor
_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}
JPEG_MAGIC = b"\xff\xd8"
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})


def reduce_factor(width: int, target: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps ``width / factor`` at least ``target`` pixels."""
    factor = 1
    for f in (2, 4, 8):
        if width // f >= target:
            factor = f
    return factor


def scale_factor(width: int, height: int, min_width: int, min_height: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides at least ``min_width`` x ``min_height``."""
    factor = 1
    for f in (2, 4, 8):
        if width // f >= min_width and height // f >= min_height:
            factor = f
    return factor


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header (SOFn), or None when there is none.

    Reads the marker segments only (no decode): a few microseconds per frame.
    """
    buf = data.tobytes() if isinstance(data, np.ndarray) else data
    n = len(buf)
    if n < 4 or buf[:2] != JPEG_MAGIC:
        return None
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:  # stray bytes between segments: skip, as libjpeg does
            i += 1
            continue
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers: no length
            i += 2
            continue
        length = (buf[i + 2] << 8) | buf[i + 3]
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = (buf[i + 5] << 8) | buf[i + 6]
            width = (buf[i + 7] << 8) | buf[i + 8]
            return (width, height) if width and height else None
        if marker == 0xDA:  # start of scan before any frame header: not a JPEG we can size
            return None
        i += 2 + length
    return None


class EncodedImage:
    """One frame kept as its encoded bytes until someone needs the pixels.

    Build with :meth:`jpeg`, :meth:`yuyv` or :meth:`nv12`.

    Attributes:
        kind: ``jpeg``, ``yuyv`` or ``nv12``.
        width: the full frame's width in pixels.
        height: the full frame's height in pixels.
    """

    __slots__ = ("_data", "_full", "height", "kind", "width")

    def __init__(self, kind: str, data: np.ndarray, width: int, height: int) -> None:
        self.kind = kind
        self._data = data
        self.width = width
        self.height = height
        self._full: np.ndarray | None = None

    @classmethod
    def jpeg(cls, data: bytes | np.ndarray) -> EncodedImage | None:
        """A JPEG frame (a file's bytes, an MJPEG packet); None when it is not a JPEG."""
        size = jpeg_size(data)
        if size is None:
            return None
        array = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data.reshape(-1)
        return cls("jpeg", array, size[0], size[1])

    @classmethod
    def yuyv(cls, data: np.ndarray, width: int, height: int) -> EncodedImage:
        """A YUYV (YUY2, 4:2:2 packed) frame: ``width * height * 2`` bytes."""
        if data.size != width * height * 2:
            raise SourceError(f"YUYV frame of {data.size} bytes, expected {width}x{height}x2")
        return cls("yuyv", data.reshape(height, width, 2), width, height)

    @classmethod
    def nv12(cls, data: np.ndarray, width: int, height: int) -> EncodedImage:
        """An NV12 (4:2:0, Y plane then interleaved UV) frame: ``width * height * 3 / 2`` bytes."""
        if width % 2 or height % 2 or data.size != width * height * 3 // 2:
            raise SourceError(f"NV12 frame of {data.size} bytes, expected {width}x{height}x1.5 "
                              "with even sides")
        return cls("nv12", data.reshape(height * 3 // 2, width), width, height)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The full frame's shape as a decoded image would have it, (H, W, 3)."""
        return (self.height, self.width, 3)

    @property
    def decoded(self) -> bool:
        """Whether :meth:`decode` already ran."""
        return self._full is not None

    def decode(self) -> np.ndarray | None:
        """The full frame, (H, W, 3) uint8 BGR (decoded once); None when the bytes are corrupt."""
        if self._full is None:
            if self.kind == "jpeg":
                try:
                    self._full = cv2.imdecode(self._data, cv2.IMREAD_COLOR)
                except cv2.error:
                    return None
            elif self.kind == "yuyv":
                self._full = cv2.cvtColor(self._data, cv2.COLOR_YUV2BGR_YUYV)
            else:
                self._full = cv2.cvtColor(self._data, cv2.COLOR_YUV2BGR_NV12)
        return self._full

    def at_least(self, min_width: int, min_height: int) -> np.ndarray | None:
        """The frame decoded as small as JPEG DCT scaling allows while both sides stay at least
        ``min_width`` x ``min_height`` (a model's input size), (h, w, 3) uint8 BGR; None when
        the bytes are corrupt.

        Only JPEG frames are decoded smaller (1/2, 1/4 or 1/8: each output pixel comes from
        the coefficients of its 2x2, 4x4 or 8x8 block, an area average rather than the
        aliasing of a linear shrink); raw YUYV/NV12 frames and frames too small to shrink come
        back in full (:meth:`decode`).
        """
        factor = scale_factor(self.width, self.height, min_width, min_height)
        if factor == 1 or self.kind != "jpeg":
            return self.decode()
        try:
            scaled: np.ndarray | None = cv2.imdecode(self._data, _JPEG_REDUCED[factor])
        except cv2.error:
            return None
        return scaled

    def reduced(self, min_width: int) -> np.ndarray | None:
        """A copy at 1/2, 1/4 or 1/8 of each side, at least ``min_width`` wide where the frame
        allows, (h, w, 3) uint8 BGR; None when the bytes are corrupt.

        Costs a fraction of :meth:`decode`: DCT scaling for JPEG, plane subsampling for raw.
        """
        factor = reduce_factor(self.width, min_width)
        if factor == 1:
            return self.decode()
        if self.kind == "jpeg":
            try:
                small: np.ndarray | None = cv2.imdecode(self._data, _JPEG_REDUCED[factor])
            except cv2.error:
                return None
            return small
        # a smaller frame of the same format (every factor-th line, and every factor-th pixel
        # pair or pixel: only those are read), converted the way
        # decode() converts (the camera's limited-range BT.601): the full frame shrunk
        h, w = self.height // factor & ~1, self.width // factor & ~1
        if self.kind == "yuyv":
            # as pairs of pixels (Y0 U Y1 V): each kept pair keeps its own chroma
            pairs = self._data.reshape(self.height, self.width // 2, 4)
            small = cv2.resize(pairs, (w // 2, h), interpolation=cv2.INTER_NEAREST)
            bgr: np.ndarray = cv2.cvtColor(small.reshape(h, w, 2), cv2.COLOR_YUV2BGR_YUYV)
        else:
            luma = self._data[:self.height:factor, ::factor][:h, :w]
            uv = self._data[self.height:].reshape(self.height // 2, self.width // 2, 2)
            chroma = cv2.resize(uv, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)
            bgr = cv2.cvtColor(np.vstack((luma, chroma.reshape(h // 2, w))),
                               cv2.COLOR_YUV2BGR_NV12)
        return bgr
