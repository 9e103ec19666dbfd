"""Loaded by the agent under test in the chaos run (this folder goes first on PYTHONPATH):
the wall clock (``time.time``, ``time.time_ns``) runs at an offset read from the file in
``EDGE_AGENT_CHAOS_CLOCK`` (seconds, re-read at most every 0.2 s), so the run can make it jump
forward and back while the monotonic clock runs on, as an NTP step does.

Why not libfaketime: Debian's 0.9.10 fails every ``time.sleep`` with EINVAL when it leaves the
monotonic clock alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``), and faking the monotonic clock as
well is not what a clock step does. This fakes only Python's wall clock (what the agent reads
for timestamps, command skew and file ages); C code (SQLite, OpenSSL) sees the real time.
"""

import os
import time

_path = os.environ.get("EDGE_AGENT_CHAOS_CLOCK")
if _path:
    _real_time, _real_time_ns, _mono = time.time, time.time_ns, time.monotonic
    _state = {"offset": 0.0, "read": -1.0}

    def _offset() -> float:
        now = _mono()
        if now - _state["read"] >= 0.2:
            _state["read"] = now
            try:
                with open(_path) as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
