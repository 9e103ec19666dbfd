"""The device's contract: every message that leaves it, every command that enters it, topics.

:mod:`edge_agent.contract.messages` declares each outgoing message kind once (topic pattern,
retention, durability, QoS, size limit, schema); :mod:`edge_agent.contract.topics` builds the
topic tree; :mod:`edge_agent.contract.schemagen` writes ``docs/schemas`` from them.
"""
