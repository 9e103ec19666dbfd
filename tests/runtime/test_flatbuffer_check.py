"""The flatbuffer bounds check: every real model passes whole; cut anywhere, it is refused
before a backend sees it (tflite-runtime 2.14 crashed the process on a truncated file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ModelError
from edge_agent.runtime.flatbuffer_check import FlatbufferDamaged, check_model_bytes
from edge_agent.runtime.interpreter import load_runtime
from tests.conftest import shared_model

SSD = "coco_ssd_mobilenet_v1_1.0_quant.tflite"


def test_every_shared_model_passes(shared: Path) -> None:
    models = sorted(shared.glob("*.tflite"))
    assert len(models) >= 5
    for m in models:
        check_model_bytes(m.read_bytes())


@pytest.mark.parametrize("keep", [9, 64, 1_000, 100_000, 2_000_000, 4_000_000])
def test_truncated_model_is_refused(keep: int) -> None:
    data = shared_model(SSD).read_bytes()
    with pytest.raises(FlatbufferDamaged, match=r"outside|identifier"):
        check_model_bytes(data[:keep])


def test_truncated_model_is_a_model_error_on_load(tmp_path: Path) -> None:
    # in the tflite-runtime pass this load would have been a SIGSEGV of the test process
    path = tmp_path / "cut.tflite"
    path.write_bytes(shared_model(SSD).read_bytes()[:100_000])
    with pytest.raises(ModelError, match=r"not a valid Flatbuffer \(corrupt or truncated"):
        load_runtime(path)


