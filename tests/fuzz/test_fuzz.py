"""Fuzzing the three parsers of untrusted input: the config loader, the command dispatcher (with
the real config validation behind the ``config`` command) and the manifest parser.

Every case must end in a clear error of the documented kind (ConfigError with one
``path: message`` line per problem; an error reply naming the problem; UpdateError) or be
accepted: never another exception, a hang or a second reply. ``EDGE_AGENT_FUZZ_EXAMPLES`` sets
the cases per target (default 300 here; ``./dev fuzz`` runs 4,000 per target, 12,000 in all,
and writes the counts to ``EDGE_AGENT_FUZZ_REPORT``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import make_config, parse_config
from edge_agent.errors import ConfigError, UpdateError
from edge_agent.mqtt.commands import Command, CommandDispatcher, sign_command
from edge_agent.updater.manifest import build_manifest, parse_manifest, verify_manifest
from tests.e2e.fuzz_payloads import DEVICE_KEY, STRANGER_KEY, fuzz_commands

EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
CASES: dict[str, int] = {"config": 0, "commands": 0, "manifest": 0}
NOW = 1_800_000_000.0

VALID_CONFIG: dict[str, Any] = {
    "device_id": "fuzz-1", "state_dir": "/tmp/edge-fuzz-state",
    "mqtt": {"host": "localhost", "port": 1883, "groups": ["lobby"]},
    "pipelines": [{
        "name": "door", "source": {"type": "synthetic", "fps": 10},
        "model": {"path": "models/detector.tflite", "decoder": "ssd", "threads": 2},
        "motion": {"enabled": True, "threshold": 25}, "tracking": {"enabled": True},
        "camera_health": {"enabled": True},
        "zones": [{"name": "drive", "polygon": [[0, 0.5], [1, 0.5], [1, 1]]}],
        "privacy": {"labels": {"allow": ["person"]}, "masks": [[[0, 0], [0.2, 0], [0, 0.2]]]},
    }],
    "updates": {"enabled": True, "public_keys": []},
}

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _mutate(obj: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    """A deep copy of ``obj`` with the node at ``path`` replaced, deleted or given a sibling."""
    obj = json.loads(json.dumps(obj))
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "extra" and isinstance(parent, dict):
        parent[f"{last}_unknown"] = value
    else:
        parent[last] = value
    return obj


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random_yaml", "text",
                                 "truncated"]))
    if kind == "text":
        return draw(st.text(max_size=300))
    if kind == "random_yaml":
        return yaml.safe_dump(draw(values))
    paths = _paths(VALID_CONFIG)
    mutated = VALID_CONFIG
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(mutated)
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["replace", "delete", "extra"])) if path else "replace"
        mutated = _mutate(mutated, path, how, draw(values))
    text = yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True)
    if kind == "truncated":
        text = text[:draw(st.integers(0, len(text)))]
    return text


def _check_config_error(exc: ConfigError) -> None:
    lines = str(exc).splitlines()
    assert lines and all(line.strip() for line in lines), repr(str(exc))
    assert "Traceback" not in str(exc)


@SETTINGS
@given(config_texts())
def test_config_loader_gives_a_config_or_a_config_error(text: str) -> None:
    CASES["config"] += 1
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        _check_config_error(exc)


# --------------------------------------------------------------------------- commands


class _Replies:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str | None, bool, str | None]] = []

    def __call__(self, request_id: str | None, ok: bool, error: str | None) -> None:
        with self.lock:
            self.items.append((request_id, ok, error))


def _config_handler(command: Command) -> None:
    """The ``config`` command's own validation (the agent then preflights and writes it)."""
    text = command.payload.get("config")
    if not isinstance(text, str):
        raise ConfigError("config: expected the new config file as text")
    parse_config(text, "config command")


_DISPATCH: dict[str, Any] = {}


def _dispatcher(tmp: Path) -> tuple[CommandDispatcher, _Replies]:
    if not _DISPATCH:
        pub = tmp / "device.pub"
        from cryptography.hazmat.primitives import serialization

        raw = DEVICE_KEY.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        import base64

        pub.write_text(base64.b64encode(raw).decode() + "\n")
        cfg = make_config(state_dir=str(tmp), commands={"public_keys": [str(pub)]},
                          mqtt={"groups": ["lobby"]})
        replies = _Replies()
        handlers = {"rollback": lambda c: None, "restart": lambda c: None,
                    "config": _config_handler, "model/update": lambda c: None}
        _DISPATCH["d"] = (CommandDispatcher(cfg, handlers, replies, clock=lambda: NOW), replies)
    return _DISPATCH["d"]  # type: ignore[no-any-return]


@st.composite
def signed_configs(draw: st.DrawFn) -> bytes:
    """Signed ``config`` commands (the device's key) carrying fuzzed config files."""
    body = {"request_id": draw(st.text(min_size=1, max_size=20)), "ts": NOW,
            "nonce": draw(st.text(min_size=8, max_size=24)), "config": draw(config_texts())}
    key = draw(st.sampled_from([DEVICE_KEY, DEVICE_KEY, STRANGER_KEY]))
    return json.dumps(sign_command(body, key)).encode("utf-8", "surrogatepass")


def _command_case(case: tuple[str, bytes]) -> None:
    CASES["commands"] += 1
    name, payload = case
    dispatcher, replies = _dispatcher(_COMMAND_TMP)
    before = len(replies.items)
    dispatcher.handle(f"edge-agent/{dispatcher.config.device_id}/cmd/{name}", payload)
    got = replies.items[before:]
    assert len(got) == 1, f"{len(got)} replies to one command on {name}"
    _request_id, ok, error = got[0]
    if not ok:
        assert error and "Traceback" not in error


_COMMAND_TMP = Path(os.environ.get("EDGE_AGENT_FUZZ_TMP", "/tmp")) / f"edge-fuzz-{os.getpid()}"
_COMMAND_TMP.mkdir(parents=True, exist_ok=True)

test_command_dispatcher_replies_once_and_never_raises = SETTINGS(given(
    st.one_of(fuzz_commands(64 * 1024).map(lambda c: (c.name, c.payload)),
              signed_configs().map(lambda p: ("config", p))))(_command_case))


# --------------------------------------------------------------------------- manifests

_KEYS: dict[str, Any] = {}


def _valid_manifest() -> dict[str, Any]:
    m = build_manifest(name="detector", version=3, sha256="ab" * 32, size=1234, key=DEVICE_KEY,
                       labels="person\ncar\n")
    return dict(m.raw)


VALID_MANIFEST = _valid_manifest()


@st.composite
def manifests(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["mutated", "mutated", "json", "bytes", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(values)).encode()
    mutated: Any = VALID_MANIFEST
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(mutated) if isinstance(mutated, dict) else [()]
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["replace", "delete", "extra"])) if path else "replace"
        mutated = _mutate(mutated, path, how, draw(values))
    text = json.dumps(mutated).encode()
    if kind == "truncated":
        text = text[:draw(st.integers(0, len(text)))]
    return text if draw(st.booleans()) else (mutated if isinstance(mutated, dict) else text)


def _manifest_case(data: Any) -> None:
    CASES["manifest"] += 1
    if not _KEYS:
        from edge_agent.signing import key_id

        pub = DEVICE_KEY.public_key()
        _KEYS[key_id(pub)] = pub
    try:
        m = parse_manifest(data)
    except UpdateError as exc:
        assert str(exc)
        return
    try:
        verify_manifest(m, _KEYS)
    except UpdateError as exc:
        assert str(exc)


test_manifest_parser_gives_a_manifest_or_an_update_error = SETTINGS(given(manifests())(
    _manifest_case))


def test_zz_report_case_counts() -> None:
    """Runs last in this module: the case counts, for ``./dev fuzz``."""
    report = os.environ.get("EDGE_AGENT_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(CASES))
    assert all(n >= 1 for n in CASES.values()) or not report
