"""``edge-agent snapshot``: one annotated, redacted frame from the configured source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.default_models import ensure_default_models, labels_path
from tests.view.test_browser import _faces, _green

REPO = Path(__file__).resolve().parents[2]
MODEL = "face_detection_full_range_sparse"


def _config(tmp_path: Path, **pipeline: Any) -> Path:
    models = ensure_default_models()
    photo = models[MODEL].parent / "samples" / "astronaut.png"
    cfg = {"device_id": "snap-1", "state_dir": str(tmp_path / "state"), "pipelines": [{
        "name": "door", "source": {"type": "images", "uri": str(photo)},
        "model": {"path": str(models[MODEL]), "labels": str(labels_path(MODEL)),
                  "decoder": "anchors"},
        "tracking": {"enabled": True},
        "zones": [{"name": "porch", "polygon": [[0, 0.3], [0.6, 0.3], [0.6, 1], [0, 1]]}],
        **pipeline}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.parametrize("loop", [True, False])
def test_snapshot_writes_an_annotated_redacted_jpeg(tmp_path: Path, loop: bool) -> None:
    """A looping source gives a frame after the tracker confirmed the face; a one-image
    source its only frame."""
    out = tmp_path / "snap.jpg"
    photo = ensure_default_models()[MODEL].parent / "samples" / "astronaut.png"
    cfg = _config(tmp_path, source={"type": "images", "uri": str(photo), "loop": loop})
    proc = _run("snapshot", "-c", str(cfg), "--pipeline", "door", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "1 detections, 1 faces redacted" in proc.stdout
    assert ("frame 1," if loop else "frame 0,") in proc.stdout  # looping: a confirmed track
    image = cv2.imread(str(out))
    assert image is not None and image.shape == (512, 512, 3)
    assert _green(image) > 300  # the face's box is drawn
    assert _faces(image)[MODEL] == []
    # the zone is drawn too (its outline colour, absent from the photo where it runs)
    x = round(0.6 * 512)
    edge = image[round(0.5 * 512):round(0.9 * 512), x - 2:x + 3]
    assert (np.abs(edge.astype(int) - (255, 160, 0)).sum(axis=2) < 120).sum() > 50


def test_snapshot_fails_closed_without_the_face_detector(tmp_path: Path) -> None:
    """No face model to redact with: no image is written, exit 1, and a reason."""
    out = tmp_path / "snap.jpg"
    empty = tmp_path / "no-models"
    empty.mkdir()
    proc = _run("snapshot", "-c", str(_config(tmp_path)), "--pipeline", "door",
                "--out", str(out), "--timeout", "5",
                env={"EDGE_AGENT_MODELS_DIR": str(empty)})
    assert proc.returncode == 1, proc.stderr
    assert "refused by the redaction" in proc.stderr
    assert not out.exists()


def test_snapshot_unknown_pipeline_is_a_config_error(tmp_path: Path) -> None:
    proc = _run("snapshot", "-c", str(_config(tmp_path)), "--pipeline", "nope",
                "--out", str(tmp_path / "x.jpg"))
    assert proc.returncode == 78
    assert "--pipeline: no pipeline 'nope' in the config (it has door)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_snapshot_without_redaction_keeps_the_face(tmp_path: Path) -> None:
    """The control: with redact_faces off the same command shows the face (so the redaction
    above is what removed it)."""
    out = tmp_path / "snap.jpg"
    proc = _run("snapshot", "-c", str(_config(tmp_path, privacy={"redact_faces": False})),
                "--pipeline", "door", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    image = cv2.imread(str(out))
    assert len(_faces(image)[MODEL]) == 1
