"""The TFLite runtime on the real models: signatures, delegates with CPU fallback, bad files."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ModelError, PluginUnavailableError
from edge_agent.runtime import interpreter
from edge_agent.runtime.interpreter import (
    BACKEND_ENV,
    available_backends,
    check_delegate_library,
    get_backend,
    load_runtime,
)
from tests.conftest import active_backend, shared_model

# file -> (input shape, input dtype, [(output shape, dtype), ...]) as in MANIFEST.md
SIGNATURES = {
    "coco_ssd_mobilenet_v1_1.0_quant.tflite": (
        (1, 300, 300, 3), "uint8",
        [((1, 10, 4), "float32"), ((1, 10), "float32"), ((1, 10), "float32"), ((1,), "float32")]),
    "yolov5n-int8.tflite": ((1, 640, 640, 3), "uint8", [((1, 25200, 85), "uint8")]),
    "tf2_ssd_mobilenet_v2_320_coco_float.tflite": (
        (1, 320, 320, 3), "float32",
        [((1, 10, 4), "float32"), ((1, 10), "float32"), ((1, 10), "float32"), ((1,), "float32")]),
    "face_detection_short_range.tflite": (
        (1, 128, 128, 3), "float32", [((1, 896, 16), "float32"), ((1, 896, 1), "float32")]),
    "pose_detection.tflite": (
        (1, 224, 224, 3), "float32", [((1, 2254, 12), "float32"), ((1, 2254, 1), "float32")]),
    "deeplabv3_mnv2_dm05_pascal_quant.tflite": ((1, 513, 513, 3), "uint8",
                                                [((1, 513, 513), "int64")]),
    "movenet_single_pose_lightning_ptq.tflite": ((1, 192, 192, 3), "uint8",
                                                 [((1, 1, 17, 3), "float32")]),
    "mobilenet_v1_0.25_128_quant.tflite": ((1, 128, 128, 3), "uint8", [((1, 1001), "uint8")]),
    "keras_lstm_mnist_ptq.tflite": ((1, 28, 28), "uint8", [((1, 10), "uint8")]),
    "selfie_segmentation.tflite": ((1, 256, 256, 3), "float32", [((1, 256, 256, 1), "float32")]),
}
SMALL = "mobilenet_v1_0.25_128_quant.tflite"


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_real_model_signature_and_invoke(name: str) -> None:
    in_shape, in_dtype, outs = SIGNATURES[name]
    if name == "selfie_segmentation.tflite" and active_backend() == "tflite_runtime":
        with pytest.raises(ModelError, match="unresolved custom op: Convolution2DTransposeBias"):
            load_runtime(shared_model(name))
        return
    rt = load_runtime(shared_model(name), threads=2)
    try:
        assert rt.info.backend == active_backend()
        assert rt.info.delegate is None and rt.info.fallback_reason is None
        (spec,) = rt.signature.inputs
        assert (spec.shape, spec.dtype) == (in_shape, in_dtype)
        assert [(o.shape, o.dtype) for o in rt.signature.outputs] == outs
        result = rt.infer([np.full(in_shape, 100, dtype=in_dtype)])
        assert [(r.shape, r.dtype.name) for r in result] == outs
        for r in result:
            assert np.isfinite(r.astype(np.float64)).all()
    finally:
        rt.close()


def test_quant_params_are_the_tensors_own() -> None:
    rt = load_runtime(shared_model("yolov5n-int8.tflite"))
    (out,) = rt.signature.outputs
    assert out.quantized and out.zero_point == 3 and out.scale == pytest.approx(0.004483, 1e-3)
    movenet = load_runtime(shared_model("movenet_single_pose_lightning_ptq.tflite"))
    assert not movenet.signature.inputs[0].quantized  # uint8 without quantisation params


def test_int64_output_deeplab_person() -> None:
    import cv2

    from edge_agent.runtime.preprocess import Preprocessor

    rt = load_runtime(shared_model("deeplabv3_mnv2_dm05_pascal_quant.tflite"))
    image = cv2.imread(str(shared_model("images/grace_hopper.bmp")))
    x, _ = Preprocessor(rt.signature.inputs[0])(image)
    (classes,) = rt.infer([x])
    assert classes.dtype == np.int64
    assert 0.55 < float((classes == 15).mean()) < 0.8  # person ~66%


@pytest.mark.parametrize("fallback", [True, False])
@pytest.mark.parametrize("delegate", [
    "edgetpu",
    {"library": "/nonexistent/libvx_delegate.so", "options": {"device": "0", "fast": True}},
    "libm.so.6",  # a real library that is not a delegate
])
def test_delegate_that_cannot_load(delegate: object, fallback: bool) -> None:
    path = shared_model(SMALL)
    if not fallback:
        with pytest.raises(ModelError, match=r"failed to load.*fallback_to_cpu"):
            load_runtime(path, delegate=delegate, fallback_to_cpu=False)
        return
    rt = load_runtime(path, delegate=delegate, fallback_to_cpu=True)
    assert rt.info.delegate is None
    assert rt.info.fallback_reason is not None and "failed to load" in rt.info.fallback_reason
    out = rt.infer([np.zeros((1, 128, 128, 3), np.uint8)])
    assert out[0].shape == (1, 1001)


def test_delegate_config_object() -> None:
    from edge_agent.config import DelegateLibraryConfig

    cfg = DelegateLibraryConfig(library="/nonexistent/libdelegate.so", options={"a": 1})
    rt = load_runtime(shared_model(SMALL), delegate=cfg)
    assert "/nonexistent/libdelegate.so" in (rt.info.fallback_reason or "")


def test_check_delegate_library_reasons() -> None:
    assert "cannot open shared object" in (check_delegate_library("libedgetpu.so.1") or "")
    assert "no such file" in (check_delegate_library("/nope/lib.so") or "")
    assert "not a TFLite delegate" in (check_delegate_library("libm.so.6") or "")


def test_backend_delegate_noise_is_filtered() -> None:
    # the backend's own load_delegate leaves a Delegate whose __del__ raises; pytest turns an
    # unraisable exception into an error (filterwarnings in pyproject), so this test fails
    # if the filter lets it through
    backend = get_backend()
    with interpreter._quiet_delegate_del():
        with pytest.raises((OSError, ValueError)):
            backend.module.load_delegate("libedgetpu.so.1")
        gc.collect()


@pytest.mark.parametrize(("content", "match"), [
    (b"", "empty"),
    (b"definitely not a flatbuffer, just text\n", "not a valid Flatbuffer"),
])
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match) as err:
        load_runtime(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_model(tmp_path: Path) -> None:
    data = shared_model("face_detection_short_range.tflite").read_bytes()
    path = tmp_path / "truncated.tflite"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load model"):
        load_runtime(path)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_runtime(tmp_path / "nope.tflite")


def test_unresolved_custom_op() -> None:
    with pytest.raises(ModelError, match="unresolved custom op: fake-op-double") as err:
        load_runtime(shared_model("invalid_model_unresolved_custom_op.tflite"))
    assert "\n" not in str(err.value)


def test_infer_checks_inputs_and_close() -> None:
    rt = load_runtime(shared_model(SMALL))
    with pytest.raises(ModelError, match=r"wants uint8\[1, 128, 128, 3\], got float32"):
        rt.infer([np.zeros((1, 128, 128, 3), np.float32)])
    with pytest.raises(ModelError, match="takes 1 inputs"):
        rt.infer([])
    assert "CONV_2D" in rt.ops() or "DELEGATE" in rt.ops()
    rt.close()
    with pytest.raises(ModelError, match="closed"):
        rt.infer([np.zeros((1, 128, 128, 3), np.uint8)])


def test_backend_choice_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "litert")
    assert get_backend().name == "ai_edge_litert"
    monkeypatch.setenv(BACKEND_ENV, "nonsense")
    with pytest.raises(PluginUnavailableError, match="EDGE_AGENT_BACKEND"):
        get_backend()
    monkeypatch.setenv(BACKEND_ENV, "tflite_runtime")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(PluginUnavailableError, match="numpy<2"):
            load_runtime(shared_model(SMALL))


def test_available_backends_lists_litert() -> None:
    rows = {name: (version, error) for name, version, error in available_backends()}
    assert set(rows) == {"ai_edge_litert", "tflite_runtime", "tensorflow"}
    assert rows["ai_edge_litert"][0] and rows["ai_edge_litert"][1] is None


def test_edgetpu_model_without_delegate_says_so(tmp_path: Path) -> None:
    import flatbuffers

    schema = interpreter.schema_module()
    src = shared_model("invalid_model_unresolved_custom_op.tflite").read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src, 0))
    for code in model.operatorCodes:
        if code.customCode:
            code.customCode = b"edgetpu-custom-op"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "model_edgetpu.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(ModelError, match="compiled for the Coral Edge TPU"):
        load_runtime(path, delegate="edgetpu")
