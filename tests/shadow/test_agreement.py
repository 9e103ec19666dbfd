"""Shadow evaluation on real models and real images: agreement figures, the gate, sampling.

The default-model tests run on every clone (models/ from ``./dev``); the COCO tests use
../shared/models (skipped cleanly without it, a failure under CI).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.bundle import ModelBundle, load_bundle
from edge_agent.config import ModelConfig
from edge_agent.default_models import ensure_default_models, labels_path, sample_images_dir
from edge_agent.errors import UpdateError
from edge_agent.shadow import Agreement, ShadowGate, ShadowRunner, iou, match_detections
from edge_agent.types import Detection, Frame, Inference
from tests.conftest import shared_model
from tests.shadow.models import write_permuted_classes_model

COCO = "coco_ssd_mobilenet_v1_1.0_quant.tflite"
TF2 = "tf2_ssd_mobilenet_v2_320_coco_float.tflite"
COCO_IMAGES = ("grace_hopper.bmp", "zidane.jpg", "cat.bmp", "face.jpg", "squat.bmp")


def _bundle(path: Path, labels: Path | None, threshold: float = 0.4) -> ModelBundle:
    return load_bundle(ModelConfig(path=path, labels=labels, threads=1), threshold)


def _frames(paths: list[Path]) -> list[Frame]:
    frames = []
    for i, p in enumerate(paths):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert image is not None, p
        frames.append(Frame(i, time.time(), image=image))
    return frames


def _shadow(active: ModelBundle, candidate: ModelBundle, frames: list[Frame],
            gate: ShadowGate | None = None) -> tuple[ShadowRunner, dict]:
    """Run ``candidate`` in shadow of ``active`` on every frame; the figures at stop."""
    reports: list[dict] = []
    runner = ShadowRunner("p", candidate, active, every=1, gate=gate,
                          on_figures=reports.append, report_s=3600)
    runner.start()
    try:
        for frame in frames:
            inputs, transform = active.prepare(frame)
            t0 = time.perf_counter()
            outputs = active.runtime.infer(inputs)
            ms = (time.perf_counter() - t0) * 1000
            before = runner.agreement.frames + runner.agreement.failures \
                + runner.agreement.non_finite
            runner.offer(frame, inputs, transform, active.decode(outputs, transform), ms)
            deadline = time.monotonic() + 60
            while runner.agreement.frames + runner.agreement.failures \
                    + runner.agreement.non_finite == before:
                assert time.monotonic() < deadline, "the shadow worker compared nothing"
                time.sleep(0.005)
    finally:
        runner.stop()
        active.close()
    return runner, reports[-1]


def _assert_aggregates_only(figures: dict) -> None:
    """The figures carry counts and ratios, nothing of a single frame (no boxes), and make a
    contract-valid shadow message that holds all of them."""
    from edge_agent.privacy import messages
    from edge_agent.privacy.schemas import validate
    from edge_agent.privacy.seal import new_seal
    from edge_agent.types import ModelRef

    msg = messages.shadow(new_seal(), device="dev-1", pipeline="p", state="shadowing",
                          candidate=ModelRef("c", 1, "a" * 64), active=ModelRef("a", 0, "b" * 64),
                          figures=figures)
    validate("shadow", msg.payload)
    sent = json.loads(json.dumps(msg.payload))["figures"]
    assert {k: v for k, v in figures.items() if k != "sampling"} == \
        {k: v for k, v in sent.items() if k != "sampling"}
    text = json.dumps(figures)
    assert "box" not in text and "score" not in text
    for value in _leaves(figures):
        assert value is None or isinstance(value, (int, float, bool, str))


def _leaves(obj: object):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        raise AssertionError(f"a list in the figures: {obj!r}")
    else:
        yield obj


# -- pure figures ------------------------------------------------------------------------
def _det(label: str, box: tuple[float, float, float, float], score: float = 0.9) -> Detection:
    return Detection(0, label, score, box)


def test_matching_takes_the_same_label_at_iou_half_one_to_one() -> None:
    a = (_det("person", (0.0, 0.0, 0.5, 0.5)), _det("dog", (0.5, 0.5, 1.0, 1.0)))
    c = (_det("person", (0.0, 0.0, 0.5, 0.6)), _det("cat", (0.5, 0.5, 1.0, 1.0)),
         _det("person", (0.0, 0.0, 0.5, 0.5), 0.5))
    assert iou(a[0].box, c[0].box) == pytest.approx(0.25 / 0.3)
    assert match_detections(a, c) == [(0, 0, pytest.approx(0.25 / 0.3))]
    agreement = Agreement()
    agreement.add(Inference(a), Inference(c), 10.0, 30.0)
    f = agreement.figures()
    det = f["detection"]
    assert (det["precision"], det["recall"]) == (pytest.approx(1 / 3, abs=1e-4), 0.5)
    assert det["labels"]["dog"] == {"precision": None, "recall": 0.0, "active": 1,
                                    "candidate": 0}
    assert det["labels"]["person"]["precision"] == 0.5
    assert det["mean_count_diff"] == 1.0
    assert f["latency_ratio"] == 3.0
    _assert_aggregates_only(f)


def test_classifier_and_value_figures() -> None:
    from edge_agent.types import ClassScore

    agreement = Agreement()
    top = (ClassScore(3, "c", 0.9), ClassScore(1, "a", 0.05))
    other = tuple(ClassScore(c, str(c), 0.5 - k / 100) for k, c in enumerate((7, 8, 9, 10, 3)))
    agreement.add(Inference(classes=top), Inference(classes=top), 1.0, 1.0)
    agreement.add(Inference(classes=top), Inference(classes=other), 1.0, 1.0)
    assert agreement.figures()["classification"] == {"frames": 2, "top1": 0.5, "top5": 1.0}
    values = Agreement()
    values.add(Inference(values=(1.0, 2.0)), Inference(values=(1.5, 2.0)), 1.0, 1.0)
    assert values.figures()["values"] == {"frames": 1, "mean_abs_diff": 0.25,
                                          "max_abs_diff": 0.5}


def test_gate_parse_refuses_bad_input_with_where() -> None:
    assert ShadowGate.parse({"frames": 50, "min_recall": 0.9}).min_recall == 0.9
    with pytest.raises(UpdateError, match=r"manifest shadow.frames: must be an integer"):
        ShadowGate.parse({"frames": "many"})
    with pytest.raises(UpdateError, match=r"manifest shadow.min_precision: must be a number"):
        ShadowGate.parse({"frames": 5, "min_precision": 2})
    with pytest.raises(UpdateError, match=r"unknown key\(s\) min_recal"):
        ShadowGate.parse({"frames": 5, "min_recal": 0.5})


# -- default models (every clone) --------------------------------------------------------
@pytest.fixture(scope="module")
def default_models() -> dict[str, Path]:
    return ensure_default_models()


def _sample_frames() -> list[Frame]:
    samples = sample_images_dir()
    return _frames([samples / n for n in ("astronaut.png", "camera.png", "coffee.png",
                                          "chelsea.png")])


def test_default_detector_shadowing_itself_agrees_fully(default_models: dict[str, Path]) -> None:
    path = default_models["face_detection_short_range"]
    labels = labels_path("face_detection_short_range")
    gate = ShadowGate(4, min_recall=0.99, min_precision=0.99, max_latency_ratio=100.0)
    runner, f = _shadow(_bundle(path, labels), _bundle(path, labels), _sample_frames(), gate)
    assert f["frames"] == 4 and f["failures"] == f["non_finite"] == 0
    det = f["detection"]
    assert det["active_count"] >= 2, "the samples show faces (astronaut, cameraman)"
    assert (det["precision"], det["recall"], det["mean_iou"]) == (1.0, 1.0, 1.0)
    assert det["mean_abs_count_diff"] == 0.0
    assert f["sampling"]["sampled"] == 4
    assert runner.verdict == ("pass", None)
    _assert_aggregates_only(f)


def test_default_detector_against_another_gives_figures(default_models: dict[str, Path]) -> None:
    labels = labels_path("face_detection_short_range")
    active = _bundle(default_models["face_detection_short_range"], labels)
    candidate = _bundle(default_models["face_detection_full_range_sparse"], labels)
    assert candidate.runtime.signature.inputs[0].shape != active.runtime.signature.inputs[0].shape
    runner, f = _shadow(active, candidate, _sample_frames())
    assert not runner.share_inputs  # other input size: the candidate prepares its own
    assert f["frames"] == 4 and f["detection"]["candidate_count"] >= 1
    assert f["latency_ms"]["candidate"]["p50"] > 0


def test_sampling_every_nth_idle_only_and_drops(default_models: dict[str, Path]) -> None:
    path = default_models["face_detection_short_range"]
    labels = labels_path("face_detection_short_range")
    active = _bundle(path, labels)
    frame = _sample_frames()[0]
    inputs, transform = active.prepare(frame)
    inference = active.decode(active.runtime.infer(inputs), transform)
    gate_open = threading.Event()
    runner = ShadowRunner("p", _bundle(path, labels), active, every=5, report_s=3600)
    real_compare = runner._compare

    def held(job, *rest):  # the candidate is "slow": it waits until the test lets it go
        gate_open.wait(30)
        real_compare(job, *rest)

    runner._compare = held  # type: ignore[method-assign]
    runner.start()
    try:
        for _ in range(5):
            runner.offer(frame, inputs, transform, inference, 5.0)
        deadline = time.monotonic() + 30
        while runner._slot is not None:  # the worker took the first sampled frame
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for _ in range(45):
            runner.offer(frame, inputs, transform, inference, 5.0)
        # 10 sampled: the worker holds the first, the slot keeps the newest, 8 were replaced
        assert runner.counters() == {"offered": 50, "sampled": 10, "dropped": 8,
                                     "skipped_busy": 0}
        gate_open.set()
        deadline = time.monotonic() + 30
        while runner.agreement.frames < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        idle = ShadowRunner("q", _bundle(path, labels), active, every=1, when_idle=True)
        for _ in range(3):
            idle.offer(frame, inputs, transform, inference, 5.0, idle=False)
        assert idle.counters()["skipped_busy"] == 3 and idle.counters()["sampled"] == 0
        idle.candidate.close()
    finally:
        gate_open.set()
        runner.stop()
        active.close()
    assert runner.agreement.frames == 2  # the first and the newest; the replaced never ran


# -- COCO SSD (../shared) ----------------------------------------------------------------
def _coco_frames() -> list[Frame]:
    return _frames([shared_model(f"images/{n}") for n in COCO_IMAGES])


def test_coco_ssd_shadowing_itself_agrees_fully() -> None:
    model, labels = shared_model(COCO), shared_model("coco_labels.txt")
    _, f = _shadow(_bundle(model, labels), _bundle(model, labels), _coco_frames())
    det = f["detection"]
    assert f["frames"] == len(COCO_IMAGES) and det["active_count"] >= 5
    assert (det["precision"], det["recall"], det["mean_iou"]) == (1.0, 1.0, 1.0)
    assert all(v["precision"] == v["recall"] == 1.0 for v in det["labels"].values())
    _assert_aggregates_only(f)


def test_coco_ssd_against_tf2_ssd_reports_figures(capsys: pytest.CaptureFixture[str]) -> None:
    labels = shared_model("coco_labels.txt")
    active = _bundle(shared_model(COCO), labels)
    candidate = _bundle(shared_model(TF2), labels)
    _, f = _shadow(active, candidate, _coco_frames())
    det = f["detection"]
    assert f["frames"] == len(COCO_IMAGES) and f["failures"] == f["non_finite"] == 0
    # two different detectors agree on the people of these photos, not on everything
    assert det["labels"]["person"]["recall"] >= 0.5
    assert 0 < det["precision"] <= 1 and 0 < det["recall"] <= 1
    with capsys.disabled():
        print("\nshadow figures, COCO SSD v1 quant (active) vs TF2 SSD v2 320 float:",
              json.dumps(f, sort_keys=True))


def test_permuted_classes_candidate_is_rejected_by_the_gate(tmp_path: Path) -> None:
    model, labels = shared_model(COCO), shared_model("coco_labels.txt")
    permuted = write_permuted_classes_model(model, tmp_path / "permuted.tflite", 90)
    gate = ShadowGate(len(COCO_IMAGES), min_recall=0.8, min_precision=0.8)
    runner, f = _shadow(_bundle(model, labels), _bundle(permuted, labels), _coco_frames(),
                        gate)
    det = f["detection"]
    assert f["failures"] == f["non_finite"] == 0  # healthy by the update's own checks
    assert det["mean_abs_count_diff"] == 0.0  # the same boxes ...
    assert det["precision"] < 0.2  # ... with the wrong labels
    assert runner.verdict is not None and runner.verdict[0] == "fail"
    assert "precision" in (runner.verdict[1] or "") and "recall" in (runner.verdict[1] or "")
    np.testing.assert_equal(det["active_count"], det["candidate_count"])
