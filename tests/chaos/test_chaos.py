"""The short chaos run: every fault once, on the real daemon, every invariant asserted.

``./dev chaos --long`` runs each fault several times with longer outages and writes the
figures of RESILIENCE.md; this is the same code with one round and short outages (2-4 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.broker import mosquitto_binary
from tests.chaos.runner import FAULTS, LOSSY, ChaosRun
from tests.conftest import IN_CI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_every_fault_once_loses_nothing_and_recovers(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed (./dev test installs it)")
        pytest.skip("mosquitto is not installed")
    chaos = ChaosRun(tmp_path, seed=18, outage_s=(2.0, 4.0))
    report: dict[str, object] = {}
    try:
        chaos.start()
        for fault in FAULTS:
            chaos.inject(fault)  # raises ChaosError when an invariant breaks
    finally:
        report = chaos.close()
    assert report["exit_code"] == 0, "the agent did not stop cleanly on SIGTERM"
    streams = report["streams"]
    assert isinstance(streams, dict)
    records = {f["fault"]: f for f in report["faults"]}  # type: ignore[union-attr]
    counted = sum(records[f]["lost"] for f in LOSSY)  # seq gaps the agent counted
    for name in ("results/synth", "results/cam"):
        assert streams[name]["distinct"] > 50, f"{name}: too few results to judge"
        assert streams[name]["boots"] == 4  # start + three kills
    assert sum(s["missing"] for s in streams.values()) == counted, streams
    for fault in FAULTS:
        rec = records[fault]
        if (fault.startswith("disk_full") and rec["skipped"]
                and not (IN_CI and os.geteuid() == 0)):
            continue  # mounting a tmpfs needs root
        if fault == "clock_jump" and rec["skipped"] and not IN_CI:
            continue  # libfaketime (Debian's faketime) or gcc is missing; ./dev test installs them
        assert rec["injected"] == 1, f"{fault}: {rec}"
        if fault not in LOSSY:
            assert rec["lost"] == 0, f"{fault}: {rec}"
        assert rec["recovery_max_s"] is not None and rec["recovery_max_s"] < 60
    assert chaos.silent_losses() == []
    assert chaos.tracebacks() == []
