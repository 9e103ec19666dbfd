"""Preprocessing: letterbox round trip, colour order, value mapping from quant params, models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.runtime.base import TensorSpec
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import PAD_VALUE, Preprocessor, prepare_window, value_table
from tests.conftest import shared_model

PIXELS = np.arange(256)


def spec(shape: tuple[int, ...], dtype: str = "uint8", scale: float = 0.0,
         zp: int = 0) -> TensorSpec:
    return TensorSpec("input", 0, shape, dtype, scale, zp)


def frame_with_box(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def found_box(x: np.ndarray) -> np.ndarray:
    """The white rectangle in a (1, H, W, 3) raw-pixel input, normalised xyxy."""
    mask = x[0, :, :, 0] > 200
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([[xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]])


@pytest.mark.parametrize(("frame_hw", "model_hw"), [
    ((480, 640), (640, 640)),   # landscape into square: pad top and bottom
    ((640, 480), (320, 320)),   # portrait: pad left and right
    ((720, 1280), (300, 300)),
    ((300, 300), (300, 300)),   # no padding at all
])
def test_letterbox_round_trip(frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> None:
    h, w = frame_hw
    box = (w // 5, h // 4, w // 2, (h * 4) // 5)
    pre = Preprocessor(spec((1, *model_hw, 3)), letterbox=True, color="bgr")
    x, transform = pre(frame_with_box(h, w, box))
    assert x.shape == (1, *model_hw, 3) and x.dtype == np.uint8
    back = transform.to_frame(found_box(x))[0]
    expected = np.array([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
    # one model pixel of tolerance
    assert np.abs(back - expected).max() <= 1.5 / min(model_hw)
    # the padding is grey 114, the image keeps its aspect ratio
    if transform.pad_y > 0:
        assert (x[0, 0] == PAD_VALUE).all() and (x[0, -1] == PAD_VALUE).all()
    if transform.pad_x > 0:
        assert (x[0, :, 0] == PAD_VALUE).all() and (x[0, :, -1] == PAD_VALUE).all()
    aspect = (transform.scale_x * model_hw[1]) / (transform.scale_y * model_hw[0])
    assert aspect == pytest.approx(w / h, rel=0.01)


def test_plain_resize_is_identity_transform() -> None:
    pre = Preprocessor(spec((1, 300, 300, 3)), letterbox=False, color="bgr")
    box = (64, 48, 320, 400)
    x, transform = pre(frame_with_box(480, 640, box))
    assert (transform.scale_x, transform.pad_x, transform.scale_y, transform.pad_y) == (1, 0, 1, 0)
    back = transform.to_frame(found_box(x))[0]
    assert np.abs(back - [0.1, 0.1, 0.5, 400 / 480]).max() < 0.01


def test_frame_size_change_updates_transform() -> None:
    pre = Preprocessor(spec((1, 320, 320, 3)), letterbox=True)
    _, t1 = pre(np.zeros((480, 640, 3), np.uint8))
    _, t2 = pre(np.zeros((640, 480, 3), np.uint8))
    assert t1.pad_y > 0 and t1.pad_x == 0 and t2.pad_x > 0 and t2.pad_y == 0


def test_color_order() -> None:
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    rgb, _ = Preprocessor(spec((1, 10, 10, 3)), color="rgb")(blue)
    assert (rgb[0, ..., 2] == 255).all() and (rgb[0, ..., 0] == 0).all()
    bgr, _ = Preprocessor(spec((1, 10, 10, 3)), color="bgr")(blue)
    assert (bgr[0, ..., 0] == 255).all()


@pytest.mark.parametrize(("dtype", "scale", "zp", "expected", "what"), [
    ("uint8", 1 / 128, 128, PIXELS, "raw pixels"),           # COCO SSD, mobilenet
    ("uint8", 1 / 255, 0, PIXELS, "raw pixels"),             # YOLOv5 int8 export
    ("int8", 1 / 255, -128, PIXELS - 128, "pixels - 128"),   # int8 I/O, 0..1
    ("int8", 2 / 255, -1, PIXELS - 128, "pixels - 128"),     # TFLM person_detect, -1..1
    ("int8", 1 / 128, 0, PIXELS - 128, "pixels - 128"),      # int8, -1..1
    ("uint8", 0.0, 0, PIXELS, "raw pixels"),                 # MoveNet: no quant params
    ("int8", 0.0, 0, PIXELS - 128, "raw pixels - 128"),
])
def test_value_table_reduces_to_pixel_codes(dtype: str, scale: float, zp: int,
                                            expected: np.ndarray, what: str) -> None:
    table, description = value_table(spec((1, 8, 8, 3), dtype, scale, zp))
    assert table.dtype == np.dtype(dtype)
    assert np.array_equal(table.astype(int), expected)
    assert description == what


def test_value_table_general_quantisation() -> None:
    # a range wider than -1..1 (scale 1/64, zp 128 covers -2..2): q = round(r * 64 + 128)
    table, _ = value_table(spec((1, 8, 8, 3), "uint8", 1 / 64, 128))
    r = (PIXELS - 127.5) / 127.5
    assert np.array_equal(table, np.clip(np.rint(r * 64 + 128), 0, 255).astype(np.uint8))
    assert table[0] == 64 and table[255] == 192
    # an explicit input_range overrides the derivation
    table, _ = value_table(spec((1, 8, 8, 3), "uint8", 1 / 255, 0), "-1..1")
    # pixels below mid-grey map below 0 and clip: what the user asked for
    assert table[0] == 0 and table[127] == 0 and table[191] == 127 and table[255] == 255


@pytest.mark.parametrize(("input_range", "lo", "hi"), [
    ("auto", -1.0, 1.0), ("-1..1", -1.0, 1.0), ("0..1", 0.0, 1.0), ("0..255", 0.0, 255.0),
])
def test_float_inputs(input_range: str, lo: float, hi: float) -> None:
    pre = Preprocessor(spec((1, 4, 4, 3), "float32"), input_range=input_range)
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 255
    x, _ = pre(image)
    assert x.dtype == np.float32
    assert x[0, 0, 0, 0] == pytest.approx(hi) and x[0, 1, 1, 0] == pytest.approx(lo)


def test_bad_inputs_and_options() -> None:
    with pytest.raises(ModelError, match="not an image input"):
        Preprocessor(spec((1, 1960), "int8", 0.1, -128))
    with pytest.raises(ModelError, match="input_range"):
        Preprocessor(spec((1, 8, 8, 3), "float32"), input_range="0..2")
    with pytest.raises(ModelError, match="color"):
        Preprocessor(spec((1, 8, 8, 3)), color="rgba")  # type: ignore[arg-type]


def test_gray_inputs() -> None:
    image = np.full((50, 60, 3), (10, 200, 30), np.uint8)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[0, 0]
    x4, _ = Preprocessor(spec((1, 20, 20, 1), "int8", 1 / 255, -128))(image)
    assert x4.shape == (1, 20, 20, 1) and (x4.astype(int) == int(gray) - 128).all()
    x3, _ = Preprocessor(spec((1, 20, 20)))(image)
    assert x3.shape == (1, 20, 20) and (x3 == gray).all()


def test_preallocated_buffers_rotate_and_out() -> None:
    pre = Preprocessor(spec((1, 64, 64, 3), "float32"), letterbox=True, buffers=2)
    image = np.zeros((48, 64, 3), np.uint8)
    a, _ = pre(image)
    b, _ = pre(image)
    c, _ = pre(image)
    assert a is not b and c is a
    out = np.empty((1, 64, 64, 3), np.float32)
    d, _ = pre(image, out=out)
    assert d is out and np.allclose(out, a)


def test_prepare_window_quantises_by_tensor_params() -> None:
    s = spec((1, 1), "int8", 0.024480, -128)
    x = prepare_window(s, np.array([[np.pi / 2]], np.float32))
    assert x.dtype == np.int8 and x.shape == (1, 1)
    assert int(x[0, 0]) == round(np.pi / 2 / 0.024480 - 128)
    clipped = prepare_window(s, np.array([[100.0]], np.float32))
    assert int(clipped[0, 0]) == 127
    window = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert prepare_window(spec((1, 3, 2), "float32"), window).tolist() == [window.tolist()]
    assert prepare_window(spec((1, 6), "float32"), window).ravel().tolist() == list(range(6))
    with pytest.raises(ModelError, match="window x channels"):
        prepare_window(spec((1, 4), "float32"), window)


def test_hello_world_int8_sensor_model() -> None:
    rt = load_runtime(shared_model("sensor/hello_world_int8.tflite"))
    (inp,), (out,) = rt.signature.inputs, rt.signature.outputs
    for x in (0.5, 1.5, 3.0, 4.5):
        (y,) = rt.infer([prepare_window(inp, np.array([[x]], np.float32))])
        assert float(out.dequantize(y)[0, 0]) == pytest.approx(np.sin(x), abs=0.15)


def test_micro_speech_window_fills_flat_input() -> None:
    rt = load_runtime(shared_model("sensor/micro_speech_quantized.tflite"))
    features = np.zeros((49, 40), np.float32)
    (y,) = rt.infer([prepare_window(rt.signature.inputs[0], features)])
    assert y.shape == (1, 4)


def run(model: str, image: str, **kwargs: object) -> list[np.ndarray]:
    rt = load_runtime(shared_model(model))
    frame = cv2.imread(str(shared_model(f"images/{image}")))
    x, _ = Preprocessor(rt.signature.inputs[0], **kwargs)(frame)  # type: ignore[arg-type]
    return rt.infer([x])


def test_uint8_ssd_on_grace_hopper() -> None:
    _, classes, scores, _ = run("coco_ssd_mobilenet_v1_1.0_quant.tflite",
                                        "grace_hopper.bmp")
    assert classes[0, 0] == 0 and scores[0, 0] >= 0.6  # person


def test_float_tf2_ssd_on_zidane() -> None:
    outs = run("tf2_ssd_mobilenet_v2_320_coco_float.tflite", "zidane.jpg")
    classes = next(o for o in outs if o.shape == (1, 10) and np.all(o == np.round(o)))
    scores = next(o for o in outs if o.shape == (1, 10) and o is not classes)
    assert classes[0, 0] == 0 and scores[0, 0] > 0.6


def test_yolo_uint8_letterbox_on_zidane() -> None:
    rt = load_runtime(shared_model("yolov5n-int8.tflite"))
    (y,) = run("yolov5n-int8.tflite", "zidane.jpg", letterbox=True)
    pred = rt.signature.outputs[0].dequantize(y)[0]
    conf = pred[:, 4] * pred[:, 5]  # objectness x person
    assert conf.max() > 0.6


def test_mobilenet_uint8_on_cat() -> None:
    (y,) = run("mobilenet_v2_1.0_224_quant.tflite", "cat.bmp")
    assert 281 <= int(y.argmax()) <= 286  # ImageNet cats (with background at 0)


def test_float_blazeface_letterbox_on_face() -> None:
    outs = run("face_detection_short_range.tflite", "face.jpg", letterbox=True)
    logits = next(o for o in outs if o.shape[-1] == 1)
    assert (logits > np.log(0.9 / 0.1)).sum() >= 2  # sigmoid > 0.9


def test_uint8_no_quant_params_movenet() -> None:
    (kp,) = run("movenet_single_pose_lightning_ptq.tflite", "squat.bmp")
    ref = np.loadtxt(shared_model("movenet_single_pose_lightning_ptq_reference.csv"),
                     delimiter=",", skiprows=1)  # ..., keypoint_x, keypoint_y
    assert np.abs(kp[0, 0, :, 1] - ref[:, 4]).max() < 0.06  # output is (y, x, score)
    assert np.abs(kp[0, 0, :, 0] - ref[:, 5]).max() < 0.06


def test_int8_gray_person_detect_runs() -> None:
    (y,) = run("person_detect_tflm_qdimfix.tflite", "person_96x96_gray.bmp")
    assert y.shape == (1, 2) and y.dtype == np.int8


def test_lstm_rank3_input_mnist() -> None:
    (y,) = run("keras_lstm_mnist_ptq.tflite", "mnist_nine.bmp")
    assert int(y.argmax()) == 9
