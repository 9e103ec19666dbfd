"""YAML configuration -> validated, frozen, typed objects.

The loader keeps the line of every key, so each problem is reported as one line
``FILE:LINE key.path: what is wrong (what is expected)``. Validators are pure: nothing here
touches the file system beyond reading the config file itself (the real-world checks, model
present, source opens, live in ``preflight.py``).
"""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.errors import ConfigError
from edge_agent.sensor_uri import uri_problems

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/config.yaml")

NAME_PATTERN = r"^[a-z0-9_-]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- MQTT

class TlsConfig(_Model):
    """TLS to the broker; on when ``ca_certs`` is set."""

    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = False  # skip hostname verification (never for production)

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together (set both or neither)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the connection uses TLS."""
        return self.ca_certs is not None


class OutboxConfig(_Model):
    """The durable outbox (SQLite WAL under state_dir)."""

    max_messages: PositiveInt = 100_000
    max_bytes: PositiveInt = 256 * 1024 * 1024
    # normal: survives a kill -9 entirely; on power loss the last commits may be lost.
    # full: survives power loss too, at one fsync per message.
    synchronous: Literal["normal", "full"] = "normal"
    # group commit: messages appended within this many ms share one transaction (committed
    # before any of them is handed to paho); 0 commits each message on its own
    commit_ms: float = Field(default=0.0, ge=0, le=50)


class MqttConfig(_Model):
    """The broker connection."""

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = Field(default="edge-agent", pattern=r"^[^#+\s]+$")
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig = TlsConfig()
    outbox: OutboxConfig = OutboxConfig()
    groups: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = ()
    stats_interval_s: PositiveFloat = 10.0
    reconnect_max_s: PositiveFloat = 60.0


# --------------------------------------------------------------------------- sources

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                  "srt://")
"""URL schemes a camera source hands to FFmpeg."""

SYNTHETIC_SCENES = ("mixed", "shapes", "people")
"""The scenes of the ``synthetic`` (image) source."""


def _scheme(uri: str) -> str | None:
    """The ``scheme`` of ``scheme://...``, else None (a path or a device)."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head and "/" not in head else None


class _SourceBase(_Model):
    fps: NonNegativeFloat | None = None  # None: the source's own rate; 0: as fast as taken


class CameraSourceConfig(_SourceBase):
    """A V4L2 camera (index or /dev/videoN) or an RTSP/HTTP stream through OpenCV/FFmpeg."""

    type: Literal["camera"]
    uri: str | int
    width: PositiveInt | None = None
    height: PositiveInt | None = None
    fourcc: str | None = Field(default=None, min_length=4, max_length=4)

    @field_validator("uri")
    @classmethod
    def _camera_uri(cls, value: str | int) -> str | int:
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"invalid camera index {value} (expected 0 or more)")
            return value
        text = value.strip()
        scheme = _scheme(text)
        if not text:
            raise ValueError("empty uri (expected a V4L2 index, /dev/videoN or a stream URL)")
        if scheme is not None and scheme != "file" and f"{scheme}://" not in STREAM_SCHEMES:
            raise ValueError(f"unknown stream scheme {scheme + '://'!r} (expected "
                             f"{', '.join(STREAM_SCHEMES)}, a V4L2 index or /dev/videoN)")
        return value


class _FileSourceBase(_SourceBase):
    uri: str
    loop: bool = False
    what: ClassVar[str] = "a file"  # for the error message

    @field_validator("uri")
    @classmethod
    def _file_uri(cls, value: str) -> str:
        return _local_uri(value, cls.what)


class VideoSourceConfig(_FileSourceBase):
    """A video file; paced at the file's fps unless ``fps`` says otherwise."""

    type: Literal["video"]
    what: ClassVar[str] = "a video file"


class ImagesSourceConfig(_FileSourceBase):
    """A folder or glob of images, in sorted order."""

    type: Literal["images"]
    what: ClassVar[str] = "a folder or glob of images"


def _local_uri(value: str, what: str) -> str:
    scheme = _scheme(value.strip())
    if not value.strip():
        raise ValueError(f"empty uri (expected {what})")
    if scheme is not None and scheme != "file":
        raise ValueError(f"unsupported scheme {scheme + '://'!r} (expected {what}: a path or "
                         "file://...)")
    return value


class SyntheticSourceConfig(_SourceBase):
    """Moving shapes on a background, seeded: for demos and tests."""

    type: Literal["synthetic"]
    uri: str | None = None
    width: PositiveInt = 640
    height: PositiveInt = 480
    seed: int = 0
    objects: int = Field(default=3, ge=0, le=64)
    frames: PositiveInt | None = None  # stop after this many frames (None: forever)
    loop: bool = False

    @field_validator("uri")
    @classmethod
    def _scene(cls, value: str | None) -> str | None:
        if value is not None and value.removeprefix("synthetic:") not in SYNTHETIC_SCENES:
            raise ValueError(f"unknown synthetic scene {value!r} (expected one of "
                             f"{', '.join(SYNTHETIC_SCENES)})")
        return value


class NormalizeConfig(_Model):
    """Per-channel normalisation of sensor samples before quantisation."""

    mode: Literal["none", "meanstd", "minmax"] = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    min: tuple[float, ...] = ()
    max: tuple[float, ...] = ()

    @field_validator("mean", "std", "min", "max")
    @classmethod
    def _finite(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("values must be finite numbers")
        return value

    @field_validator("std")
    @classmethod
    def _no_zero_std(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v == 0 for v in value):
            raise ValueError("a std of 0 would divide by zero (expected non-zero values)")
        return value

    @field_validator("max")
    @classmethod
    def _max_above_min(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        low = info.data.get("min", ())
        if low and value and len(low) == len(value) and any(
                hi <= lo for lo, hi in zip(low, value, strict=True)):
            raise ValueError("max must be greater than min for every channel")
        return value

    @model_validator(mode="after")
    def _values_for_mode(self) -> NormalizeConfig:
        need = {"meanstd": ("mean", "std"), "minmax": ("min", "max")}.get(self.mode, ())
        missing = [k for k in need if not getattr(self, k)]
        if missing:
            raise ValueError(f"mode {self.mode} needs {' and '.join(missing)} (one value, or "
                             "one per channel)")
        unused = [k for k in ("mean", "std", "min", "max") if getattr(self, k) and k not in need]
        if unused:
            raise ValueError(f"{', '.join(unused)} given but mode is {self.mode} (set mode: "
                             f"{'meanstd' if unused[0] in ('mean', 'std') else 'minmax'})")
        return self

    def counts_problem(self, channels: int) -> str | None:
        """Why the value counts do not fit ``channels`` (None: they fit)."""
        for key in ("mean", "std", "min", "max"):
            n = len(getattr(self, key))
            if n not in (0, 1, channels):
                return (f"normalize.{key} has {n} value(s) for {channels} channel(s) "
                        f"(give 1 or {channels})")
        return None


class SensorSourceConfig(_SourceBase):
    """Windows of numeric samples from a file, serial port, IIO device, socket or generator."""

    type: Literal["sensor"]
    channels: PositiveInt = 1  # before uri and normalize: their checks need it
    uri: str  # file path, serial:///dev/ttyUSB0, iio:///sys/bus/iio/devices/iio:device0,
    #           unix:///run/x.sock, stdin:, synthetic:sine, wav:///path.wav, alsa:default
    window: PositiveInt = 1
    hop: PositiveInt | None = None  # default: window (no overlap)
    loop: bool = False
    realtime: bool = False  # replay a file at its own timestamps
    baudrate: PositiveInt = 115200
    separator: str = Field(default=",", min_length=1)
    sample_rate: PositiveFloat | None = None
    features: Literal["none", "micro_frontend"] = "none"
    normalize: NormalizeConfig = NormalizeConfig()

    @field_validator("uri")
    @classmethod
    def _sensor_uri(cls, value: str, info: ValidationInfo) -> str:
        problems = uri_problems(value, int(info.data.get("channels", 1)))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("features")
    @classmethod
    def _mono_features(cls, value: str, info: ValidationInfo) -> str:
        channels = info.data.get("channels", 1)
        if value == "micro_frontend" and channels != 1:
            raise ValueError(f"micro_frontend works on mono audio (channels: 1), not channels: "
                             f"{channels}")
        return value

    @field_validator("normalize")
    @classmethod
    def _normalize_counts(cls, value: NormalizeConfig, info: ValidationInfo) -> NormalizeConfig:
        # micro_frontend windows have 40 feature channels, whatever the audio's channels
        channels = 40 if info.data.get("features") == "micro_frontend" else int(
            info.data.get("channels", 1))
        problem = value.counts_problem(channels)
        if problem:
            raise ValueError(problem)
        return value


SourceConfig = Annotated[
    Union[
        CameraSourceConfig,
        VideoSourceConfig,
        ImagesSourceConfig,
        SyntheticSourceConfig,
        SensorSourceConfig,
    ],
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- model

class DelegateLibraryConfig(_Model):
    """An external delegate by shared-library path, with its options."""

    library: str = Field(min_length=1)
    options: dict[str, str | int | float | bool] = {}


DelegateOption = str | int | float | bool


class UsbRecoveryConfig(_Model):
    """Reset a wedged USB accelerator before a target is probed again (off by default).

    ``device`` is the USB device's sysfs name (``1-1.2``: bus 1, port 1.2; see
    ``/sys/bus/usb/devices``). ``authorized`` writes 0 then 1 to its ``authorized`` file;
    ``rebind`` unbinds and binds it to its driver. Both need write access to sysfs (see
    SERVICE.md for what the unit must allow).
    """

    enabled: bool = False
    device: str = Field(default="", pattern=r"^$|^[0-9]+-[0-9]+(\.[0-9]+)*$")
    method: Literal["authorized", "rebind"] = "authorized"
    settle_s: NonNegativeFloat = 2.0  # wait after the reset before the probe loads the delegate

    @model_validator(mode="after")
    def _device_when_enabled(self) -> UsbRecoveryConfig:
        if self.enabled and not self.device:
            raise ValueError("device is required when recovery is enabled (e.g. device: 1-1.2)")
        return self


class TargetConfig(_Model):
    """One execution target of a pipeline's model: the CPU, the Edge TPU, or a delegate library.

    Written in a ``targets`` list as ``cpu``, ``edgetpu``, or a mapping
    ``{delegate: edgetpu | cpu | /path/libdelegate.so, options: {...}, path: FILE, name: N}``.
    """

    delegate: str = Field(default="cpu", min_length=1)  # cpu | edgetpu | a library path or name
    options: dict[str, DelegateOption] = {}
    path: Path | None = None  # this target's own model file (default: the model's path)
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)
    recovery: UsbRecoveryConfig = UsbRecoveryConfig()

    @model_validator(mode="after")
    def _cpu_has_no_options(self) -> TargetConfig:
        if self.delegate == "cpu" and self.options:
            raise ValueError("the cpu target takes no delegate options")
        return self

    @property
    def label(self) -> str:
        """The target's name in status, events and metrics: ``name``, else ``cpu``,
        ``edgetpu``, or the library's file name without ``lib`` and extensions."""
        if self.name:
            return self.name
        if self.delegate in {"cpu", "edgetpu"}:
            return self.delegate
        stem = Path(self.delegate).name.split(".")[0]
        stem = stem.removeprefix("lib") or stem
        return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()) or "delegate"


def _target_entry(value: Any) -> Any:
    """``cpu`` and ``edgetpu`` in a targets list stand for ``{delegate: cpu}`` and so on."""
    if isinstance(value, str):
        if value not in {"cpu", "edgetpu"}:
            raise ValueError(f"{value!r}: a target is cpu, edgetpu or "
                             "{delegate: /path/libdelegate.so, options: {...}}")
        return {"delegate": value}
    return value


DecoderName = Literal["auto", "ssd", "yolo", "classification", "anchors", "raw", "threshold"]


class DecoderOptionsBase(_Model):
    """Options of one decoder: typed (YAML ``true`` is no number, ``"5"`` no integer).

    Each option is declared here once: name, type, range, default and a one-line description.
    The config validates against it, and the decoder reads the validated object (see
    :func:`edge_agent.decoders.base.typed_options`), so neither writes a range twice. None
    means "derived at start" where the description says so.
    """

    decoder: str  # the tag, copied from model.decoder by ModelConfig (never written by users)


Unit = Annotated[StrictFloat, Field(ge=0, le=1)]
Count = Annotated[StrictInt, Field(ge=1)]
Auto = Literal["auto"]


def _doc(text: str, default: Any = None) -> Any:
    """A field's default with its one-line description (README's decoder options)."""
    return Field(default=default, description=text)


class SsdOptions(DecoderOptionsBase):
    """``decoder: ssd``."""

    decoder: Literal["ssd"]
    label_offset: StrictInt | None = _doc(
        "added to class ids (default: 1 when the labels start with background, else 0)")
    max_detections: Count = _doc("most detections kept per frame", 100)


class YoloOptions(DecoderOptionsBase):
    """``decoder: yolo``."""

    decoder: Literal["yolo"]
    version: Literal["auto", 5, 8, "5", "8", "v5", "v8"] = _doc(
        "output layout (auto: from the channel count and the labels)", "auto")
    iou_threshold: Unit = _doc("non-maximum suppression overlap", 0.45)
    max_detections: Count = _doc("most detections kept per frame", 100)
    max_candidates: Count = _doc("most boxes over the score threshold that enter NMS", 1000)
    labels_skip_na: Auto | StrictBool = _doc("skip the label file's N/A entries", "auto")
    label_offset: StrictInt | None = _doc("added to class ids (default: from the labels)")
    coordinates: Literal["auto", "normalized", "pixels"] = _doc(
        "box units in the output (auto: from their range)", "auto")


class ClassificationOptions(DecoderOptionsBase):
    """``decoder: classification``."""

    decoder: Literal["classification"]
    top_k: Count = _doc("classes published per frame", 5)
    background: Auto | StrictBool = _doc("class 0 is background and never published", "auto")
    softmax: Auto | StrictBool = _doc("apply softmax (auto: when the outputs are logits)",
                                      "auto")
    label_offset: StrictInt | None = _doc("added to class ids (default: from the labels)")


class AnchorsOptions(DecoderOptionsBase):
    """``decoder: anchors`` (MediaPipe-style SSD anchors: BlazeFace, pose)."""

    decoder: Literal["anchors"]
    preset: Literal["face_short", "face_full", "pose", "none"] | None = _doc(
        "anchor preset (default: by the model's anchor count)")
    box: Literal["detector", "body"] | None = _doc(
        "box from the regressor, or from the body keypoints (default: the preset's)")
    label: str | None = _doc("the one class's name (default: the label file's, the preset's)")
    nms: Literal["weighted", "plain"] = _doc("suppression: weighted blending or plain NMS",
                                             "weighted")
    iou_threshold: Unit = _doc("non-maximum suppression overlap", 0.3)
    max_detections: Count = _doc("most detections kept per frame", 100)
    scale: Annotated[StrictFloat, Field(gt=0)] | None = _doc(
        "regressor units per input width (default: the anchors' input width)")
    num_layers: Count | None = _doc("anchor layers (default: the number of strides)")
    strides: tuple[Count, ...] | None = _doc("stride per layer")
    min_scale: StrictFloat | None = _doc("anchor scale of the first layer")
    max_scale: StrictFloat | None = _doc("anchor scale of the last layer")
    anchor_offset_x: StrictFloat | None = _doc("anchor centre offset, x (in cells)")
    anchor_offset_y: StrictFloat | None = _doc("anchor centre offset, y (in cells)")
    aspect_ratios: tuple[StrictFloat, ...] | None = _doc("anchor aspect ratios")
    interpolated_scale_aspect_ratio: StrictFloat | None = _doc(
        "aspect ratio of the interpolated-scale anchor")
    fixed_anchor_size: StrictBool | None = _doc("anchors of size 1x1 (BlazeFace)")
    reduce_boxes_in_lowest_layer: StrictBool | None = _doc("3 anchors in the first layer")
    input_size: tuple[Count, Count] | None = _doc(
        "[width, height] the anchors are made for (default: the model input's)")


class RawOptions(DecoderOptionsBase):
    """``decoder: raw``."""

    decoder: Literal["raw"]
    max_values: Count = _doc("most values published; larger float maps are mean-pooled, "
                             "integer class maps become a per-class share histogram", 1024)


class ThresholdOptions(DecoderOptionsBase):
    """``decoder: threshold`` (see SENSORS.md)."""

    decoder: Literal["threshold"]
    index: Annotated[StrictInt, Field(ge=0)] | Annotated[str, Field(min_length=1)] = _doc(
        "the output element watched: its index or its label", 0)
    output: Annotated[StrictInt, Field(ge=0)] = _doc("the output watched", 0)
    level: StrictFloat | None = _doc("the level (default: the pipeline's score_threshold)")
    hysteresis: Annotated[StrictFloat, Field(ge=0)] = _doc(
        "how far back past the level before the state flips back", 0.0)
    direction: Literal["above", "below"] = _doc("on when the value is above or below", "above")
    emit: Literal["crossing", "state"] = _doc("publish at crossings only, or every window",
                                              "crossing")
    on_label: str | None = _doc("label when on (default: the element's label)")
    off_label: str | None = _doc("label when off (default: on_label + _clear)")


DECODER_OPTIONS: dict[str, type[DecoderOptionsBase]] = {
    "ssd": SsdOptions, "yolo": YoloOptions, "classification": ClassificationOptions,
    "anchors": AnchorsOptions, "raw": RawOptions, "threshold": ThresholdOptions,
}
"""Decoder name -> its options class (``auto`` takes any decoder's keys; see ModelConfig)."""


class AutoOptions(DecoderOptionsBase):
    """``decoder: auto``: the decoder is guessed from the model at start, so any decoder's keys
    may appear; each is type-checked once the decoder is known (preflight)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    decoder: Literal["auto"]

    @model_validator(mode="after")
    def _known_keys(self) -> AutoOptions:
        known = {k for c in DECODER_OPTIONS.values() for k in c.model_fields} - {"decoder"}
        unknown = sorted(set(self.model_extra or {}) - known)
        if unknown:
            raise ValueError(f"unknown decoder option(s) {', '.join(unknown)} (no decoder has "
                             "them; see README's decoder options)")
        return self


def _options_tag(value: Any) -> str | None:
    # a mapping when validating, an options object when serialising (model_dump on reload:
    # without this every dump warned "failed to get discriminator value")
    if isinstance(value, dict):
        return f"decoder={value.get('decoder')}"
    if isinstance(value, DecoderOptionsBase):
        return f"decoder={getattr(value, 'decoder', None)}"
    return None


DecoderOptions = Annotated[
    Union[
        Annotated[SsdOptions, Tag("decoder=ssd")],
        Annotated[YoloOptions, Tag("decoder=yolo")],
        Annotated[ClassificationOptions, Tag("decoder=classification")],
        Annotated[AnchorsOptions, Tag("decoder=anchors")],
        Annotated[RawOptions, Tag("decoder=raw")],
        Annotated[ThresholdOptions, Tag("decoder=threshold")],
        Annotated[AutoOptions, Tag("decoder=auto")],
    ],
    Discriminator(_options_tag),
]


class ModelConfig(_Model):
    """The model a pipeline runs and how its outputs are decoded."""

    path: Path
    labels: Path | None = None
    name: str | None = None  # default: the file's stem
    decoder: DecoderName = "auto"
    # one typed class per decoder, chosen by ``decoder`` (see DECODER_OPTIONS)
    decoder_options: DecoderOptions = AutoOptions(decoder="auto")
    # an integer, or auto: measured at load (edge_agent.runtime.threads_auto)
    threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 2
    delegate: Literal["edgetpu"] | DelegateLibraryConfig | None = None
    fallback_to_cpu: bool = True
    # execution targets in order of preference (see README); delegate + fallback_to_cpu are
    # the shorthand for [delegate, cpu] (or [delegate] without the fallback)
    targets: tuple[TargetConfig, ...] | None = Field(default=None, min_length=1)
    invoke_timeout_s: PositiveFloat = 2.0  # a delegate's invoke taking longer counts as hung
    load_timeout_s: PositiveFloat = 30.0  # a delegate's load and warm-up, the same
    reprobe_s: PositiveFloat = 5.0  # first re-probe of a better target after it failed
    reprobe_max_s: PositiveFloat = 300.0  # the back-off doubles up to this
    color: Literal["rgb", "bgr"] = "rgb"
    letterbox: bool | None = None  # None: what the decoder needs (yolo, anchors: yes)
    # float inputs only: the range pixels are scaled to ("auto": -1..1, what most exports want)
    input_range: Literal["auto", "-1..1", "0..1", "0..255"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _tag_options(cls, data: Any) -> Any:
        """Give ``decoder_options`` the decoder's name, so its own class validates it."""
        if isinstance(data, dict):
            options = data.get("decoder_options", {})
            if options is None:
                options = {}
            if isinstance(options, dict) and "decoder" not in options:
                decoder = data.get("decoder", "auto")
                # auto, or a bad name (or a list, a mapping: the fuzzer's) reported on its own
                if not isinstance(decoder, str) or decoder not in DECODER_OPTIONS:
                    decoder = "auto"
                data = {**data, "decoder_options": {**options, "decoder": decoder}}
        return data

    @property
    def options(self) -> dict[str, Any]:
        """The decoder options the user set, as a plain mapping (without the tag)."""
        return self.decoder_options.model_dump(exclude_unset=True, exclude={"decoder"})

    @field_validator("targets", mode="before")
    @classmethod
    def _target_shorthands(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [_target_entry(v) for v in value]
        return value

    @model_validator(mode="after")
    def _targets_or_delegate(self) -> ModelConfig:
        if self.targets is not None and self.delegate is not None:
            raise ValueError("set targets or delegate, not both (delegate: X is the shorthand "
                             "for targets: [X, cpu])")
        if self.targets is not None:
            labels = [t.label for t in self.targets]
            dupes = sorted({n for n in labels if labels.count(n) > 1})
            if dupes:
                raise ValueError(f"targets: the name {dupes[0]!r} is used twice (give each "
                                 "target its own name:)")
        return self

    def resolved_targets(self) -> tuple[TargetConfig, ...]:
        """The targets in order of preference, with the delegate shorthand spelled out."""
        if self.targets is not None:
            return self.targets
        if self.delegate is None:
            return (TargetConfig(),)
        if isinstance(self.delegate, DelegateLibraryConfig):
            first = TargetConfig(delegate=self.delegate.library,
                                 options=dict(self.delegate.options))
        else:
            first = TargetConfig(delegate=self.delegate)
        return (first, TargetConfig()) if self.fallback_to_cpu else (first,)


# --------------------------------------------------------------------------- stages

Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]
Polygon = Annotated[tuple[Point, ...], Field(min_length=3)]


class MotionConfig(_Model):
    """Frame-difference gate: inference runs on motion, plus a heartbeat."""

    enabled: bool = False
    threshold: int = Field(default=25, ge=1, le=255)  # grey-level difference per pixel
    min_area: float = Field(default=0.002, gt=0, le=1)  # fraction of the frame that changed
    heartbeat_s: PositiveFloat = 30.0
    width: PositiveInt = 160  # the small grey copy the gate compares
    masks: tuple[Polygon, ...] = ()  # areas whose motion is ignored


class TrackingConfig(_Model):
    """IoU tracker giving stable track ids and enter/leave events."""

    enabled: bool = False
    iou_threshold: float = Field(default=0.3, gt=0, lt=1)
    max_missed: PositiveInt = 5  # frames an object may be unseen before it has left
    min_hits: PositiveInt = 2  # frames before an object counts as entered


class CameraHealthConfig(_Model):
    """Camera tamper, focus, darkness and frozen-image checks (see camera_health.py)."""

    enabled: bool = False
    interval_s: PositiveFloat = 0.2  # seconds between checks
    width: int = Field(default=160, ge=16, le=1280)  # the small grey copy measured
    hold_s: NonNegativeFloat = 1.0  # a problem must last this long to be reported
    clear_s: NonNegativeFloat = 3.0  # and be gone this long for camera_ok
    dark_level: float = Field(default=20.0, ge=0, le=255)  # mean grey level
    blocked_contrast: float = Field(default=10.0, ge=0, le=128)  # grey standard deviation
    defocus_ratio: float = Field(default=0.35, gt=0, lt=1)  # of the usual sharpness
    moved_similarity: float = Field(default=0.5, gt=-1, lt=1)  # correlation with the view
    moved_margin: float = Field(default=0.15, ge=0, le=2)  # below the usual low similarity
    reference_s: PositiveFloat = 60.0  # time constant of the reference view
    learn_s: NonNegativeFloat = 20.0  # history needed before moved/defocused can fire
    relearn_s: PositiveFloat = 60.0  # a moved view that stays becomes the reference
    frozen_s: PositiveFloat = 1.5  # identical frames from a live source for this long


class LabelFilterConfig(_Model):
    """Which labels may leave the device."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


class PrivacyConfig(_Model):
    """The per-pipeline privacy policy (see PRIVACY.md)."""

    publish_images: bool = False
    redact_faces: bool = True
    redact_mode: Literal["blur", "fill"] = "fill"
    snapshots_per_minute: int = Field(default=6, ge=0, le=600)
    snapshot_quality: int = Field(default=80, ge=10, le=100)
    masks: tuple[Polygon, ...] = ()
    labels: LabelFilterConfig = LabelFilterConfig()
    min_score: float | None = Field(default=None, ge=0, le=1)
    aggregate: Literal["counts"] | None = None
    box_precision: int = Field(default=3, ge=0, le=6)
    drop_scores: bool = False
    identifying_fields: Literal["drop", "hash", "keep"] = "drop"
    # explicit opt-ins for what weakens privacy; set only in the device's own config (a remote
    # config command cannot change them, see SECURITY.md)
    allow_unredacted_images: bool = False  # publish_images with redact_faces: false
    allow_raw_image_outputs: bool = False  # decoder raw on a model whose input is an image

    @model_validator(mode="after")
    def _unredacted_needs_opt_in(self) -> PrivacyConfig:
        if self.publish_images and not self.redact_faces and not self.allow_unredacted_images:
            raise ValueError("publish_images with redact_faces: false publishes faces; it "
                             "needs privacy.allow_unredacted_images: true (an explicit opt-in "
                             "in the device's own config)")
        return self


class ZoneConfig(_Model):
    """A named area of the frame: per-detection zones, counts and zone events (needs tracking).

    An object is in a zone once its track's anchor point (``anchor``: where on its box, by
    default the bottom centre, i.e. where it stands) has been inside the polygon for
    ``inertia`` consecutive inference frames; it leaves after ``inertia`` consecutive frames
    outside, or when its track ends. ``loiter_s``: a ``loitering`` event once per stay that
    lasts this long (None: never).
    """

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    polygon: Polygon
    labels: tuple[str, ...] | None = None  # None: every label
    inertia: int = Field(default=3, ge=1, le=1000)
    loiter_s: PositiveFloat | None = None
    anchor: Literal["bottom_center", "center", "top_center"] = "bottom_center"


class PipelineConfig(_Model):
    """One source -> model -> policy -> publish chain."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    source: SourceConfig
    model: ModelConfig
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    publish: Literal["every_frame", "on_change"] = "every_frame"
    heartbeat_s: PositiveFloat = 60.0
    motion: MotionConfig = MotionConfig()
    tracking: TrackingConfig = TrackingConfig()
    camera_health: CameraHealthConfig = CameraHealthConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    zones: tuple[ZoneConfig, ...] = ()
    stall_timeout_s: PositiveFloat = 30.0  # heartbeat age after which the watchdog stops

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, value: tuple[ZoneConfig, ...]) -> tuple[ZoneConfig, ...]:
        names = [z.name for z in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate zone name {', '.join(dupes)} (names must be unique)")
        return value

    @model_validator(mode="after")
    def _zones_need_tracking(self) -> PipelineConfig:
        if self.zones and not self.tracking.enabled:
            raise ValueError("zones need tracking: set tracking.enabled: true (zone events "
                             "and inertia follow each tracked object)")
        return self

    @model_validator(mode="after")
    def _camera_health_needs_images(self) -> PipelineConfig:
        if self.camera_health.enabled and self.source.type == "sensor":
            raise ValueError("camera_health needs an image source (camera, video, images or "
                             "synthetic), not sensor")
        return self


# --------------------------------------------------------------------------- device-wide

class UrlOverrideConfig(_Model):
    """Where a model update command's own ``url`` may point (default: nowhere; the url comes
    only from the signed manifest). ``file`` is never allowed from a command."""

    schemes: tuple[Literal["http", "https"], ...] = ()
    hosts: tuple[str, ...] = ()


class UpdatesConfig(_Model):
    """Signed model updates from the cloud."""

    enabled: bool = True
    public_keys: tuple[Path, ...] = ()
    allow_downgrade: bool = False
    max_size_bytes: PositiveInt = 512 * 1024 * 1024
    max_latency_ms: PositiveFloat | None = None
    watch_inferences: int = Field(default=50, ge=0)
    watch_seconds: NonNegativeFloat = 30.0
    # a watch passes only after this many inferences of the new model: at watch_seconds with
    # fewer it goes on, and fails at watch_max_seconds (a quiet, motion-gated scene)
    watch_min_inferences: int = Field(default=1, ge=0)
    watch_max_seconds: PositiveFloat = 600.0
    max_failure_ratio: float = Field(default=0.2, ge=0, le=1)
    fetch_timeout_s: PositiveFloat = 30.0
    download_deadline_s: PositiveFloat = 900.0  # a whole download, however slow the server
    url_override: UrlOverrideConfig = UrlOverrideConfig()


class CommandsConfig(_Model):
    """The MQTT command channel."""

    require_signature: bool = True  # for commands that change the device (not model updates)
    public_keys: tuple[Path, ...] = ()  # default: updates.public_keys
    max_skew_s: PositiveFloat = 300.0
    max_payload_bytes: PositiveInt = 64 * 1024 * 1024  # model/update (inline model bytes)
    max_config_bytes: PositiveInt = 256 * 1024  # the config command (a whole config.yaml)
    max_command_bytes: PositiveInt = 16 * 1024  # every other command (rollback, restart)


class HomeAssistantConfig(_Model):
    """Home Assistant MQTT discovery."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    labels: tuple[str, ...] = ("person",)  # one count sensor per label


class PrometheusConfig(_Model):
    """The /metrics endpoint."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: any free port
    max_connections: int = Field(default=16, ge=1, le=1024)  # served at once; more: closed


class MetricsConfig(_Model):
    """Metrics export."""

    prometheus: PrometheusConfig = PrometheusConfig()


def fixed_threads(model: ModelConfig) -> int:
    """The configured thread count, or 2 for ``auto`` where only loading matters (checks,
    signatures); the pipeline's own load measures (``runtime.threads_auto``)."""
    return model.threads if isinstance(model.threads, int) else 2


class ThermalConfig(_Model):
    """Thermal-aware pacing: lower every pipeline's frame rate before the firmware throttles.

    Levels engage from ``trip - margin_c`` up to ``trip - guard_c`` (the CPU zone's lowest
    passive/hot/critical trip point, or ``trip_c``); each is released ``hysteresis_c`` below
    its threshold. At the last level (or while the Pi firmware reports throttling) the rate
    is ``min_factor`` of the full rate.
    """

    enabled: bool = True
    margin_c: PositiveFloat = Field(default=10.0, le=50.0)  # start this far below the trip
    guard_c: NonNegativeFloat = 2.0  # the lowest rate is reached this far below the trip
    hysteresis_c: PositiveFloat = Field(default=3.0, le=20.0)
    steps: int = Field(default=3, ge=1, le=10)
    min_factor: float = Field(default=0.25, gt=0.0, lt=1.0)
    trip_c: PositiveFloat | None = None  # None: the thermal zone's own trip point
    interval_s: PositiveFloat = Field(default=2.0, le=60.0)  # how often the board is read

    @model_validator(mode="after")
    def _guard_below_margin(self) -> ThermalConfig:
        if self.guard_c >= self.margin_c:
            raise ValueError(f"guard_c ({self.guard_c}) must be below margin_c ({self.margin_c})")
        return self


class ViewConfig(_Model):
    """The local live view (HTTP): annotated, redacted MJPEG per pipeline.

    Off loopback every request needs the token (``token_file``, or ``view-token`` in
    ``$CREDENTIALS_DIRECTORY``); preflight refuses a non-loopback ``bind`` without one.
    """

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)  # 0: any free port
    token_file: Path | None = None
    max_fps: PositiveFloat = Field(default=5.0, le=30.0)  # frames rendered per second, at most
    max_clients: int = Field(default=8, ge=1, le=64)  # connections served at once


class LoggingConfig(_Model):
    """Logging; under systemd the format has no timestamp and carries priority prefixes."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "journald", "json"] = "auto"


class AuditConfig(_Model):
    """The local append-only audit log of outgoing messages (metadata only)."""

    enabled: bool = True
    max_bytes: PositiveInt = 5 * 1024 * 1024
    backups: int = Field(default=3, ge=0, le=100)
    # entries that remote input can cause (command replies, refusals): at most this many per
    # minute for each (kind, outcome, reason), the rest counted in one "suppressed" line, so
    # junk sent to the device cannot rotate the real history out
    max_per_reason_per_minute: PositiveInt = 60


class AgentConfig(_Model):
    """The whole configuration file."""

    device_id: str = Field(default_factory=lambda: _default_device_id(), pattern=NAME_PATTERN)
    state_dir: Path = Path("/var/lib/edge-agent")
    mqtt: MqttConfig = MqttConfig()
    pipelines: tuple[PipelineConfig, ...]
    updates: UpdatesConfig = UpdatesConfig()
    commands: CommandsConfig = CommandsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    metrics: MetricsConfig = MetricsConfig()
    view: ViewConfig = ViewConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    thermal: ThermalConfig = ThermalConfig()

    @field_validator("pipelines")
    @classmethod
    def _unique_names(cls, value: tuple[PipelineConfig, ...]) -> tuple[PipelineConfig, ...]:
        if not value:
            raise ValueError("at least one pipeline is required (a list under 'pipelines')")
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate pipeline name {', '.join(dupes)} (names must be unique)")
        return value

    def pipeline(self, name: str) -> PipelineConfig:
        """The pipeline called ``name``."""
        for p in self.pipelines:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def client_id(self) -> str:
        """The MQTT client id: configured, or ``edge-agent-<device_id>``."""
        return self.mqtt.client_id or f"edge-agent-{self.device_id}"


def _default_device_id() -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-")
    return name or "edge-agent"


# --------------------------------------------------------------------------- loading

class _LineLoader(yaml.SafeLoader):
    """A safe loader that records the line of every mapping key and sequence item."""


def _node_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            _node_lines(value_node, key_path, out)
            out[key_path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, (*path, i), out)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union tags (``camera``, ``function-after[...]``) that are not keys."""
    out: list[Any] = []
    node = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif (i == last and isinstance(node, dict) and isinstance(part, str)
              and out[-1:] != [part]):
            # a missing key (required) ends the path; a union tag (``sensor``,
            # ``decoder=ssd``, ``function-after[...]``) stands between keys and is dropped
            if "[" not in part and "=" not in part and part not in {
                    "str", "int", "float", "bool", "dict", "list"}:
                out.append(part)
                node = None
        else:
            continue
    return tuple(out)


def _one_line(text: str) -> str:
    """A problem as one line: control characters in keys or values (a key named ``"\r"``, as
    the fuzzer found) are escaped, so each problem stays one line of the error."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see README's config reference)"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = ctx.get("expected", "a listed value")
        return f"invalid value {err.get('input')!r} (expected {expected})"
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "missing 'type' (expected camera, video, images, synthetic or sensor)"
    if kind == "string_pattern_mismatch":
        return f"invalid value {err.get('input')!r} (expected to match {ctx.get('pattern')})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    inp = err.get("input")
    if kind.endswith(("_type", "_parsing")) or kind in {"greater_than_equal", "less_than_equal",
                                                          "greater_than", "less_than"}:
        return f"invalid value {inp!r} ({msg.lower()})"
    return msg


def parse_config(text: str, filename: str = "<config>") -> AgentConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` with one line per problem."""
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{filename}{line}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1 (top level): expected a mapping of keys, got "
                          f"{type(data).__name__}")
    lines: dict[tuple[Any, ...], int] = {}
    if root is not None:
        _node_lines(root, (), lines)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]), data)
            key_line = _line_for(loc, lines)
            where = f"{filename}:{key_line}" if key_line is not None else filename
            problems.append(_one_line(f"{where} {_dotted(loc)}: {_describe(dict(err))}"))
        raise ConfigError(list(dict.fromkeys(problems))) from None


def locate(config_file: str | Path, loc: tuple[Any, ...]) -> str:
    """``FILE:LINE key.path`` for a key of a config file (for preflight problems)."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(Path(config_file).read_text(encoding="utf-8"), Loader=_LineLoader)
        if root is not None:
            _node_lines(root, (), lines)
    except (OSError, yaml.YAMLError):
        pass
    line = _line_for(loc, lines)
    return f"{config_file}:{line} {_dotted(loc)}" if line else f"{config_file} {_dotted(loc)}"


def load_config(path: str | Path | None = None) -> tuple[AgentConfig, Path]:
    """Load the config from ``path``, ``$EDGE_AGENT_CONFIG`` or the default location.

    Relative paths inside the file (models, labels, state_dir, keys) are resolved against the
    config file's folder, so a config travels with its models.
    """
    chosen = Path(path or os.environ.get("EDGE_AGENT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: config file not found (pass -c FILE or set "
                          "EDGE_AGENT_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: cannot read config file: {exc}") from None
    config = parse_config(text, str(chosen))
    return resolve_paths(config, chosen.parent.resolve()), chosen


def resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    """Return ``config`` with every relative path made absolute against ``base``."""

    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base / p).resolve()

    pipelines = []
    for p in config.pipelines:
        model = p.model.model_copy(
            update={"path": fix(p.model.path), "labels": fix(p.model.labels)})
        source = p.source
        if source.type in {"video", "images"} and isinstance(source.uri, str):
            uri = source.uri
            if "://" not in uri and not Path(uri).is_absolute():
                source = source.model_copy(update={"uri": str(base / uri)})
        pipelines.append(p.model_copy(update={"model": model, "source": source}))
    tls = config.mqtt.tls.model_copy(update={
        "ca_certs": fix(config.mqtt.tls.ca_certs),
        "certfile": fix(config.mqtt.tls.certfile),
        "keyfile": fix(config.mqtt.tls.keyfile),
    })
    mqtt = config.mqtt.model_copy(
        update={"tls": tls, "password_file": fix(config.mqtt.password_file)})
    updates = config.updates.model_copy(
        update={"public_keys": tuple(fix(k) for k in config.updates.public_keys)})
    commands = config.commands.model_copy(
        update={"public_keys": tuple(fix(k) for k in config.commands.public_keys)})
    view = config.view.model_copy(update={"token_file": fix(config.view.token_file)})
    return config.model_copy(update={
        "view": view,
        "state_dir": fix(config.state_dir),
        "pipelines": tuple(pipelines),
        "mqtt": mqtt,
        "updates": updates,
        "commands": commands,
    })


def make_config(**overrides: Any) -> AgentConfig:
    """Build a real config from keyword overrides of a minimal valid one (for tests)."""
    base: dict[str, Any] = {
        "device_id": "test-device",
        "state_dir": "/tmp/edge-agent-test",  # noqa: S108 - tests override it
        "pipelines": [{
            "name": "cam",
            "source": {"type": "synthetic", "fps": 0, "frames": 10},
            "model": {"path": "model.tflite"},
        }],
    }
    base.update(overrides)
    return AgentConfig.model_validate(base)
