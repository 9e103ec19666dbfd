"""create_source: the config's type picks the implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import make_config
from edge_agent.sources.camera import OpencvCameraSource, OpencvVideoSource
from edge_agent.sources.factory import create_source
from edge_agent.sources.images import ImageFolderSource
from edge_agent.sources.synthetic import SyntheticSource


@pytest.mark.parametrize(("source", "cls"), [
    ({"type": "camera", "uri": 0}, OpencvCameraSource),
    ({"type": "camera", "uri": "rtsp://cam/1", "width": 640, "height": 480}, OpencvCameraSource),
    ({"type": "video", "uri": "clip.avi", "loop": True}, OpencvVideoSource),
    ({"type": "images", "uri": "shots/*.jpg"}, ImageFolderSource),
    ({"type": "synthetic", "seed": 3}, SyntheticSource),
])
def test_type_selects_the_class(source: dict[str, object], cls: type) -> None:
    cfg = make_config(pipelines=[{"name": "p", "source": source, "model": {"path": "m.tflite"}}])
    created = create_source(cfg.pipelines[0].source)
    assert isinstance(created, cls)
    assert created.dropped == 0
    created.close()  # closing an unopened source is fine


def test_created_synthetic_source_runs(tmp_path: Path) -> None:
    cfg = make_config()  # synthetic, fps 0, 10 frames
    source = create_source(cfg.pipelines[0].source)
    source.open()
    try:
        indices = []
        with pytest.raises(EOFError):
            while True:
                frame = source.read(1.0)
                assert frame is not None
                indices.append(frame.index)
        assert indices == list(range(10))
    finally:
        source.close()
