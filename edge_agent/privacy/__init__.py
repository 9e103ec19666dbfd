"""The on-device privacy policy, redaction, and the single egress guard."""
