"""What a remote (signed ``config``) command may not change: settings that weaken privacy or
the device's own defences.

A signing key proves who sent a command, not that every change is wise: a leaked or misused
key must not be able to make the device publish faces, hand its raw image outputs out, stop
auditing, stop checking signatures, trust other keys, fetch from other hosts, or talk to
another broker. Those settings change only in the device's own config file (an edit on the
device, then SIGHUP or a restart), where each weakening needs its explicit opt-in.
"""

from __future__ import annotations

from typing import Any

from edge_agent.config import AgentConfig, PrivacyConfig

PIPELINE_PRIVACY_KEYS = ("publish_images", "redact_faces", "allow_unredacted_images",
                         "allow_raw_image_outputs", "identifying_fields", "aggregate",
                         "masks", "labels", "drop_scores", "box_precision")
"""Per-pipeline privacy settings a remote command may make stricter but not looser; any
change to them is refused (telling stricter from looser for masks and label lists is not
worth the risk of getting it wrong)."""


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


DEVICE_KEYS = (
    "mqtt.host", "mqtt.port", "mqtt.tls", "mqtt.username", "mqtt.password_file",
    "mqtt.topic_prefix", "audit.enabled", "audit.max_bytes", "audit.backups",
    "audit.max_per_reason_per_minute", "commands.require_signature", "commands.public_keys",
    "updates.enabled", "updates.public_keys", "updates.allow_downgrade", "updates.url_override",
    "metrics.prometheus.bind", "view.enabled", "view.bind", "view.token_file", "state_dir",
    "device_id",
)
"""Device-wide settings a remote command may not change at all."""


def weakenings(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The settings ``new`` changes that only the device's own config may change.

    Returns:
        one ``key.path: old -> new`` line per change (empty: the command may apply it).
    """
    out: list[str] = []
    for key in DEVICE_KEYS:
        before, after = _get(old, key), _get(new, key)
        if before != after:
            out.append(f"{key}: {before!r} -> {after!r}")
    olds = {p.name: p for p in old.pipelines}
    for p in new.pipelines:
        prev = olds.get(p.name)
        for key in PIPELINE_PRIVACY_KEYS:
            after = getattr(p.privacy, key)
            before = getattr(prev.privacy, key) if prev is not None else _default_privacy(key)
            if before != after:
                out.append(f"pipelines.{p.name}.privacy.{key}: {before!r} -> {after!r}")
        before_dec = prev.model.decoder if prev is not None else None
        if p.model.decoder == "raw" and before_dec != "raw":
            out.append(f"pipelines.{p.name}.model.decoder: {before_dec!r} -> 'raw'")
    return out


def _default_privacy(key: str) -> Any:
    return getattr(PrivacyConfig(), key)


def local_weakenings(cfg: AgentConfig) -> list[str]:
    """The weakening opt-ins the device's own config uses (audited at start)."""
    out = []
    if not cfg.audit.enabled:
        out.append("audit.enabled: false")
    if not cfg.commands.require_signature:
        out.append("commands.require_signature: false")
    if cfg.updates.url_override.hosts:
        out.append(f"updates.url_override.hosts: {list(cfg.updates.url_override.hosts)}")
    for p in cfg.pipelines:
        if p.privacy.publish_images and not p.privacy.redact_faces:
            out.append(f"pipelines.{p.name}.privacy: unredacted images (allow_unredacted_images)")
        if p.privacy.allow_raw_image_outputs:
            out.append(f"pipelines.{p.name}.privacy.allow_raw_image_outputs: true")
    return out
