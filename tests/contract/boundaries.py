"""The privacy boundary as a static check over the source (run by the test suite, so by CI).

Two rules, checked on the syntax tree of every module of the package:

1. Only the privacy package (``edge_agent/privacy``) constructs outgoing messages: nothing
   else calls a contract message class (``ResultMessage(...)``, ``OutgoingMessage(...)``,
   ...), imports one other than ``OutgoingMessage`` (allowed for type hints), or calls a
   seal's ``issue``.
2. Only the egress module holds the transport's publish: nothing else calls ``publish``,
   ``publish_durable`` or paho's ``will_set``, nor ``set_will`` other than the guard's. The
   transport itself and the operator-side tools (which run on an operator's machine and
   publish commands, never device data) are the listed exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

MESSAGE_CLASSES = frozenset({
    "OutgoingMessage", "ResultMessage", "EventMessage", "StatusMessage", "ModelStateMessage",
    "StatsMessage", "SnapshotMessage", "CmdReplyMessage", "DiscoveryMessage",
    "InventoryMessage", "ShadowMessage",
})
PUBLISH_CALLS = frozenset({"publish", "publish_durable", "will_set", "set_will"})

PRIVACY = "privacy/"
CONTRACT = "contract/"
PUBLISHERS = {
    "privacy/egress.py": "the egress guard",
    "mqtt/client.py": "the transport, whose publish only the guard is given",
    "mqtt/subscriber.py": "the operator's own client (commands to a device, never device data)",
    "commands/operator.py": "the operator CLI (publishes signed commands)",
    "mqtt/inbound.py": "the operator's and consumers' client (send: operator commands only)",
}


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node)


def violations(package: Path) -> list[str]:
    """One ``file:line: what`` per broken rule in the package below ``package``."""
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        tree = ast.parse(path.read_text("utf-8"), str(path))
        private = rel.startswith((PRIVACY, CONTRACT))
        for node in ast.walk(tree):
            where = f"{package.name}/{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and not private:
                for alias in node.names:
                    if alias.name in MESSAGE_CLASSES - {"OutgoingMessage"}:
                        found.append(f"{where}: imports {alias.name} outside the privacy "
                                     "package")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else "")
            if not private and (name in MESSAGE_CLASSES or name == "issue"):
                found.append(f"{where}: builds an outgoing message ({name}) outside the "
                             "privacy package")
            if name in PUBLISH_CALLS and rel not in PUBLISHERS:
                if (name == "set_will" and isinstance(func, ast.Attribute)
                        and _receiver(func.value).split(".")[-1] == "guard"):
                    continue  # the guard's own set_will (checks the message like send)
                found.append(f"{where}: calls {name} outside the egress module")
    return found
