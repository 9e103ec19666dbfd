"""Small frozen values that cross stage boundaries.

Coordinate convention, defined once here: a box is ``(xmin, ymin, xmax, ymax)`` as floats,
normalised to the *original* frame (0..1 on both axes, origin top-left). Decoders map model
coordinates back through :class:`Transform` before they build a :class:`Detection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

Box = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)`` normalised to the original frame."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output tensor of a model.

    Attributes:
        name: the tensor name (exporters name them differently: never rely on it).
        index: the interpreter's tensor index.
        shape: the static shape, e.g. (1, 300, 300, 3).
        dtype: numpy dtype name: "uint8", "int8", "float32", "int64", ...
        scale: quantisation scale (per-tensor; the first channel's for per-channel);
            0.0 when the tensor is not quantised.
        zero_point: quantisation zero point.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        """Whether values are stored as integers with a scale and zero point."""
        return self.scale != 0.0 and self.dtype in {"uint8", "int8", "int16", "int32"}

    def dequantize(self, array: np.ndarray) -> np.ndarray:
        """``array`` as float32 real values, by this tensor's own scale and zero point."""
        if self.quantized:
            shifted = array.astype(np.float32) - np.float32(self.zero_point)
            real: np.ndarray = shifted * np.float32(self.scale)
            return real
        return array.astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The inputs and outputs of a loaded model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class EncodedPixels(Protocol):
    """A frame still in its encoded form (JPEG bytes, a raw YUYV/NV12 buffer): the motion gate
    looks at a cheap reduced decode, the full frame is decoded only when it is needed
    (:class:`edge_agent.sources.encoded.EncodedImage`)."""

    @property
    def width(self) -> int:
        """The full frame's width in pixels."""
        ...

    @property
    def height(self) -> int:
        """The full frame's height in pixels."""
        ...

    def decode(self) -> np.ndarray | None:
        """The full frame, (H, W, 3) uint8 BGR; None when the bytes are corrupt."""
        ...

    def at_least(self, min_width: int, min_height: int) -> np.ndarray | None:
        """The frame decoded as small as possible with both sides at least ``min_width`` x
        ``min_height`` (JPEG DCT scaling; others in full); None when the bytes are corrupt."""
        ...

    def reduced(self, min_width: int) -> np.ndarray | None:
        """A copy at 1/2, 1/4 or 1/8 of each side (at least ``min_width`` wide where the frame
        allows), (h, w, 3) uint8 BGR; None when the bytes are corrupt."""
        ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit of input: an image (H, W, 3) uint8 BGR, or a sensor window (N, C) float32.

    Attributes:
        index: position in the source, from 0, rising by one per frame the source produced.
        ts: capture time, seconds since the epoch.
        image: the BGR image for camera-like sources, else None.
        data: the sensor window (samples, channels) for sensor sources, else None.
        timestamps: per-sample timestamps of a sensor window, when the source has them.
        encoded: the frame before decoding, when the source was asked to defer the decode
            (``defer_decode``, set by the pipeline); ``image`` is then None until the pipeline
            decodes it. When the pipeline decodes it at the model's scale (JPEG DCT scaling),
            ``image`` is that smaller decode and ``encoded`` stays: ``width`` and ``height``
            are still the full frame's, and ``encoded.decode()`` gives the full frame
            (as the camera delivered it: without the privacy masks the pipeline burned into
            ``image``).
    """

    index: int
    ts: float
    image: np.ndarray | None = None
    data: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    encoded: EncodedPixels | None = None

    @property
    def width(self) -> int:
        """Image width in pixels (sensor windows: number of samples); the full frame's when
        ``image`` is a decode at the model's scale."""
        if self.encoded is not None:
            return self.encoded.width
        if self.image is not None:
            return int(self.image.shape[1])
        return int(self.data.shape[0]) if self.data is not None else 0

    @property
    def height(self) -> int:
        """Image height in pixels (sensor windows: number of channels); the full frame's when
        ``image`` is a decode at the model's scale."""
        if self.encoded is not None:
            return self.encoded.height
        if self.image is not None:
            return int(self.image.shape[0])
        if self.data is not None:
            return int(self.data.shape[1]) if self.data.ndim > 1 else 1
        return 0


@dataclass(frozen=True, slots=True)
class Transform:
    """How a frame was mapped into the model input, so decoders can map boxes back.

    Model-normalised coordinates ``u`` (0..1 over the model input) map to frame-normalised ones
    by ``x = (u - pad_x) / scale_x``; a plain resize has pad 0 and scale 1, a letterbox has the
    padding fraction and the fraction of the input the image occupies.
    """

    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) xyxy boxes normalised to the model input onto the original frame, clipped."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0] = (boxes[:, 0] - self.pad_x) / self.scale_x
        out[:, 2] = (boxes[:, 2] - self.pad_x) / self.scale_x
        out[:, 1] = (boxes[:, 1] - self.pad_y) / self.scale_y
        out[:, 3] = (boxes[:, 3] - self.pad_y) / self.scale_y
        np.clip(out, 0.0, 1.0, out=out)
        return out


IDENTITY = Transform()


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object.

    Attributes:
        class_id: the model's class index.
        label: the label from the label file (or the class id as text).
        score: confidence in 0..1.
        box: normalised xyxy on the original frame.
        keypoints: optional normalised (x, y) points (BlazeFace: eyes, nose, mouth, ears).
        track_id: set by the tracker when tracking is on.
        attributes: extra decoder fields (for example recognised text); the privacy policy
            hashes or drops the ones it is told to.
        zones: the names of the configured zones the object is in (set by the zone tracker).
    """

    class_id: int
    label: str
    score: float
    box: Box
    keypoints: tuple[tuple[float, float], ...] = ()
    track_id: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    zones: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClassScore:
    """One class of a classification result."""

    class_id: int
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Inference:
    """What a decoder makes of one set of output tensors."""

    detections: tuple[Detection, ...] = ()
    classes: tuple[ClassScore, ...] | None = None
    values: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The identity of the model that produced a result."""

    name: str
    version: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Result:
    """One frame's result before the privacy policy: internal, never published as it is."""

    pipeline: str
    frame_index: int
    ts: float
    width: int
    height: int
    model: ModelRef
    inference_ms: float
    inference: Inference
    image: np.ndarray | None = None  # the frame, only kept when snapshots are on
    zone_names: tuple[str, ...] = ()  # the pipeline's zones: results then carry ``zones``


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A tracked object entered or left the scene, or a zone (``zone`` set), or loitered.

    ``dwell_s``: enter: how long the object was seen before it counted; leave: how long it
    stayed; loitering: how long it has been in the zone so far.
    """

    pipeline: str
    ts: float
    event: Literal["enter", "leave", "zone_enter", "zone_leave", "loitering"]
    track_id: int
    label: str
    class_id: int
    dwell_s: float
    box: Box
    zone: str | None = None


HealthEventKind = Literal[
    "camera_blocked", "camera_moved", "camera_defocused", "camera_dark", "camera_frozen",
    "camera_ok", "source_down", "source_up",
]


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """The camera's condition changed (camera_health.py) or its source went down or up.

    Attributes:
        figures: the check's measures as ``(name, value)`` pairs (brightness, contrast,
            sharpness, similarity); empty for source events.
    """

    pipeline: str
    ts: float
    event: HealthEventKind
    figures: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TargetChange:
    """A model moved from one execution target to another (failover, or back after a probe).

    Attributes:
        previous: the target that served before (None: none was serving).
        current: the target serving now.
        reason: why (the failure of ``previous``, or the probe that passed).
        ts: wall clock, seconds since the epoch.
    """

    previous: str | None
    current: str
    reason: str
    ts: float

