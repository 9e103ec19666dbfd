"""ModelStore: install, pointers, trial, fall back at start, prune."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from edge_agent.signing import generate_key_pair, load_private_key
from edge_agent.updater.manifest import Manifest, build_manifest
from edge_agent.updater.store import CONFIGURED, ModelStore
from tests.conftest import shared_model


def _install(store: ModelStore, tmp: Path, model: Path, version: int) -> Manifest:
    priv = tmp / "keys" / "signing.key"
    if not priv.exists():
        generate_key_pair(tmp / "keys")
    data = model.read_bytes()
    m = build_manifest(name=model.stem, version=version, sha256=hashlib.sha256(data).hexdigest(),
                       size=len(data), key=load_private_key(priv), labels=f"v{version}\n")
    part = store.part_path(m.sha256)
    shutil.copy(model, part)
    store.install(part, m)
    return m


def test_activate_trial_confirm_and_fall_back(tmp_path: Path) -> None:
    configured = shared_model("keras_lstm_mnist_ptq.tflite")
    store = ModelStore(tmp_path / "m", configured)
    assert store.resolve_active().source == "configured"
    a = _install(store, tmp_path, shared_model("mobilenet_v1_0.25_128_quant.tflite"), 1)
    store.activate(a.sha256, trial=True)
    assert store.read_pointer("previous").target == CONFIGURED  # type: ignore[union-attr]
    # restart during the watch: the trial model is not trusted
    r = store.resolve_active()
    assert r.path == configured and r.reason and "trial" in r.reason
    assert r.fell_back_from == {"name": a.name, "version": 1, "sha256": a.sha256}
    assert store.read_pointer("current").target == CONFIGURED  # type: ignore[union-attr]
    store.activate(a.sha256, trial=True)
    store.confirm()
    r = store.resolve_active()
    assert (r.source, r.sha256, r.version, r.reason) == ("current", a.sha256, 1, None)
    assert r.labels_path is not None and r.labels_path.read_text() == "v1\n"
    b = _install(store, tmp_path, shared_model("person_detect_tflm_qdimfix.tflite"), 2)
    store.activate(b.sha256, trial=False)
    # one flipped byte in current: previous serves, pointers repaired
    data = bytearray(store.model_path(b.sha256).read_bytes())
    data[100] ^= 1
    store.model_path(b.sha256).write_bytes(bytes(data))
    r = store.resolve_active()
    assert (r.source, r.sha256) == ("previous", a.sha256) and "does not match" in (r.reason or "")
    assert store.read_pointer("current").target == a.sha256  # type: ignore[union-attr]
    assert store.read_pointer("previous") is None


def test_missing_manifest_and_garbage_pointer_fall_back_to_configured(tmp_path: Path) -> None:
    configured = shared_model("keras_lstm_mnist_ptq.tflite")
    store = ModelStore(tmp_path / "m", configured)
    a = _install(store, tmp_path, shared_model("mobilenet_v1_0.25_128_quant.tflite"), 1)
    store.activate(a.sha256, trial=False)
    store.manifest_path(a.sha256).unlink()
    r = store.resolve_active()
    assert r.path == configured and "no stored manifest" in (r.reason or "")
    (store.dir / "current").write_text("../../etc/passwd\n")
    assert store.resolve_active().source == "configured"


def test_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "m", shared_model("keras_lstm_mnist_ptq.tflite"))
    models = [shared_model(n) for n in ("mobilenet_v1_0.25_128_quant.tflite",
                                        "person_detect_tflm_qdimfix.tflite",
                                        "face_detection_short_range.tflite")]
    shas = []
    for i, model in enumerate(models):
        m = _install(store, tmp_path, model, i + 1)
        store.activate(m.sha256, trial=False)
        shas.append(m.sha256)
    (store.dir / ".current.tmp").write_text("x")
    removed = store.prune()
    assert {p.name.split(".")[0] for p in removed} == {shas[0]}
    assert store.model_path(shas[1]).exists() and store.model_path(shas[2]).exists()
    assert store.rollback() == shas[1]
    assert store.resolve_active().sha256 == shas[1]
    assert not (store.dir / ".current.tmp").exists()
