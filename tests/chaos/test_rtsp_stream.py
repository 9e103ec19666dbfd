"""An RTSP camera that goes away and comes back, on the real daemon.

A real RTSP server (GStreamer's gst-rtsp-server, :mod:`tests.chaos.rtsp`) serves a clip
written with OpenCV; ``edge-agent run`` reads ``rtsp://127.0.0.1:<port>/cam`` with camera
health on. The server is killed (SIGKILL) mid-run and started again on the same port: the
source must report the loss (``source_down`` event; in the retained status, the pipeline
``reconnecting`` with the error), reconnect by itself (``source_up``, ``running``, no agent
restart), results must resume from the new stream, and ``results`` and ``events`` must stay
gap-free.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.default_models import ensure_default_models, labels_path
from tests.broker import Mosquitto, mosquitto_binary
from tests.chaos.harness import DEVICE, PREFIX, agent_config, seq_report
from tests.chaos.rtsp import RtspServer, rtsp_server_missing, write_clip
from tests.conftest import IN_CI
from tests.e2e.agentproc import AgentProcess
from tests.e2e.recorder import Recorder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "face_detection_short_range"
OUTAGE_S = 4.0


def _pipeline_state(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    for p in status.get("pipelines") or []:
        if isinstance(p, dict) and p.get("name") == name:
            return p
    return None


def test_rtsp_camera_killed_and_restarted_reconnects(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed (./dev test installs it)")
        pytest.skip("mosquitto is not installed")
    why = rtsp_server_missing()
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why} (./dev test installs it)")
        pytest.skip(why)
    model = ensure_default_models()[MODEL]
    clip = write_clip(tmp_path / "clip.avi", seconds=60)
    server = RtspServer(clip, tmp_path / "rtsp.log").start()
    broker = Mosquitto(tmp_path / "broker").start()
    rec = Recorder(broker.host, broker.port, [f"{PREFIX}/{DEVICE}/#"],
                   client_id=f"rtsp-rec-{uuid.uuid4().hex[:8]}", clean=False).start()
    config = agent_config(
        tmp_path / "agent.yaml", state_dir=tmp_path / "state", host=broker.host,
        port=broker.port,
        pipelines=[{"name": "rtsp", "source": {"type": "camera", "uri": server.url},
                    "model": {"path": str(model), "decoder": "anchors", "threads": 1,
                              "labels": str(labels_path(MODEL))},
                    "camera_health": {"enabled": True}}])
    agent = AgentProcess(config)
    topic = f"{PREFIX}/{DEVICE}"
    try:
        def results(since: int = 0) -> list[dict[str, Any]]:
            return rec.json(f"{topic}/results/rtsp", since)

        def events(since: int = 0) -> set[str]:
            return {str(e.get("event")) for e in rec.json(f"{topic}/events/rtsp", since)}

        def pipe_states(since: int) -> list[dict[str, Any]]:
            out = []
            for s in rec.json(f"{topic}/status", since):
                p = _pipeline_state(s, "rtsp")
                if p is not None:
                    out.append(p)
            return out

        assert rec.wait_for(lambda: len(results()) >= 20, 60), \
            f"no results from the RTSP stream\n{agent.log()[-3000:]}"
        assert any(p.get("state") == "running" for p in pipe_states(0))

        mark = rec.mark()
        server.kill()  # the camera lost power
        killed = time.monotonic()
        assert rec.wait_for(lambda: "source_down" in events(mark), 30), \
            f"no source_down after the RTSP server was killed\n{agent.log()[-3000:]}"
        down_after = time.monotonic() - killed
        assert rec.wait_for(lambda: any(
            p.get("state") == "reconnecting" and p.get("source_error")
            for p in pipe_states(mark)), 10), "the status never showed the source reconnecting"
        # reconnect attempts against a closed port, for the rest of the outage
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))
        seq_before = max(int(r["seq"]) for r in results())
        while_down = len(results(mark))

        back = rec.mark()
        server.start()  # the same port: the camera is back
        restarted = time.monotonic()
        assert rec.wait_for(lambda: "source_up" in events(back), 45), \
            f"no source_up after the RTSP server came back\n{agent.log()[-3000:]}"
        assert rec.wait_for(lambda: len(results(back)) >= 20, 45), \
            f"results did not resume after the RTSP server came back\n{agent.log()[-3000:]}"
        resumed_after = time.monotonic() - restarted
        assert rec.wait_for(lambda: any(
            p.get("state") == "running" and not p.get("source_error")
            for p in pipe_states(back)), 10), "the status never showed the source running again"
        # new results of the same process (the source reconnected; the agent did not restart)
        new = results(back)
        assert {r["boot_id"] for r in new} == {r["boot_id"] for r in results()}
        assert min(int(r["seq"]) for r in new if not r.get("replayed")) > seq_before
        assert server.starts == 2
        code = agent.terminate()
        time.sleep(0.5)
        assert code == 0, agent.log()[-3000:]
        for stream in ("results/rtsp", "events/rtsp"):
            report = seq_report(stream, rec.json(f"{topic}/{stream}"))
            assert report.missing == [], f"{stream}: seq gaps {report.missing[:20]}"
            assert report.distinct > 0
        assert "Traceback" not in agent.log()
        print(f"rtsp: source_down {down_after:.1f}s after the kill; results resumed "
              f"{resumed_after:.1f}s after the restart; {while_down} results while down")
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        rec.close()
        server.kill()
        broker.stop()
