"""Secure broker connections: TLS with client certificates, password files, credentials."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.config import make_config
from edge_agent.errors import ConfigError
from edge_agent.mqtt.client import MqttTransport
from edge_agent.mqtt.connection import read_password
from tests.broker import Mosquitto, mosquitto_binary
from tests.conftest import missing
from tests.mqtt.conftest import agent_config, wait_until


@pytest.fixture(autouse=True)
def _needs_mosquitto() -> None:
    """Every test here starts its own mosquitto (TLS, auth): like the broker fixture, a
    missing mosquitto skips on a dev machine and fails under CI."""
    if mosquitto_binary() is None:
        missing("mosquitto (apt-get install mosquitto)")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                          crl_sign=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
    else:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem



@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    ca_crt, ca_pem = _write(folder, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_crt, server_pem = _write(
        folder, "server", _cert("localhost", server_key, "test-ca", ca_key, server=True),
        server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_crt, client_pem = _write(
        folder, "client", _cert("edge-device", client_key, "test-ca", ca_key), client_key)
    return {"ca": ca_crt, "ca_key": ca_pem, "server_crt": server_crt, "server_key": server_pem,
            "client_crt": client_crt, "client_key": client_pem}


def test_tls_with_client_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls_conf = (f"cafile {pki['ca']}\ncertfile {pki['server_crt']}\n"
                f"keyfile {pki['server_key']}\nrequire_certificate true\n")
    with Mosquitto(tmp_path / "broker", extra_config=tls_conf) as broker:
        state = tmp_path / "state"
        cfg = agent_config(broker, state, tls={"ca_certs": str(pki["ca"]),
                                                "certfile": str(pki["client_crt"]),
                                                "keyfile": str(pki["client_key"])})
        transport = MqttTransport(cfg, state)
        connected = threading.Event()
        transport.on_connected(connected.set)
        transport.start()
        try:
            assert connected.wait(10), "the agent with its certificate could not connect"
            transport.publish_durable("cam", transport.topics.results("cam"),
                                      lambda seq, i: b'{"seq": %d}' % seq)
            assert wait_until(lambda: transport.stats()["acked"] == 1)
        finally:
            transport.stop(2)

        # a client that trusts the CA but has no certificate of its own is refused
        anon = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="no-cert")
        anon.tls_set(ca_certs=str(pki["ca"]), cert_reqs=ssl.CERT_REQUIRED)
        refused = False
        try:
            anon.connect(broker.host, broker.port, keepalive=5)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not anon.is_connected():
                if anon.loop(0.1) != paho.MQTTErrorCode.MQTT_ERR_SUCCESS:
                    refused = True
                    break
        except (ssl.SSLError, OSError):
            refused = True
        finally:
            anon.disconnect()
        assert refused and not anon.is_connected()


def test_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = make_config(state_dir=str(tmp_path), mqtt={"tls": {"ca_certs": str(tmp_path / "no")}})
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        MqttTransport(cfg, tmp_path)


def test_password_file_auth(tmp_path: Path) -> None:
    if shutil.which("mosquitto_passwd") is None:
        missing("mosquitto_passwd (Debian's mosquitto package)")
    passwd = tmp_path / "broker.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "device", "s3cret"], check=True)
    conf = f"allow_anonymous false\npassword_file {passwd}\n"
    with Mosquitto(tmp_path / "broker", extra_config=conf) as broker:
        good = tmp_path / "mqtt-password"
        good.write_text("s3cret\n")
        cfg = agent_config(broker, tmp_path / "a", username="device", password_file=str(good))
        ok = MqttTransport(cfg, tmp_path / "a")
        ok.start()
        bad_file = tmp_path / "wrong"
        bad_file.write_text("nope\n")
        bad = MqttTransport(agent_config(broker, tmp_path / "b", username="device",
                                         password_file=str(bad_file), client_id="other"),
                            tmp_path / "b")
        bad.start()
        try:
            assert wait_until(lambda: ok.stats()["connected"])
            # a refused CONNACK counts as disconnected
            assert wait_until(lambda: bad.stats()["connect_failures"] >= 1)
            assert bad.stats()["connected"] is False
        finally:
            ok.stop(1)
            bad.stop(1)


def test_password_from_systemd_credentials(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_password(make_config().mqtt) == "from-credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert read_password(make_config().mqtt) is None
    with pytest.raises(ConfigError, match="password_file"):
        read_password(make_config(mqtt={"password_file": str(tmp_path / "missing")}).mqtt)


def _other_pki(folder: Path, pki: dict[str, Path]) -> dict[str, Path]:
    """Two wrong server certificates: one from another CA (for the right host), one from our
    CA for another host (no localhost / 127.0.0.1 in it)."""
    folder.mkdir()
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("other-ca", other_key, "other-ca", other_key, ca=True)
    _write(folder, "other-ca", other_ca, other_key)
    key1 = ec.generate_private_key(ec.SECP256R1())
    foreign_crt, foreign_key = _write(
        folder, "foreign", _cert("localhost", key1, "other-ca", other_key, server=True), key1)
    ca_key = serialization.load_pem_private_key(pki["ca_key"].read_bytes(), password=None)
    key2 = ec.generate_private_key(ec.SECP256R1())
    elsewhere = (x509.CertificateBuilder().subject_name(_name("broker.elsewhere.example"))
                 .issuer_name(_name("test-ca")).public_key(key2.public_key())
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
                 .not_valid_after(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                 .add_extension(x509.SubjectAlternativeName(
                     [x509.DNSName("broker.elsewhere.example")]), critical=False)
                 .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    other_host_crt, other_host_key = _write(folder, "other-host", elsewhere, key2)
    return {"foreign_crt": foreign_crt, "foreign_key": foreign_key,
            "other_host_crt": other_host_crt, "other_host_key": other_host_key}


def _tls_broker(tmp_path: Path, name: str, crt: Path, key: Path) -> Mosquitto:
    return Mosquitto(tmp_path / name, extra_config=f"certfile {crt}\nkeyfile {key}\n").start()


def _try(tmp_path: Path, broker: Mosquitto, name: str, ca: Path,
         insecure: bool) -> dict[str, Any]:
    """Run a transport against ``broker`` for a few attempts; return its stats."""
    state = tmp_path / name
    transport = MqttTransport(agent_config(broker, state, reconnect_max_s=0.3,
                                           tls={"ca_certs": str(ca), "insecure": insecure}),
                              state)
    transport.start()
    try:
        wait_until(lambda: transport.stats()["connected"]
                   or transport.stats()["connect_failures"] >= 3, 15)
        return transport.stats()
    finally:
        transport.stop(1)


def test_broker_certificate_from_another_ca_never_connects(tmp_path: Path,
                                                           pki: dict[str, Path]) -> None:
    """Verification is on: a certificate our CA did not sign is refused, insecure or not
    (``tls.insecure`` skips only the host name check)."""
    other = _other_pki(tmp_path / "other", pki)
    broker = _tls_broker(tmp_path, "b1", other["foreign_crt"], other["foreign_key"])
    try:
        for insecure in (False, True):
            st = _try(tmp_path, broker, f"a-{insecure}", pki["ca"], insecure)
            assert st["connected"] is False and st["connect_failures"] >= 3, st
            assert st["last_error"].startswith("TLS: the broker's certificate was not "
                                               "accepted"), st
    finally:
        broker.stop()


def test_broker_certificate_for_another_host_connects_only_when_insecure(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    other = _other_pki(tmp_path / "other", pki)
    broker = _tls_broker(tmp_path, "b2", other["other_host_crt"], other["other_host_key"])
    try:
        st = _try(tmp_path, broker, "strict", pki["ca"], False)
        assert st["connected"] is False and st["connect_failures"] >= 3, st
        assert "TLS" in st["last_error"] and "127.0.0.1" in st["last_error"], st
        # the same certificate is fine once host name checking is off: only the host was wrong
        st = _try(tmp_path, broker, "insecure", pki["ca"], True)
        assert st["connected"] is True, st
    finally:
        broker.stop()
