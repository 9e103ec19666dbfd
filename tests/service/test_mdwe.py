"""MemoryDenyWriteExecute=yes is safe for our runtime: models run with W+X mappings refused.

The kernel's own switch (``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, Linux >= 6.3) refuses
what the unit's seccomp filter refuses (a mapping that is writable and executable, or one made
executable later), so a subprocess with it set stands in for the sandbox.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_model

PROBE = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("UNSUPPORTED")
    sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("NOT-ENFORCED")
    sys.exit(0)
except OSError:
    pass
import numpy as np, cv2
from edge_agent.runtime.interpreter import load_runtime
for path in sys.argv[1:]:
    rt = load_runtime(path, threads=2)
    ins = [np.zeros(s.shape, dtype=s.dtype) for s in rt.signature.inputs]
    for _ in range(2):
        rt.infer(ins)
img = np.zeros((480, 640, 3), np.uint8)
cv2.imencode(".jpg", cv2.GaussianBlur(cv2.resize(img, (300, 300)), (5, 5), 0))
print("RAN")
"""


def test_models_run_with_write_execute_mappings_refused() -> None:
    models = [str(shared_model(n)) for n in (
        "coco_ssd_mobilenet_v1_1.0_quant.tflite",       # uint8
        "yolov5n-int8.tflite",                           # int8 inside
        "tf2_ssd_mobilenet_v2_320_coco_float.tflite",    # dynamic range
        "face_detection_short_range.tflite",             # float16 weights
    )]
    proc = subprocess.run([sys.executable, "-c", PROBE, *models], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    if "UNSUPPORTED" in proc.stdout or "NOT-ENFORCED" in proc.stdout:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAN" in proc.stdout
