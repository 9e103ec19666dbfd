"""Hypothesis strategies for command payloads thrown at a running agent.

A mix of malformed bytes and JSON, wrong types, oversized bodies, unknown commands,
well-formed model updates with bad manifests (unsigned, signed by an unknown key, or signed by
the configured key but not applicable: old version, bytes that do not match, an unreachable
URL) and rollbacks without a valid signature. :func:`generate` draws them into a list first
(derandomized, so every run sends the same payloads) so the test can publish them in one go.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_agent.updater.manifest import build_manifest

# deterministic keys: the device trusts DEVICE_KEY; STRANGER_KEY is configured nowhere
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
STRANGER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(101, 133)))

COMMAND_NAMES = ("model/update", "rollback", "model/rollback", "config", "restart")
OTHER_NAMES = ("reboot", "model/delete", "model/update/now", "shell", "ünïcödé", "a/b/c", "x")


@dataclass(frozen=True, slots=True)
class FuzzCommand:
    """One payload and where it goes (``name``: the part of the topic after ``cmd/``)."""

    name: str
    group: bool  # True: P/group/<g>/cmd/<name>, else P/D/cmd/<name>
    payload: bytes
    kind: str  # which strategy made it (for failure messages)


_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=12))
json_values = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                    max_size=3), max_leaves=4)
request_ids = st.text(min_size=1, max_size=24) | st.sampled_from(["r1", "a" * 128, "unknown"])
pipelines = st.sampled_from(["cam"] * 4 + ["yard", "CAM", "", "bad name", "x" * 70]) | st.text(
    max_size=10)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def _signed(key: Ed25519PrivateKey, name: str, version: int, sha: str, size: int,
            url: str | None) -> dict[str, Any]:
    manifest = build_manifest(name=name, version=version, sha256=sha, size=size, key=key,
                              url=url, created="2026-11-28T12:00:00Z")
    return dict(manifest.raw)


_urls = st.sampled_from([None, "http://127.0.0.1:9/model.tflite", "file:///etc/passwd",
                         "ftp://example.invalid/m", "not a url"])
signed_manifests = st.builds(
    _signed, st.sampled_from([DEVICE_KEY, STRANGER_KEY]),
    st.sampled_from(["detector", "face", "x"]), st.integers(0, 3), _hex,
    st.integers(1, 1 << 20), _urls)
manifest_keys = st.sampled_from(["schema", "name", "version", "sha256", "size", "url",
                                 "created", "key_id", "signature", "labels", "labels_sha256"])
bad_manifests = (
    st.dictionaries(manifest_keys | st.text(max_size=8), json_values, max_size=8)
    | signed_manifests
    | signed_manifests.flatmap(lambda m: st.sampled_from(sorted(m)).map(
        lambda k: {**m, k: "tampered"}))  # any field changed after signing
)

updates = st.fixed_dictionaries(
    {"request_id": request_ids, "pipeline": pipelines, "manifest": bad_manifests},
    optional={"url": _urls.filter(bool),
              "data": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
              | st.text(max_size=16)})
rollbacks = st.fixed_dictionaries(
    {"request_id": request_ids, "pipeline": pipelines},
    optional={"ts": st.integers(0, 2_000_000_000) | st.floats(allow_nan=False),
              "nonce": st.text(min_size=8, max_size=20), "key_id": st.text(max_size=16),
              "signature": st.binary(min_size=1, max_size=64).map(
                  lambda b: base64.b64encode(b).decode()) | st.text(min_size=1, max_size=20)})
objects_with_id = st.builds(lambda d, r: {**d, "request_id": r},
                            st.dictionaries(st.text(max_size=12), json_values, max_size=5),
                            request_ids)
wrong_types = st.builds(lambda d, r: {**d, "request_id": r},
                        st.dictionaries(st.sampled_from(["pipeline", "manifest", "url", "data"]),
                                        json_values, max_size=3),
                        json_values.filter(lambda v: not isinstance(v, str)))


def _dumps(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def fuzz_commands(draw: st.DrawFn, max_payload: int) -> FuzzCommand:
    """One command: a kind of payload, and mostly (not always) its own command's topic."""
    kind = draw(st.sampled_from(["update", "update", "update", "rollback", "rollback",
                                 "object", "wrong_types", "json", "truncated", "bytes",
                                 "deep", "oversized", "surrogate"]))
    ascii_only = draw(st.booleans())
    if kind == "update":
        obj: Any = draw(updates)
    elif kind == "rollback":
        obj = draw(rollbacks)
    elif kind == "object":
        obj = draw(objects_with_id)
    elif kind == "wrong_types":
        obj = draw(wrong_types)
    else:
        obj = draw(json_values)
    payload = _dumps(obj, ascii_only)
    if kind == "truncated":
        payload = _dumps(draw(updates), ascii_only)
        payload = payload[:draw(st.integers(0, max(0, len(payload) - 1)))]
    elif kind == "bytes":
        payload = draw(st.binary(max_size=200))
    elif kind == "deep":
        depth = draw(st.integers(500, 50_000))
        payload = b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    elif kind == "oversized":
        base = draw(updates)
        payload = _dumps({**base, "pad": "x" * (max_payload + draw(st.integers(1, 4096)))},
                         True)
    elif kind == "surrogate":
        payload = b'{"request_id": "\\ud800' + draw(st.text(max_size=5)).encode() + \
            b'", "pipeline": "cam"}'
    topic_name = {"update": "model/update", "rollback": draw(st.sampled_from(
        ["rollback", "model/rollback"]))}.get(kind)
    if topic_name is None or draw(st.integers(0, 9)) == 0:
        topic_name = draw(st.sampled_from(COMMAND_NAMES + OTHER_NAMES))
    return FuzzCommand(topic_name, draw(st.integers(0, 3)) == 0, payload, kind)


def generate(n: int, max_payload: int) -> list[FuzzCommand]:
    """``n`` commands, the same on every run (derandomized, no example database)."""
    out: list[FuzzCommand] = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
              deadline=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_commands(max_payload))
    def collect(cmd: FuzzCommand) -> None:
        out.append(cmd)

    collect()
    return out


def readable_request_id(payload: bytes, max_payload: int) -> str | None:
    """The request_id a well-formed request carries (the agent must echo it), else None.

    Well-formed: within the size limit, a JSON object with a ``request_id`` string of 1 to 128
    printable characters. Anything else still gets one reply, with request_id ``unknown``.
    """
    if len(payload) > max_payload:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("request_id")
        # only printable ids are echoed (issue 12: a newline would forge log lines; a lone
        # surrogate is not text); the others get their one reply as ``unknown``
        if isinstance(rid, str) and 0 < len(rid) <= 128 and rid.isprintable():
            return rid
    return None
