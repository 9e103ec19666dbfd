"""Sensor URIs: parsing, and the checks the config models run before anything is opened.

Pure (no I/O): :mod:`edge_agent.config` calls :func:`uri_problems` so a bad scheme, an
unknown query key or a non-number is a config error at ``check-config`` and at start, and the
readers in :mod:`edge_agent.sources` parse the same URI with :func:`parse_sensor_uri`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("file", "wav", "alsa", "synthetic", "serial", "iio", "stdin", "unix")
SYNTHETIC_SHAPES = ("sine", "ramp", "noise")

_FLOAT, _INT, _POS_FLOAT, _POS_INT, _TEXT, _FLAG = (
    "a number", "an integer", "a number > 0", "an integer > 0", "text", "a flag (0/1)")
QUERY_KEYS: dict[str, dict[str, str]] = {
    "synthetic": {
        "rate": _POS_FLOAT, "freq": _FLOAT, "amplitude": _FLOAT, "offset": _FLOAT,
        "noise": _FLOAT, "seed": _INT, "samples": _POS_INT, "anomaly_every": _INT,
        "anomaly_len": _INT, "anomaly_gain": _FLOAT, "start": _FLOAT, "stop": _FLOAT,
        "step": _FLOAT,
    },
    "serial": {"baud": _POS_INT},
    "iio": {"rate": _POS_FLOAT, "channels": _TEXT, "buffered": _FLAG, "length": _POS_INT,
            "dev": _TEXT},
    "file": {}, "wav": {}, "alsa": {}, "stdin": {}, "unix": {},
}
"""Scheme -> the query keys its reader reads, and what each must be."""


@dataclass(frozen=True, slots=True)
class SensorUri:
    """A parsed sensor URI: ``scheme:path?key=value``; a bare path has scheme ``file``."""

    scheme: str
    path: str
    query: dict[str, str]

    def get_float(self, key: str, default: float | None) -> float | None:
        """The query value ``key`` as a float, or ``default``."""
        return float(self.query[key]) if key in self.query else default

    def get_int(self, key: str, default: int | None) -> int | None:
        """The query value ``key`` as an int, or ``default``."""
        return int(self.query[key]) if key in self.query else default


def parse_sensor_uri(uri: str) -> SensorUri:
    """Split a sensor URI.

    ``serial:///dev/ttyUSB0?baud=9600`` -> ("serial", "/dev/ttyUSB0", {"baud": "9600"});
    ``synthetic:sine?freq=2`` -> ("synthetic", "sine", {...}); ``/data/x.csv`` -> ("file", ...).
    """
    head = uri.split(":", 1)[0] if ":" in uri else ""
    if not head or "/" in head or len(head) == 1:  # a plain path (or a Windows drive letter)
        return SensorUri("file", uri, {})
    parts = urlsplit(uri)
    path = unquote(parts.netloc + parts.path) if parts.netloc else unquote(parts.path)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return SensorUri(parts.scheme.lower(), path, query)


def _fits(value: str, what: str) -> bool:
    try:
        if what in (_FLOAT, _POS_FLOAT):
            number = float(value)
            return math.isfinite(number) and (what == _FLOAT or number > 0)
        if what == _POS_INT:
            return int(value) > 0
        if what == _INT:
            int(value)
            return True
    except ValueError:
        return False
    if what == _FLAG:
        return value.lower() in {"0", "1", "true", "false", "yes", "no"}
    return bool(value)


def uri_problems(uri: str, channels: int) -> list[str]:
    """What is wrong with a sensor ``uri`` for a source of ``channels`` (empty: nothing)."""
    if not uri.strip():
        return ["empty uri (expected a file path or scheme:..., see SENSORS.md)"]
    parsed = parse_sensor_uri(uri)
    scheme = parsed.scheme
    if scheme not in QUERY_KEYS:
        return [f"unknown sensor scheme {scheme!r} (expected a file path or one of "
                f"{', '.join(s + ':' for s in SCHEMES)})"]
    problems: list[str] = []
    if scheme == "file" and parsed.path.lower().endswith(".wav"):
        scheme = "wav"
    if scheme in {"file", "wav", "unix", "serial", "iio"} and not parsed.path:
        problems.append(f"{scheme}: URI without a path")
    if scheme == "synthetic" and (parsed.path or "sine") not in SYNTHETIC_SHAPES:
        problems.append(f"unknown synthetic shape {parsed.path!r} (expected one of "
                        f"{', '.join(SYNTHETIC_SHAPES)})")
    known = QUERY_KEYS[scheme]
    for key, value in parsed.query.items():
        if key not in known:
            expected = ", ".join(sorted(known)) or "none"
            problems.append(f"unknown {scheme} URI parameter {key!r} (expected: {expected})")
        elif not _fits(value, known[key]):
            problems.append(f"{scheme} URI parameter {key}={value!r} (expected {known[key]})")
    if scheme == "synthetic" and (parsed.path or "sine") == "ramp" and not problems:
        start = float(parsed.query.get("start", 0.0))
        stop = float(parsed.query.get("stop", 1.0))
        if float(parsed.query.get("step", 0.01)) <= 0 or stop <= start:
            problems.append("a synthetic ramp needs step > 0 and stop > start")
    if scheme == "iio" and "channels" in parsed.query and not problems:
        wanted = [c for c in parsed.query["channels"].split(",") if c]
        if len(wanted) != channels:
            problems.append(f"iio URI names {len(wanted)} channel(s) but the source has "
                            f"channels: {channels} (they must be equal)")
    return problems
