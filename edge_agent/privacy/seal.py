"""The seal: proof that a message was made by the privacy package, checked by the egress guard.

The agent creates one :class:`Seal` with :func:`new_seal` and hands the same object to every
:class:`~edge_agent.privacy.policy.PrivacyPolicy`, to the message factories in
:mod:`edge_agent.privacy.messages`, and to the :class:`~edge_agent.privacy.egress.EgressGuard`.
The guard publishes a message only when its ``seal`` *is* the guard's own seal **and** the seal
issued that very message object. The second check closes the ``dataclasses.replace(msg,
payload=...)`` hole: a copy carries the seal but was never issued, so it is refused.

Issued messages are remembered weakly: a message is forgotten when nothing holds it any more
(it can then never be sent), so there is no cap, and a message sent long after it was made
(a slow pipeline, a reply after a long download) is never refused for being late.

Python cannot stop determined code in the same process from forging anything; the seal makes
the safe path the only easy one and turns accidents (a dict, a hand-built message, an edited
copy) into counted refusals.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any, NoReturn

from edge_agent.contract.messages import (
    MESSAGE_TYPES,
    DiscoveryMessage,
    MessageKind,
    OutgoingMessage,
    SnapshotMessage,
)


class Seal:
    """An opaque token; only :func:`new_seal` should create one."""

    __slots__ = ("__weakref__", "_issued", "_lock")

    def __init__(self) -> None:
        # id -> message, weakly: made-and-dropped messages (an on_change pipeline that decided
        # not to publish) vanish with their last reference, so no bound is needed
        self._issued: weakref.WeakValueDictionary[int, OutgoingMessage] = (
            weakref.WeakValueDictionary())
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Seal {id(self):#x}>"

    def __copy__(self) -> Seal:
        raise TypeError("a Seal cannot be copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> Seal:
        raise TypeError("a Seal cannot be copied")

    def __reduce__(self) -> Any:
        raise TypeError("a Seal cannot be pickled")

    def issue(
        self,
        kind: MessageKind,
        pipeline: str | None,
        payload: Mapping[str, Any],
        *,
        data: bytes | None = None,
        topic: str | None = None,
    ) -> OutgoingMessage:
        """Make and remember one message of ``kind`` carrying this seal (privacy package only).

        Args:
            kind: the message kind; its contract class is what is made.
            pipeline: the pipeline it belongs to, or None.
            payload: the JSON body; frozen here.
            data: the JPEG of a snapshot (snapshots only).
            topic: the full topic of a discovery config (discovery only).

        Raises:
            TypeError: ``data`` or ``topic`` given to a kind that has none.
        """
        cls = MESSAGE_TYPES[kind]
        frozen = freeze(payload)
        msg: OutgoingMessage
        if cls is SnapshotMessage:
            msg = SnapshotMessage(pipeline, frozen, self, data if data is not None else b"")
        elif cls is DiscoveryMessage:
            msg = DiscoveryMessage(pipeline, frozen, self, topic or "")
        elif data is not None or topic is not None:
            raise TypeError(f"a {kind} message carries no data and no topic of its own")
        else:
            msg = cls(pipeline, frozen, self)
        with self._lock:
            self._issued[id(msg)] = msg
        return msg

    def redeem(self, msg: object) -> bool:
        """Whether this seal issued ``msg`` (this exact object); forgets it (one send each)."""
        with self._lock:
            issued = self._issued.get(id(msg))
            if issued is msg:
                del self._issued[id(msg)]
                return True
            return False

    def peek(self, msg: object) -> bool:
        """Whether this seal issued ``msg``, without forgetting it (for set_will)."""
        with self._lock:
            return self._issued.get(id(msg)) is msg

    def discard(self, msg: object) -> None:
        """Forget an issued message that will not be sent (frees it at once)."""
        with self._lock:
            if self._issued.get(id(msg)) is msg:
                del self._issued[id(msg)]

    @property
    def pending(self) -> int:
        """Messages issued and not yet redeemed."""
        with self._lock:
            return len(self._issued)


def new_seal() -> Seal:
    """Create the one seal the agent shares between its policies, factories and guard."""
    return Seal()


class FrozenDict(dict[str, Any]):
    """A dict that refuses mutation (a payload cannot be edited after the policy made it).

    It stays a ``dict`` so ``json`` serialises it directly and a schema validator sees a JSON
    object.
    """

    __slots__ = ()

    # NoReturn is a subtype of every return type, so it can stand in for each dict method below
    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("an outgoing payload is read-only")

    __setitem__ = _refuse
    __delitem__ = _refuse
    clear = _refuse
    pop = _refuse
    popitem = _refuse
    setdefault = _refuse
    update = _refuse
    __ior__ = _refuse


class FrozenList(list[Any]):
    """A list that refuses mutation: the frozen form of a JSON array.

    It stays a ``list`` (not a tuple) so the frozen payload is made of JSON-native types only:
    ``json`` serialises it directly and the schema validator, which the egress guard runs on
    the frozen payload itself, sees exactly what the bytes say (a tuple would compare unequal
    to a list in ``enum``/``const``).
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("an outgoing payload is read-only")

    __setitem__ = _refuse
    __delitem__ = _refuse
    __iadd__ = _refuse
    __imul__ = _refuse
    append = _refuse
    extend = _refuse
    insert = _refuse
    pop = _refuse
    remove = _refuse
    clear = _refuse
    sort = _refuse
    reverse = _refuse


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """``value`` with every dict made a :class:`FrozenDict` and every list a :class:`FrozenList`.

    Exact types are tested first (the policy's payloads hold only dicts, lists and scalars), so
    the common case costs one ``type()`` per value; other mappings and sequences are frozen
    too, anything else is left as it is (and later refused by ``json`` as not serialisable).
    """
    t = type(value)
    if t in _SCALARS:
        return value
    scalars = _SCALARS
    if t is dict or t is FrozenDict:
        return FrozenDict({k if type(k) is str else str(k):
                           v if type(v) in scalars else freeze(v) for k, v in value.items()})
    if t is list or t is tuple or t is FrozenList:
        return FrozenList([v if type(v) in scalars else freeze(v) for v in value])
    if isinstance(value, Mapping):
        return FrozenDict({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return FrozenList([freeze(v) for v in value])
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a frozen payload (only ``dict``, ``list`` and scalars)."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is FrozenDict or t is dict:
        return {k: thaw(v) for k, v in value.items()}
    if t is FrozenList or t is list or t is tuple:
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value
