"""The static privacy boundary holds for the package, and catches deliberate violations."""

from __future__ import annotations

from pathlib import Path

from tests.contract.boundaries import violations

REPO = Path(__file__).resolve().parents[2]


def test_only_the_privacy_package_builds_and_only_egress_publishes():
    assert violations(REPO / "edge_agent") == []


def test_a_deliberate_violation_is_caught(tmp_path):
    pkg = tmp_path / "edge_agent"
    (pkg / "privacy").mkdir(parents=True)
    (pkg / "pipeline.py").write_text(
        "from edge_agent.contract.messages import ResultMessage, OutgoingMessage\n"
        "def leak(transport, seal, guard, frame):\n"
        "    msg = ResultMessage('door', {'image': frame})\n"
        "    seal.issue('result', 'door', {'image': frame})\n"
        "    transport.publish('edge-agent/dev/results/door', b'x', qos=1, retain=False)\n"
        "    transport._client.will_set('t', b'x')\n"
        "    transport.set_will('t', b'x')\n"
        "    guard.set_will(msg)\n"  # allowed: the guard checks it like any message
        "    return msg\n")
    (pkg / "privacy" / "policy.py").write_text(  # allowed: the privacy package builds them
        "from edge_agent.contract.messages import ResultMessage\n"
        "def make(seal):\n"
        "    return seal.issue('result', 'door', {})\n")
    found = violations(pkg)
    assert found == [
        "edge_agent/pipeline.py:1: imports ResultMessage outside the privacy package",
        "edge_agent/pipeline.py:3: builds an outgoing message (ResultMessage) outside the "
        "privacy package",
        "edge_agent/pipeline.py:4: builds an outgoing message (issue) outside the privacy "
        "package",
        "edge_agent/pipeline.py:5: calls publish outside the egress module",
        "edge_agent/pipeline.py:6: calls will_set outside the egress module",
        "edge_agent/pipeline.py:7: calls set_will outside the egress module",
    ]
