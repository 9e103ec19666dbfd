"""Per-target files in the manifest: parsing, signing, and the store keeping them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import UpdateError
from edge_agent.signing import generate_key_pair, load_private_key, load_public_keys
from edge_agent.updater.manifest import (
    TargetFile,
    build_manifest,
    parse_manifest,
    verify_manifest,
)
from edge_agent.updater.store import ModelStore

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def _signed(tmp_path: Path, **targets: TargetFile) -> tuple[dict, dict]:
    priv, pub, _kid = generate_key_pair(tmp_path / "keys")
    m = build_manifest(name="det", version=1, sha256=SHA_A, size=10,
                       key=load_private_key(priv), targets=targets)
    return dict(m.raw), load_public_keys([pub])


def test_targets_are_parsed_and_covered_by_the_signature(tmp_path: Path) -> None:
    raw, keys = _signed(tmp_path, edgetpu=TargetFile(SHA_B, 20, "http://127.0.0.1/x"))
    m = parse_manifest(raw)
    assert m.targets == {"edgetpu": TargetFile(SHA_B, 20, "http://127.0.0.1/x")}
    assert m.total_size == 30
    verify_manifest(m, keys)
    raw["targets"]["edgetpu"]["sha256"] = SHA_C  # swapping a target's file breaks the signature
    with pytest.raises(UpdateError):
        verify_manifest(parse_manifest(raw), keys)


@pytest.mark.parametrize(("targets", "message"), [
    ([], "must be an object"),
    ({"Edge TPU": {"sha256": SHA_B, "size": 1}}, "invalid target name"),
    ({"edgetpu": {"sha256": "xyz", "size": 1}}, "targets.edgetpu.sha256"),
    ({"edgetpu": {"sha256": SHA_B, "size": 0}}, "targets.edgetpu.size"),
    ({"edgetpu": {"sha256": SHA_B}}, "targets.edgetpu.size"),
    ({"edgetpu": {"sha256": SHA_B, "size": 3, "url": ""}}, "targets.edgetpu.url"),
    ({f"t{i}": {"sha256": SHA_B, "size": 1} for i in range(17)}, "at most 16"),
])
def test_malformed_targets_are_refused_with_the_key(targets: object, message: str) -> None:
    raw = {"schema": "edge-agent/model-manifest@1", "name": "det", "version": 1,
           "sha256": SHA_A, "size": 10, "targets": targets}
    with pytest.raises(UpdateError, match=message):
        parse_manifest(raw)


def test_prune_keeps_the_target_files_of_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    priv, _pub, _kid = generate_key_pair(tmp_path / "keys")
    key = load_private_key(priv)

    def install(tag: bytes, version: int) -> tuple[str, str]:
        main = tmp_path / f"m{version}"
        main.write_bytes(b"main" + tag)
        tfile = tmp_path / f"t{version}"
        tfile.write_bytes(b"tpu" + tag)
        from edge_agent.updater.store import sha256_file
        m = build_manifest(name="det", version=version, sha256=sha256_file(main),
                           size=main.stat().st_size, key=key,
                           targets={"edgetpu": TargetFile(sha256_file(tfile),
                                                          tfile.stat().st_size)})
        store.install(main, m, {"edgetpu": tfile})
        store.activate(m.sha256, trial=False)
        assert store.target_files(m, ["edgetpu", "cpu"]) == {
            "edgetpu": store.model_path(m.targets["edgetpu"].sha256)}
        assert store.target_files(m, ["cpu"]) == {}
        return m.sha256, m.targets["edgetpu"].sha256

    first = install(b"1", 1)
    second = install(b"2", 2)
    third = install(b"3", 3)
    store.prune()
    for sha in (*second, *third):  # previous and current, with their target files
        assert store.model_path(sha).is_file()
    for sha in first:
        assert not store.model_path(sha).exists()


def test_model_sign_writes_one_entry_per_target_file(tmp_path: Path) -> None:
    import argparse

    from edge_agent.commands.operator import cmd_sign
    from edge_agent.updater.store import sha256_file

    priv, _pub, _kid = generate_key_pair(tmp_path / "keys")
    main, tpu = tmp_path / "m.tflite", tmp_path / "m_edgetpu.tflite"
    main.write_bytes(b"main")
    tpu.write_bytes(b"compiled")
    out = tmp_path / "m.json"
    args = argparse.Namespace(file=str(main), key=str(priv), name="det", version=3, url=None,
                              labels=None, allow_downgrade=False, out=str(out),
                              target_file=[f"edgetpu={tpu}@http://127.0.0.1/t.tflite"])
    assert cmd_sign(args) == 0
    m = parse_manifest(out.read_text())
    assert m.targets == {"edgetpu": TargetFile(sha256_file(tpu), 8, "http://127.0.0.1/t.tflite")}
    args.target_file = ["edgetpu"]
    with pytest.raises(UpdateError, match="NAME=FILE"):
        cmd_sign(args)
