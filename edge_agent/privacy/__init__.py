"""The on-device privacy policy, redaction, and the single egress guard.

Wiring (done by the agent)::

    seal = privacy.new_seal()
    guard = EgressGuard(transport, cfg.mqtt.topic_prefix, cfg.device_id,
                        AuditLog(cfg.state_dir / "audit", cfg.audit), seal,
                        qos=cfg.mqtt.qos,
                        discovery_prefix=cfg.homeassistant.discovery_prefix)
    faces = TiledFaceFinder(detect)      # detect(image) -> list[Box]: BlazeFace full range
    policy = PrivacyPolicy(p.privacy, p.name, cfg.device_id, seal, faces,
                           salt=load_salt(cfg.state_dir))

Pipelines, the updater and the command handler get the policy, the message factories and the
guard, never the transport: only the guard reaches ``transport.publish``.
"""

from edge_agent.privacy.seal import Seal, new_seal

__all__ = ["Seal", "new_seal"]
