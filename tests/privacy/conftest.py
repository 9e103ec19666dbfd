"""Fixtures for the privacy tests: a seal, a recording transport, a guard, a policy factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import AuditConfig, PrivacyConfig
from edge_agent.privacy import Seal, new_seal
from edge_agent.privacy.audit import AuditLog
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.types import Detection, Inference, ModelRef, Result
from tests.fakes import RecordingTransport

MODEL = ModelRef("detector", 3, "a" * 64)


@pytest.fixture
def seal() -> Seal:
    return new_seal()


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit", AuditConfig())
    yield log
    log.close()


@pytest.fixture
def guard(transport: RecordingTransport, audit: AuditLog, seal: Seal) -> EgressGuard:
    return EgressGuard(transport, "edge-agent", "dev-1", audit, seal)


@pytest.fixture
def make_policy(seal: Seal) -> Callable[..., PrivacyPolicy]:
    def make(face_detector: Any = None, clock: Any = None, **privacy: Any) -> PrivacyPolicy:
        cfg = PrivacyConfig.model_validate(privacy)
        kw = {"clock": clock} if clock is not None else {}
        return PrivacyPolicy(cfg, "door", "dev-1", seal, face_detector, salt=b"s" * 32, **kw)
    return make


def det(label: str = "person", score: float = 0.9, box: tuple[float, ...] = (0.1, 0.1, 0.3, 0.4),
        class_id: int = 0, **kw: Any) -> Detection:
    return Detection(class_id, label, score, box, **kw)  # type: ignore[arg-type]


def result(*detections: Detection, image: np.ndarray | None = None, classes: Any = None,
           values: Any = None, index: int = 7, ts: float = 1_790_000_000.123) -> Result:
    h, w = (image.shape[:2] if image is not None else (720, 1280))
    return Result("door", index, ts, w, h, MODEL, 11.8,
                  Inference(tuple(detections), classes, values), image)
