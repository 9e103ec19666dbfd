"""``edge-agent model inspect`` and ``edge-agent model quantize``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelError
from edge_agent.runtime.inspect import describe_model, format_description
from edge_agent.runtime.quantize import quantize_model


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def cmd_inspect(args: argparse.Namespace) -> int:
    """``edge-agent model inspect FILE [--json]``; exit 1 when the model does not load."""
    info = describe_model(args.file)
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2, default=_jsonable))
    else:
        print(format_description(info))
    return 0 if info["loads"] else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    """``edge-agent model quantize FILE --calibration DIR --out FILE``."""
    calibration = Path(args.calibration)
    if not calibration.is_dir():
        raise ModelError(f"--calibration {calibration}: not a folder of images")
    report = quantize_model(
        Path(args.file), calibration, Path(args.out),
        letterbox=bool(getattr(args, "letterbox", False)),
        input_range=getattr(args, "input_range", "auto") or "auto",
        input_type=getattr(args, "input_type", "uint8") or "uint8",
        output_type=getattr(args, "output_type", "float32") or "float32",
        limit=int(getattr(args, "limit", 200) or 200),
        threads=int(getattr(args, "threads", 2) or 2))
    print(f"wrote {args.out}: {report['int8_size']} bytes (float: {report['float_size']}), "
          f"calibrated on {report['calibration_samples']} samples")
    print(f"invoke median: float {report['float_ms']:.2f} ms, int8 {report['int8_ms']:.2f} ms")
    for row in report["outputs"]:
        extra = f", top-1 agreement {row['top1_agreement']:.0%}" if "top1_agreement" in row \
            else ""
        print(f"  output {row['name']} {row['shape']}: relative RMSE "
              f"{row['relative_rmse']:.3f}{extra}")
    return 0
