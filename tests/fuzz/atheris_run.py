"""Coverage-guided fuzzing of the config loader and the manifest parser with atheris
(libFuzzer for Python), beside the hypothesis fuzz tests of :mod:`tests.fuzz.test_fuzz`.

    python -m tests.fuzz.atheris_run {config,manifest} CORPUS_DIR [libFuzzer flags, e.g. -runs=N]

Each input is bytes mutated by libFuzzer from a seed corpus (the valid config of the
hypothesis tests, a signed manifest) towards new code paths in ``edge_agent``; it must end in a
config / a manifest or the documented error (``ConfigError`` with one non-empty line per
problem, ``UpdateError`` with a message). Anything else is a crash: libFuzzer prints the
traceback and the input and exits non-zero. atheris ships binary wheels only for some Python
versions (3.11 on x86-64 here); ``./dev fuzz --atheris`` installs it, nothing else needs it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import atheris
import yaml

with atheris.instrument_imports(include=["edge_agent"]):
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError, UpdateError
    from edge_agent.signing import key_id
    from edge_agent.updater.manifest import build_manifest, parse_manifest, verify_manifest

from tests.e2e.fuzz_payloads import DEVICE_KEY
from tests.fuzz.test_fuzz import VALID_CONFIG

_PUB = DEVICE_KEY.public_key()
KEYS = {key_id(_PUB): _PUB}


def config_case(data: bytes) -> None:
    """Bytes as a config file: a config, or a ConfigError of one non-empty line per problem."""
    text = data.decode("utf-8", errors="replace")
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        lines = str(exc).splitlines()
        if not lines or not all(line.strip() for line in lines):
            raise AssertionError(f"a config error with an empty line: {exc!r}") from None


def manifest_case(data: bytes) -> None:
    """Bytes as a manifest: parsed (then verified or refused) or an UpdateError."""
    try:
        m = parse_manifest(data)
    except UpdateError as exc:
        if not str(exc):
            raise AssertionError("an UpdateError without a message") from None
        return
    try:
        verify_manifest(m, KEYS)
    except UpdateError as exc:
        if not str(exc):
            raise AssertionError("an UpdateError without a message") from None


def seeds() -> dict[str, list[bytes]]:
    """The seed corpus of each target."""
    model = b"not a model, only hashed"
    manifest = build_manifest(name="detector", version=3, sha256=hashlib.sha256(model).hexdigest(),
                              size=len(model), key=DEVICE_KEY, labels="person\ncar\n")
    return {"config": [yaml.safe_dump(VALID_CONFIG).encode(), b"device_id: x\n"],
            "manifest": [json.dumps(dict(manifest.raw)).encode(), b"{}"]}


TARGETS = {"config": config_case, "manifest": manifest_case}


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz.atheris_run {{{','.join(TARGETS)}}} CORPUS_DIR "
              f"[libFuzzer flags]", file=sys.stderr)
        sys.exit(2)
    target, corpus = argv[1], Path(argv[2])  # the corpus grows there: pass a temporary folder
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()[target]):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([argv[0], *argv[3:], str(corpus)], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
