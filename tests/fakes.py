"""Shared test fakes (add to this file; do not overwrite others' fakes)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Published:
    """One message a fake transport was asked to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    durable: bool = False
    seq: int | None = None
    id: str | None = None


@dataclass
class RecordingTransport:
    """A transport (the MqttTransport surface the egress guard uses) that records publishes.

    ``publish_durable`` allocates a gap-free seq per pipeline and a uuid hex id like the
    outbox, and calls ``render(seq, id)`` exactly once; if render raises, no seq is used.
    """

    messages: list[Published] = field(default_factory=list)
    will: tuple[str, bytes] | None = None
    fail: bool = False  # publish raises PublishError
    boot_id: str = "test-boot"
    _seqs: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        if self.fail:
            from edge_agent.errors import PublishError

            raise PublishError("fake transport set to fail")
        assert isinstance(payload, bytes)
        with self._lock:
            self.messages.append(Published(topic, payload, qos, retain))

    def publish_durable(self, pipeline: str, topic: str,
                        render: Callable[[int, str], bytes]) -> int:
        if self.fail:
            from edge_agent.errors import PublishError

            raise PublishError("fake transport set to fail")
        with self._lock:
            seq = self._seqs.get(pipeline, 0) + 1
            msg_id = uuid.uuid4().hex
            payload = render(seq, msg_id)
            assert isinstance(payload, bytes)
            self._seqs[pipeline] = seq
            self.messages.append(Published(topic, payload, 1, False, True, seq, msg_id))
            return seq

    def set_will(self, topic: str, payload: bytes) -> None:
        self.will = (topic, payload)

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def on(self, topic: str) -> list[Published]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]


# --------------------------------------------------------------------------- pipeline fakes
# (FakeSource, FakeRuntime, CountDecoder, fake_bundle: used by tests/test_pipeline.py)


class FakeSource:
    """A source of uniform BGR frames whose grey level encodes a number (``levels[i] * 10``).

    Args:
        levels: one value per frame; ``CountDecoder`` turns it into that many detections.
        live: newest-wins source (the pipeline may drop) or file-like (every frame).
        size: frame (width, height).
        before_frame: optional hook ``(index) -> None`` called before frame ``index`` is
            delivered (tests block there to place a swap exactly).
        loop_forever: after the last level, keep repeating it instead of raising EOFError.

    Attributes:
        delivered: indices handed out; ``exhausted`` is set when EOF was raised.
    """

    def __init__(self, levels: list[int], *, live: bool = False, size: tuple[int, int] = (32, 24),
                 before_frame: Callable[[int], None] | None = None,
                 loop_forever: bool = False) -> None:
        self.levels = list(levels)
        self.live = live
        self.size = size
        self.before_frame = before_frame
        self.loop_forever = loop_forever
        self.dropped = 0
        self.bad_lines = 0
        self.delivered: list[int] = []
        self.exhausted = threading.Event()
        self.opened = 0
        self.closed = 0
        self._i = 0

    def open(self) -> None:
        self.opened += 1

    def read(self, timeout: float) -> object:
        import numpy as np

        from edge_agent.types import Frame

        i = self._i
        if i >= len(self.levels) and not self.loop_forever:
            self.exhausted.set()
            raise EOFError("fake source ended")
        if self.before_frame is not None:
            self.before_frame(i)
        level = self.levels[min(i, len(self.levels) - 1)]
        w, h = self.size
        image = np.full((h, w, 3), min(255, level * 10), np.uint8)
        self._i += 1
        self.delivered.append(i)
        return Frame(index=i, ts=1_700_000_000.0 + i / 10, image=image)

    def close(self) -> None:
        self.closed += 1


class FakeRuntime:
    """A runtime whose one output is the mean of its uint8 input (1, S, S, 3).

    ``infer`` checks the input shape like the real runtime, and calls ``hook(n)`` (n: call
    number from 0) before returning, so tests can block inference at a chosen call.
    """

    def __init__(self, size: int = 8, *, hook: Callable[[int], None] | None = None,
                 name: str = "fake") -> None:
        from edge_agent.runtime.base import ModelSignature, RuntimeInfo, TensorSpec

        self.signature = ModelSignature(
            inputs=(TensorSpec("image", 0, (1, size, size, 3), "uint8"),),
            outputs=(TensorSpec("mean", 1, (1, 1), "float32"),))
        self.info = RuntimeInfo("fake", "0", None, 1)
        self.path = Path(f"{name}.tflite")
        self.hook = hook
        self.calls = 0
        self.closed = False

    def infer(self, inputs: list[Any]) -> list[Any]:
        import numpy as np

        from edge_agent.errors import ModelError

        (x,) = inputs
        if x.shape != self.signature.inputs[0].shape or x.dtype != np.uint8:
            raise ModelError(f"fake runtime: input {x.dtype}{list(x.shape)} does not fit")
        n, self.calls = self.calls, self.calls + 1
        if self.hook is not None:
            self.hook(n)
        return [np.array([[float(x.mean())]], np.float32)]

    def close(self) -> None:
        self.closed = True


class CountDecoder:
    """Turns FakeRuntime's mean grey level into ``round(mean / 10)`` "person" detections."""

    kind = "fake"
    letterbox = False

    def decode(self, outputs: list[Any], transform: Any) -> Any:
        from edge_agent.types import Detection, Inference

        n = round(float(outputs[0].reshape(-1)[0]) / 10)
        dets = tuple(Detection(0, "person", 0.9, (0.1 * k / max(n, 1), 0.1, 0.2, 0.3))
                     for k in range(n))
        return Inference(detections=dets)


def fake_bundle(name: str = "fake", version: int = 0, *, size: int = 8,
                hook: Callable[[int], None] | None = None) -> Any:
    """A ModelBundle of FakeRuntime + the real Preprocessor + CountDecoder."""
    from edge_agent.bundle import ModelBundle
    from edge_agent.decoders.labels import load_labels
    from edge_agent.runtime.preprocess import Preprocessor
    from edge_agent.types import ModelRef

    runtime = FakeRuntime(size, hook=hook, name=name)
    pre = Preprocessor(runtime.signature.inputs[0], letterbox=False, color="rgb", buffers=5)
    ref = ModelRef(name=name, version=version, sha256=f"{version:064x}")
    return ModelBundle(runtime, pre, CountDecoder(), load_labels(None), ref, runtime.path, None)


def gated_pipeline(cfg: Any, source_class: Callable[[Any], Any]
                   ) -> tuple[Any, list[Any], RecordingTransport]:
    """A Pipeline on ``cfg`` (with its motion gate) around :func:`fake_bundle`, publishing
    through the real policy and egress guard into a RecordingTransport; the sources it
    opens are collected in the returned list."""
    from edge_agent.motion import MotionGate
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.privacy.policy import PrivacyPolicy

    sources: list[Any] = []

    def factory(c: Any) -> Any:
        sources.append(source_class(c))
        return sources[-1]

    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    pipe = Pipeline(cfg, fake_bundle(), source_factory=factory,
                    policy=PrivacyPolicy(cfg.privacy, cfg.name, "dev", seal), send=guard.send,
                    gate=MotionGate(cfg.motion))
    return pipe, sources, transport
