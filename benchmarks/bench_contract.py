"""How to type the payloads: the current path against pydantic v2 and msgspec, per result.

Run: ``.venv/bin/python benchmarks/bench_contract.py`` (prints JSON). msgspec is not a
dependency: the script measures it when it can be imported (``pip install msgspec`` into a
scratch target and put it on ``PYTHONPATH``) and says so otherwise.

Each figure is the median CPU time (microseconds) to turn one 10-detection result payload into
validated, compact UTF-8 JSON bytes, as the egress guard must:

* ``current_us``: the frozen dict validated by the generated JSON Schema validator
  (fastjsonschema) and serialised by the shared ``json.JSONEncoder`` (what the guard does).
* ``pydantic_build_us``: a frozen pydantic v2 model built from the values (what a typed policy
  would do, validation on construction), then ``model_dump_json``.
* ``pydantic_validate_us``: ``model_validate`` of the dict, then ``model_dump_json``.
* ``msgspec_build_us`` / ``msgspec_convert_us``: the same two with frozen ``msgspec.Struct``
  (constraints through ``msgspec.Meta``), ``msgspec.json.encode``.

``*_same_bytes`` says whether the library's JSON is byte for byte the guard's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from benchmarks.common import median_cpu_us  # noqa: E402
from edge_agent.config import PrivacyConfig  # noqa: E402
from edge_agent.privacy import new_seal  # noqa: E402
from edge_agent.privacy.egress import dumps  # noqa: E402
from edge_agent.privacy.policy import PrivacyPolicy  # noqa: E402
from edge_agent.privacy.schemas import validate  # noqa: E402
from edge_agent.privacy.seal import thaw  # noqa: E402
from edge_agent.types import Detection, Inference, ModelRef, Result  # noqa: E402

Unit = Annotated[float, Field(ge=0, le=1)]


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PModel(_P):
    name: str = Field(max_length=256)
    version: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$|^$")


class PFrame(_P):
    index: int = Field(ge=0)
    width: int = Field(ge=0)
    height: int = Field(ge=0)


class PDetection(_P):
    label: str = Field(max_length=128)
    class_id: int
    score: Unit | None = None
    box: tuple[Unit, Unit, Unit, Unit]


class PResult(_P):
    schema_: str = Field(alias="schema")
    id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    device: str = Field(max_length=128, pattern=r"^[a-z0-9_-]+$")
    pipeline: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    ts: str
    model: PModel
    frame: PFrame
    inference_ms: float = Field(ge=0)
    detections: tuple[PDetection, ...] = Field(max_length=1000)
    counts: dict[str, int]




def _payload() -> dict[str, Any]:
    dets = tuple(Detection(i % 3, ["person", "car", "dog"][i % 3], 0.5 + i / 40,
                           (0.1 + i / 50, 0.2, 0.3 + i / 50, 0.6)) for i in range(10))
    res = Result("cam", 1, 1_790_000_000.0, 1280, 720, ModelRef("ssd", 1, "e" * 64), 10.0,
                 Inference(dets))
    msg = PrivacyPolicy(PrivacyConfig(), "cam", "dev", new_seal()).result(res)
    body: dict[str, Any] = thaw(msg.payload)
    # what the guard validates and sends: the outbox's seq and id in the head
    return {"schema": body.pop("schema"), "id": "0" * 32, "seq": 1, **body}


def run() -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    payload = _payload()
    frozen = new_seal().issue("result", "cam", payload).payload
    want = dumps(frozen)
    out: dict[str, Any] = {"detections": len(payload["detections"])}

    def current() -> bytes:
        validate("result", frozen)
        return dumps(frozen)

    out["current_us"] = median_cpu_us(current, 2000)

    def p_build() -> bytes:
        m = PResult(schema=payload["schema"], id=payload["id"], seq=payload["seq"],
                    device=payload["device"],
                    pipeline=payload["pipeline"], ts=payload["ts"],
                    model=PModel(**payload["model"]), frame=PFrame(**payload["frame"]),
                    inference_ms=payload["inference_ms"],
                    detections=tuple(PDetection(**d) for d in payload["detections"]),
                    counts=payload["counts"])
        return m.model_dump_json(by_alias=True, exclude_none=True).encode()

    def p_validate() -> bytes:
        m = PResult.model_validate(payload)
        return m.model_dump_json(by_alias=True, exclude_none=True).encode()

    out["pydantic_build_us"] = median_cpu_us(p_build, 2000)
    out["pydantic_validate_us"] = median_cpu_us(p_validate, 2000)
    out["pydantic_same_bytes"] = p_build() == want
    out["pydantic_version"] = __import__("pydantic").VERSION
    if msgspec is None:
        out["msgspec"] = "not installed: not measured"
    else:
        out.update(_msgspec(payload, want))
    out["current_same_bytes"] = current() == want
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


try:  # not a dependency: measured when importable
    import msgspec
except ImportError:  # pragma: no cover
    msgspec = None

if msgspec is not None:
    MUnit = Annotated[float, msgspec.Meta(ge=0, le=1)]

    class MModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        name: Annotated[str, msgspec.Meta(max_length=256)]
        version: Annotated[int, msgspec.Meta(ge=0)]
        sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$|^$")]

    class MFrame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        index: Annotated[int, msgspec.Meta(ge=0)]
        width: Annotated[int, msgspec.Meta(ge=0)]
        height: Annotated[int, msgspec.Meta(ge=0)]

    class MDetection(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                     omit_defaults=True):
        label: Annotated[str, msgspec.Meta(max_length=128)]
        class_id: int
        score: MUnit | None = None
        box: tuple[MUnit, MUnit, MUnit, MUnit] = (0.0, 0.0, 0.0, 0.0)

    class MResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                  rename={"schema_": "schema"}):
        schema_: str
        id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
        seq: Annotated[int, msgspec.Meta(ge=0)]
        device: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[a-z0-9_-]+$")]
        pipeline: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,64}$")]
        ts: str
        model: MModel
        frame: MFrame
        inference_ms: Annotated[float, msgspec.Meta(ge=0)]
        detections: Annotated[tuple[MDetection, ...], msgspec.Meta(max_length=1000)]
        counts: dict[str, int]


def _msgspec(payload: dict[str, Any], want: bytes) -> dict[str, Any]:
    enc = msgspec.json.Encoder()

    def m_build() -> bytes:
        # Struct construction does not check constraints: only convert/decode do
        m = MResult(payload["schema"], payload["id"], payload["seq"], payload["device"],
                    payload["pipeline"], payload["ts"], MModel(**payload["model"]),
                    MFrame(**payload["frame"]), payload["inference_ms"],
                    tuple(MDetection(**d) for d in payload["detections"]), payload["counts"])
        out: bytes = enc.encode(m)
        return out

    def m_convert() -> bytes:
        out: bytes = enc.encode(msgspec.convert(payload, MResult))
        return out

    return {"msgspec_build_unchecked_us": median_cpu_us(m_build, 2000),
            "msgspec_convert_us": median_cpu_us(m_convert, 2000),
            "msgspec_same_bytes": m_convert() == want, "msgspec_version": msgspec.__version__}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
