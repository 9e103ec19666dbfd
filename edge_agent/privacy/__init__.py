"""The on-device privacy policy, redaction, and the single egress guard.

Wiring (done by the agent)::

    seal = privacy.new_seal()
    guard = EgressGuard(transport, cfg.mqtt.topic_prefix, cfg.device_id,
                        AuditLog(cfg.state_dir / "audit", cfg.audit), seal, qos=cfg.mqtt.qos)
    policy = PrivacyPolicy(p.privacy, p.name, cfg.device_id, seal, face_detector,
                           salt=load_salt(cfg.state_dir))

Pipelines get the policy and the guard, never the transport.
"""

from edge_agent.privacy.seal import Seal, new_seal

__all__ = ["Seal", "new_seal"]
