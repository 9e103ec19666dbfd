"""The e2e payload checker catches image data and bulk arrays, and passes real payloads."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from tests.privacy.payload_checks import assert_no_image_data, validate_payload


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_images_raw_or_base64_are_caught(ext):
    data = cv2.imencode(ext, np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    with pytest.raises(AssertionError):
        assert_no_image_data(data)
    with pytest.raises(AssertionError):
        assert_no_image_data(json.dumps({"x": base64.b64encode(data).decode()}).encode())


def test_long_base64_and_numeric_arrays_are_caught():
    with pytest.raises(AssertionError, match="base64"):
        assert_no_image_data(json.dumps({"blob": "QUJD" * 300}).encode())
    with pytest.raises(AssertionError, match="numeric array"):
        assert_no_image_data(json.dumps({"v": {"deep": [0.5] * 1001}}).encode())
    with pytest.raises(AssertionError, match="not JSON"):
        assert_no_image_data(b"\x00\x01binary")
    assert_no_image_data(json.dumps({"v": [0.5] * 1000, "t": "edge-agent/9j/results/x"}).encode())
    assert_no_image_data(b"")


def test_topics_map_to_kinds():
    assert validate_payload("p/d/cmd/model/update", b"{}") == "command"
    assert validate_payload("ha/sensor/x/config", b"", discovery_prefix="ha") == "discovery"
    with pytest.raises(AssertionError, match="unexpected topic"):
        validate_payload("p/d/secret", b"{}")
    with pytest.raises(AssertionError, match="not a JPEG"):
        validate_payload("p/d/snapshots/door", b"\x89PNG")
