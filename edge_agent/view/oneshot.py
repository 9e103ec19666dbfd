"""``edge-agent snapshot``: one annotated, redacted frame, for setting up without the server.

It runs the configured pipeline itself (source, model, tracker, zones, privacy policy) with a
live-view tap and nothing published, takes the first frame the tap can show (after the
tracker confirmed its objects, when tracking is on), writes it and stops. The image goes
through the same redaction and drawing as the live view and MQTT snapshots.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.face_detector import build_face_detector
from edge_agent.pipeline import Pipeline
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.privacy.seal import new_seal
from edge_agent.sources.factory import create_source
from edge_agent.tracking import IouTracker
from edge_agent.updater.store import ModelStore
from edge_agent.view.render import render_frame
from edge_agent.view.tap import ViewTap
from edge_agent.zones import ZoneTracker

logger = logging.getLogger(__name__)


def take_snapshot(config: AgentConfig, pipeline_name: str, timeout: float = 30.0
                  ) -> tuple[bytes, dict[str, Any]]:
    """Run ``pipeline_name`` until one frame can be shown; its JPEG and info.

    Raises:
        ConfigError: no such pipeline.
        EdgeAgentError: no frame could be shown within ``timeout`` seconds.
    """
    try:
        p = config.pipeline(pipeline_name)
    except KeyError:
        names = ", ".join(q.name for q in config.pipelines)
        raise ConfigError(f"--pipeline: no pipeline {pipeline_name!r} in the config (it has "
                          f"{names})") from None
    active = ModelStore(config.state_dir / "models" / p.name).resolve_active(p.model.path)
    bundle = load_bundle(p.model, p.score_threshold, path=active.path,
                         labels_path=active.labels_path or p.model.labels,
                         version=active.version, name=active.name or p.model.name,
                         sha256=active.sha256)
    policy = PrivacyPolicy(p.privacy, p.name, config.device_id, new_seal(),
                           build_face_detector(config, force=True))
    tracker = IouTracker(p.tracking, p.name) if p.tracking.enabled else None
    zones = ZoneTracker(p.zones, p.name) if p.zones and tracker is not None else None
    tap = ViewTap(p.name, partial(render_frame, policy, p, purpose="snapshot"),
                  max_fps=30.0)
    pipe = Pipeline(p, bundle, source_factory=create_source, policy=policy,
                    send=lambda _msg: True, tracker=tracker, zones=zones, view=tap)
    # with tracking, the objects' ids appear once confirmed: take a frame after that
    want_frame = p.tracking.min_hits - 1 if tracker is not None else 0
    deadline = time.monotonic() + timeout
    last: tuple[bytes, dict[str, Any]] | None = None
    try:
        with tap.watch():
            pipe.start()
            seq = 0
            while time.monotonic() < deadline:
                ended = pipe.state in {"finished", "error"}
                got = tap.wait_new(seq, 1.0 if ended else 0.2)
                if got is not None:
                    seq, jpeg = got
                    last = (jpeg, tap.latest()[2])
                    if last[1].get("frame", 0) >= want_frame:
                        return last
                elif ended:
                    break  # the source ended and nothing more is coming
            if last is not None:  # a short source: its last frame that could be shown
                return last
    finally:
        pipe.stop()
        tap.close()
        bundle.close()
    why = (f"{tap.refused} frame(s) refused by the redaction (face detector missing or "
           "failing, or faces remained: see the log)" if tap.refused
           else f"no frame from the source (state {pipe.state}"
           + (f": {pipe.source_error}" if pipe.source_error else "") + ")")
    raise EdgeAgentError(f"snapshot of {pipeline_name}: no frame could be shown: {why}")
