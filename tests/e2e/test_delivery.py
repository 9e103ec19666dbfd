"""End-to-end delivery: ``edge-agent run`` as a child process against the test's own mosquitto.

What a subscriber can rely on, shown at the level of the whole daemon (the transport-level
versions of these tests are in tests/mqtt/): a broker outage of more than 10 s loses nothing,
kill -9 loses nothing, TLS with client certificates, 1,000+ fuzzed commands neither crash nor
stall the agent and each well-formed one gets its reply, and Home Assistant discovery appears,
is re-sent on request and is removed with its pipeline.

Measurements (latency of results, drain rate after the outage) are printed as ``MEASURE``
lines (``pytest -s``); nothing here asserts speed beyond "results keep coming".
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.default_models import ensure_default_models
from tests.broker import Mosquitto
from tests.e2e.agentproc import AgentProcess, write_config
from tests.e2e.recorder import Copy, Recorder, parse_ts, percentile

pytestmark = pytest.mark.slow

MODEL = "face_detection_short_range"  # 128x128: quick on 2 cores, so the source sets the rate
FPS = 20  # the source's pace: results per second in normal operation


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_default_models()[MODEL]


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    """Makes started :class:`Recorder` s; all are closed at the end of the test."""
    made: list[Recorder] = []

    def make(*args: Any, timeout: float = 10.0, **kwargs: Any) -> Recorder:
        rec = Recorder(*args, **kwargs)
        made.append(rec)
        return rec.start(timeout)

    yield make
    for rec in made:
        rec.close()


@pytest.fixture
def agents() -> Iterator[Callable[[Path], AgentProcess]]:
    """Starts ``edge-agent run`` children; any still running at the end is killed by PID."""
    started: list[AgentProcess] = []

    def start(config: Path) -> AgentProcess:
        started.append(AgentProcess(config))
        return started[-1]

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.kill()


def _pipeline(name: str, model: Path, fps: float = FPS) -> dict[str, Any]:
    return {"name": name,
            "source": {"type": "synthetic", "fps": fps, "width": 320, "height": 240},
            "model": {"path": str(model), "threads": 1}}


def _config(tmp: Path, broker: Mosquitto, device: str, pipelines: list[dict[str, Any]],
            **sections: Any) -> Path:
    mqtt = {"host": broker.host, "port": broker.port, "reconnect_max_s": 2,
            "stats_interval_s": 1, **sections.pop("mqtt", {})}
    return write_config(tmp / "config.yaml", {
        "device_id": device, "state_dir": str(tmp / "state"), "mqtt": mqtt,
        "metrics": {"prometheus": {"enabled": False}}, "pipelines": pipelines, **sections})


def _log(agent: AgentProcess) -> str:
    """The agent's output for assertion messages (also after it was stopped)."""
    return agent.log_path.read_text(errors="replace")[-6000:]


def _first_copies(copies: list[Copy]) -> dict[int, Copy]:
    """seq -> the first copy that arrived."""
    first: dict[int, Copy] = {}
    for c in copies:
        first.setdefault(c.json()["seq"], c)
    return first


def _seqs(rec: Recorder, suffix: str) -> set[int]:
    return {m["seq"] for m in rec.json(suffix)}


def _complete(rec: Recorder, suffix: str, upto: int) -> bool:
    """Whether every seq from 1 to ``upto`` has arrived."""
    return _seqs(rec, suffix) >= set(range(1, upto + 1))


def _assert_delivery(copies: list[Copy]) -> list[int]:
    """Every seq from 1 to the last, one id per seq, every extra copy marked as a resend.

    Returns:
        the sorted seqs.
    """
    by_seq: dict[int, set[str]] = collections.defaultdict(set)
    by_id: dict[str, list[Copy]] = collections.defaultdict(list)
    for c in copies:
        m = c.json()
        by_seq[m["seq"]].add(m["id"])
        by_id[m["id"]].append(c)
    seqs = sorted(by_seq)
    assert seqs == list(range(1, seqs[-1] + 1)), \
        f"lost: {sorted(set(range(1, seqs[-1] + 1)) - set(seqs))[:20]}"
    reused = {s: ids for s, ids in by_seq.items() if len(ids) > 1}
    assert not reused, f"a seq was used for two different results: {list(reused.items())[:3]}"
    assert len(by_id) == len(by_seq), "an id was used for two different results"

    def body(c: Copy) -> dict[str, Any]:
        return {k: v for k, v in c.json().items() if k != "replayed"}

    for mid, group in by_id.items():
        for extra in group[1:]:
            # ours are marked replayed; the broker's own redeliveries carry the DUP flag
            assert extra.json().get("replayed") is True or extra.dup, \
                f"unmarked duplicate of {mid}: {extra.payload[:200]!r}"
            assert body(extra) == body(group[0]), f"a resend of {mid} differs from the first"
    return seqs


def _statuses(rec: Recorder, since: int = 0) -> list[tuple[Copy, dict[str, Any]]]:
    return [(c, c.json()) for c in rec.select("/status", since) if c.payload]


# --------------------------------------------------------------------------- outage

def test_broker_outage_of_11s_loses_nothing(tmp_path: Path, broker: Mosquitto, model: Path,
                                            recorder: Callable[..., Recorder],
                                            agents: Callable[[Path], AgentProcess]) -> None:
    device = "e2e-outage"
    p = f"edge-agent/{device}"
    cfg = _config(tmp_path, broker, device, [_pipeline("cam", model)])
    rec = recorder(broker.host, broker.port, [f"{p}/results/cam", f"{p}/status"],
                   client_id="e2e-outage-subscriber", clean=False)
    agent = agents(cfg)
    # normal operation: latency of results from their ts to arrival
    assert rec.wait_for(lambda: len(rec.select("/results/cam")) >= 4 * FPS, 90), _log(agent)
    steady = rec.select("/results/cam")
    latency = [c.wall - parse_ts(c.json()["ts"]) for c in steady[FPS:]]
    print(f"\nMEASURE latency ts->arrival (n={len(latency)}): "
          f"p50 {percentile(latency, 50) * 1000:.1f} ms, "
          f"p99 {percentile(latency, 99) * 1000:.1f} ms")
    boot_before = _statuses(rec)[-1][1]["boot_id"]

    broker.stop()
    down_wall = time.time()
    time.sleep(11.0)
    up_wall, up_mono = time.time(), time.monotonic()
    mark = rec.mark()
    broker.start()

    def live() -> list[int]:  # results made after the broker came back
        first = _first_copies(rec.select("/results/cam", mark))
        return [s for s, c in first.items() if parse_ts(c.json()["ts"]) > up_wall]

    assert rec.wait_for(lambda: bool(live()), 60), _log(agent)
    target = min(live()) + FPS
    assert rec.wait_for(lambda: _complete(rec, "/results/cam", target), 60), _log(agent)
    assert agent.proc.poll() is None, _log(agent)
    assert agent.terminate() == 0, _log(agent)
    last = max(_seqs(rec, "/results/cam"))
    assert rec.wait_for(lambda: _complete(rec, "/results/cam", last), 30)

    copies = rec.select("/results/cam")
    seqs = _assert_delivery(copies)
    first = _first_copies(copies)
    during = [s for s, c in first.items() if down_wall <= parse_ts(c.json()["ts"]) <= up_wall]
    assert len(during) >= 10 * 10, f"only {len(during)} results produced during the outage"

    # the backlog (results made while the broker was away) as it drained
    after = _first_copies(rec.select("/results/cam", mark))
    backlog = sorted((c.mono, s) for s, c in after.items() if parse_ts(c.json()["ts"]) < up_wall)
    if len(backlog) > 1:
        span = backlog[-1][0] - backlog[0][0]
        print(f"MEASURE drain after an 11 s outage: {len(backlog)} messages in {span:.3f} s "
              f"({len(backlog) / max(span, 1e-3):.0f} msg/s); first after "
              f"{backlog[0][0] - up_mono:.2f} s, all after {backlog[-1][0] - up_mono:.2f} s")
    replayed = sum(1 for c in copies if c.json().get("replayed"))
    dups = sum(1 for c in copies if c.dup)
    print(f"MEASURE outage: {len(seqs)} results, {len(during)} produced while the broker was "
          f"down, {len(copies) - len(seqs)} extra copies ({replayed} replayed, {dups} DUP)")

    # the status was re-published after the reconnect (live, not the broker's retained copy)
    again = [m for c, m in _statuses(rec, mark) if not c.retain and m["state"] == "online"]
    assert again, "no status published after the reconnect"
    assert again[0]["boot_id"] == boot_before  # same process: not a restart


# --------------------------------------------------------------------------- kill -9

@dataclass(frozen=True)
class _Kill:
    """What a killed agent left behind."""

    at: float  # wall clock
    last_seq: int  # the last seq it allocated for results/cam
    waiting: dict[str, bool]  # id -> handed to paho before the kill (sent), still unacked


def _outbox_after_kill(state_dir: Path, stream: str) -> _Kill:
    """Read the dead agent's outbox (the column ``seqs.next`` holds the last seq used)."""
    at = time.time()
    db = sqlite3.connect(state_dir / "outbox.sqlite")
    try:
        row = db.execute("SELECT next FROM seqs WHERE pipeline = ?", (stream,)).fetchone()
        waiting = dict(db.execute("SELECT id, sent FROM messages"))
    finally:
        db.close()
    return _Kill(at, int(row[0]) if row else 0, {k: bool(v) for k, v in waiting.items()})


def test_kill_9_loses_nothing(tmp_path: Path, broker: Mosquitto, model: Path,
                              recorder: Callable[..., Recorder],
                              agents: Callable[[Path], AgentProcess]) -> None:
    """Killed once with messages in flight and once with a backlog while the broker was away:
    everything produced before each kill arrives after the restart, seq goes on."""
    device = "e2e-crash"
    p = f"edge-agent/{device}"
    cfg = _config(tmp_path, broker, device, [_pipeline("cam", model)])
    rec = recorder(broker.host, broker.port, [f"{p}/results/cam", f"{p}/status"],
                   client_id="e2e-crash-subscriber", clean=False)
    kills: list[_Kill] = []

    # run 1: killed with messages in flight: the broker is frozen (SIGSTOP), so the agent
    # writes to its socket and gets no PUBACK; the broker reads them after SIGCONT
    agent = agents(cfg)
    assert rec.wait_for(lambda: len(rec.select("/results/cam")) >= 2 * FPS, 90), _log(agent)
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        agent.kill()
        kills.append(_outbox_after_kill(tmp_path / "state", "results/cam"))
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert sum(kills[0].waiting.values()) >= FPS, f"expected messages in flight: {kills[0]}"
    assert rec.wait_for(lambda: any(m["state"] == "offline" for _, m in _statuses(rec)), 30), \
        "no last will after kill -9"

    # run 2: delivers run 1's results; killed with a backlog while the broker is away
    agent = agents(cfg)
    assert rec.wait_for(lambda: _complete(rec, "/results/cam", kills[0].last_seq + FPS), 90), \
        _log(agent)
    broker.stop()
    time.sleep(2.0)
    agent.kill()
    kills.append(_outbox_after_kill(tmp_path / "state", "results/cam"))
    broker.start()
    assert len(kills[1].waiting) >= FPS, f"expected a backlog at the second kill: {kills[1]}"

    # run 3: delivers everything and goes on
    agent = agents(cfg)
    assert rec.wait_for(lambda: _complete(rec, "/results/cam", kills[1].last_seq + FPS), 90), \
        _log(agent)
    assert agent.terminate() == 0, _log(agent)

    copies = rec.select("/results/cam")
    _assert_delivery(copies)
    first = _first_copies(copies)
    for kill in kills:
        # seq continues without a gap: the next process starts right after the last one
        later = [s for s, c in first.items() if parse_ts(c.json()["ts"]) > kill.at]
        assert min(later) == kill.last_seq + 1, (kill, min(later))
        # what waited in the outbox arrived after the restart; what the dead process had
        # handed to the broker comes marked replayed; a first send is not marked (unless the
        # new process lost its connection after sending it: then it was sent again, marked)
        for mid, sent in kill.waiting.items():
            resent = [c for c in copies if c.json()["id"] == mid and c.wall > kill.at]
            assert resent, f"{mid} waited in the outbox and never arrived"
            marked = [bool(c.json().get("replayed")) for c in resent]
            reconnected = "disconnected from" in _log(agent)
            assert any(marked) if sent else (not any(marked) or reconnected), \
                (kills.index(kill), sent, resent, _log(agent))
        print(f"\nMEASURE kill -9: last seq {kill.last_seq}, {len(kill.waiting)} in the outbox "
              f"({sum(kill.waiting.values())} in flight), all delivered")
    boots = [m["boot_id"] for _, m in _statuses(rec) if m["state"] == "online"]
    assert len(dict.fromkeys(boots)) == 3, f"expected three boot ids: {boots}"


# --------------------------------------------------------------------------- TLS

def test_tls_with_client_certificate(tmp_path: Path, pki: dict[str, Path], model: Path,
                                     recorder: Callable[..., Recorder],
                                     agents: Callable[[Path], AgentProcess]) -> None:
    tls_conf = (f"cafile {pki['ca']}\ncertfile {pki['server_crt']}\n"
                f"keyfile {pki['server_key']}\nrequire_certificate true\n")
    with Mosquitto(tmp_path / "broker", extra_config=tls_conf) as broker:
        device = "e2e-tls"
        p = f"edge-agent/{device}"
        cfg = _config(tmp_path, broker, device, [_pipeline("cam", model)], mqtt={
            "tls": {"ca_certs": str(pki["ca"]), "certfile": str(pki["client_crt"]),
                    "keyfile": str(pki["client_key"])}})
        tls = (str(pki["ca"]), str(pki["client_crt"]), str(pki["client_key"]))
        rec = recorder(broker.host, broker.port, [f"{p}/#"], tls=tls)
        agent = agents(cfg)
        assert rec.wait_for(lambda: len(rec.select("/results/cam")) >= FPS
                            and any(m["state"] == "online" for _, m in _statuses(rec)), 90), \
            _log(agent)
        assert agent.terminate() == 0, _log(agent)
        _assert_delivery(rec.select("/results/cam"))

        # a client that trusts the CA but has no certificate of its own is refused
        with pytest.raises(RuntimeError, match="could not subscribe"):
            recorder(broker.host, broker.port, [f"{p}/#"], tls=(str(pki["ca"]), None, None),
                     timeout=3)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """CA, server and client certificates, made like the transport's TLS test makes them."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.mqtt.test_connection import _cert, _write

    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_crt, _ = _write(folder, "ca", _cert("test-ca", ca_key, "test-ca", ca_key, ca=True), ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_crt, server_pem = _write(
        folder, "server", _cert("localhost", server_key, "test-ca", ca_key, server=True),
        server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_crt, client_pem = _write(
        folder, "client", _cert("edge-device", client_key, "test-ca", ca_key), client_key)
    return {"ca": ca_crt, "server_crt": server_crt, "server_key": server_pem,
            "client_crt": client_crt, "client_key": client_pem}


# --------------------------------------------------------------------------- command fuzz

FUZZ_COUNT = 1050
FUZZ_MAX_PAYLOAD = 8192  # commands.max_payload_bytes: oversized payloads stay cheap to send
FUZZ_WINDOW = 8  # commands in flight during the paced part
FUZZ_BURST = 200  # the last ones go out at once (the dispatcher's queue fills: "busy")


def test_fuzzed_commands_get_replies_and_results_keep_flowing(
        tmp_path: Path, broker: Mosquitto, model: Path, recorder: Callable[..., Recorder],
        agents: Callable[[Path], AgentProcess]) -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.e2e.fuzz_payloads import DEVICE_KEY, generate, readable_request_id

    device = "e2e-fuzz"
    p = f"edge-agent/{device}"
    pub = tmp_path / "device.pub"
    pub.write_bytes(DEVICE_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = _config(tmp_path, broker, device, [_pipeline("cam", model)],
                  mqtt={"groups": ["lobby"]},
                  commands={"max_payload_bytes": FUZZ_MAX_PAYLOAD},
                  updates={"public_keys": [str(pub)]})
    rec = recorder(broker.host, broker.port, [f"{p}/results/cam", f"{p}/cmd/reply"])
    agent = agents(cfg)
    cmds = generate(FUZZ_COUNT, FUZZ_MAX_PAYLOAD)  # while the agent starts
    assert len(cmds) >= 1000
    assert rec.wait_for(lambda: len(rec.select("/results/cam")) >= FPS, 90), _log(agent)

    mark = rec.mark()
    t0 = time.monotonic()

    def replies() -> int:
        return len(rec.select("/cmd/reply", mark))

    def topic(i: int) -> str:
        c = cmds[i]
        return f"edge-agent/group/lobby/cmd/{c.name}" if c.group else f"{p}/cmd/{c.name}"

    def answered(n: int) -> Callable[[], bool]:
        return lambda: replies() >= n

    paced = len(cmds) - FUZZ_BURST
    for i in range(paced):
        rec.publish(topic(i), cmds[i].payload, wait=False)
        if i >= FUZZ_WINDOW:
            j = i - FUZZ_WINDOW
            assert rec.wait_for(answered(j + 1), 30), \
                f"replies stopped near command {j}: {cmds[j]}\n{_log(agent)}"
    for i in range(paced, len(cmds)):
        rec.publish(topic(i), cmds[i].payload, wait=False)
    assert rec.wait_for(lambda: replies() >= len(cmds), 60), \
        f"{replies()} replies to {len(cmds)} commands\n{_log(agent)}"
    t1 = time.monotonic()
    time.sleep(1.0)  # any second reply to a command would arrive by now
    n_results = len(rec.select("/results/cam"))
    assert rec.wait_for(lambda: len(rec.select("/results/cam")) >= n_results + FPS, 30), \
        "results stopped after the fuzz"
    assert agent.proc.poll() is None, _log(agent)
    assert agent.terminate() == 0, _log(agent)
    assert "Traceback" not in _log(agent), _log(agent)

    # exactly one reply per command; every well-formed request's reply carries its id
    got = [c.json() for c in rec.select("/cmd/reply", mark)]
    assert len(got) == len(cmds), f"{len(got)} replies to {len(cmds)} commands"
    assert not [r for r in got if r["ok"]], "a fuzzed command was accepted"
    echoed = collections.Counter(r["request_id"] for r in got)
    wanted = collections.Counter(
        rid for c in cmds if (rid := readable_request_id(c.payload, FUZZ_MAX_PAYLOAD)))
    missing = wanted - echoed
    assert not missing, f"no reply for request ids {list(missing)[:10]}"

    # results kept flowing throughout, gap-free, from the same model
    results = rec.select("/results/cam")
    _assert_delivery(results)
    during = [c.mono for c in results if t0 <= c.mono <= t1]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert during and max(gaps, default=0.0) < 5.0, "the pipeline stalled during the fuzz"
    assert {c.json()["model"]["version"] for c in results} == {0}
    errors = collections.Counter(re.sub(r"\d+|'.*?'", "_", str(r.get("error")))[:48]
                                 for r in got)
    print(f"\nMEASURE fuzz: {len(cmds)} commands ({wanted.total()} well-formed) in "
          f"{t1 - t0:.1f} s; {len(during)} results meanwhile, longest gap "
          f"{max(gaps, default=0.0) * 1000:.0f} ms; most common errors: {errors.most_common(12)}")


# --------------------------------------------------------------------------- Home Assistant

HA_ENTITIES = ("count_face", "presence", "fps", "inference_ms", "model_version")


def _ha_topics(device: str, pipeline: str) -> set[str]:
    kinds = {"presence": "binary_sensor"}
    return {f"homeassistant/{kinds.get(e, 'sensor')}/{device}/{pipeline}_{e}/config"
            for e in HA_ENTITIES}


def test_home_assistant_discovery(tmp_path: Path, broker: Mosquitto, model: Path,
                                  recorder: Callable[..., Recorder],
                                  agents: Callable[[Path], AgentProcess]) -> None:
    device = "e2e-ha"
    p = f"edge-agent/{device}"
    sections = {"homeassistant": {"enabled": True, "labels": ["face"]}}
    cfg = _config(tmp_path, broker, device,
                  [_pipeline("cam", model, fps=5), _pipeline("yard", model, fps=5)], **sections)
    rec = recorder(broker.host, broker.port, ["homeassistant/#", f"{p}/#"])
    agent = agents(cfg)
    cam, yard = _ha_topics(device, "cam"), _ha_topics(device, "yard")

    def configs(since: int = 0) -> dict[str, list[Copy]]:
        out: dict[str, list[Copy]] = collections.defaultdict(list)
        for c in rec.select("/config", since):
            if c.topic.startswith("homeassistant/"):
                out[c.topic].append(c)
        return out

    assert rec.wait_for(lambda: set(configs()) >= cam | yard, 90), \
        f"{sorted(configs())}\n{_log(agent)}"
    # every state topic the entities read is one the agent publishes on
    announced = {t: c[-1].json() for t, c in configs().items()}
    state_topics = {body["state_topic"] for body in announced.values()}
    assert rec.wait_for(lambda: all(rec.select(t) for t in state_topics), 30), state_topics
    unique_ids = [body["unique_id"] for body in announced.values()]
    assert len(set(unique_ids)) == len(unique_ids) == len(cam | yard)
    for topic, body in announced.items():
        assert body["state_topic"].startswith(f"{p}/"), topic
        assert body["device"]["identifiers"] and body["device"] == announced[
            next(iter(cam))]["device"], topic
        availability = body.get("availability") or [{"topic": body["availability_topic"]}]
        assert {a["topic"] for a in availability} == {f"{p}/status"}, topic

    # retained: a subscriber that comes later gets them all
    late = recorder(broker.host, broker.port, ["homeassistant/#"])
    assert late.wait_for(lambda: {c.topic for c in late.select("/config") if c.retain}
                         >= cam | yard, 10)

    # Home Assistant restarted: it says online and the agent sends everything again
    mark = rec.mark()
    rec.publish("homeassistant/status", b"online")
    assert rec.wait_for(lambda: set(configs(mark)) >= cam | yard, 30), sorted(configs(mark))

    # the yard pipeline goes away (SIGHUP reload): its entities are removed
    mark = rec.mark()
    write_config(cfg, {**_yaml(cfg), "pipelines": [_pipeline("cam", model, fps=5)]})
    os.kill(agent.pid, signal.SIGHUP)

    def removed() -> set[str]:
        return {t for t, copies in configs(mark).items() if any(not c.payload for c in copies)}

    assert rec.wait_for(lambda: removed() >= yard, 30), \
        f"removed: {sorted(removed())}\n{_log(agent)}"
    assert not removed() & cam
    assert agent.terminate() == 0, _log(agent)
    fresh = recorder(broker.host, broker.port, ["homeassistant/#"])
    assert fresh.wait_for(lambda: {c.topic for c in fresh.select("/config")} >= cam, 30)
    assert not {c.topic for c in fresh.select("/config")} & yard


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data
