"""User mistakes on ``collect`` and ``watch``: one line, no traceback, the right exit code."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.cli import main
from tests.broker import free_port


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``collect`` sets up logging on the stderr pytest captures for this test; later tests
    logging through that handler would write to a closed stream ("--- Logging error ---" in
    their own output, e.g. tests/decoders/test_label_fit.py in the full suite)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["collect", "--broker", "h", "--db", "mysql://x"], 78, "--db mysql://x: expected sqlite"),
    (["collect", "--broker", "h", "--db", "sqlite:////no/such/dir/x.sqlite"], 78,
     "does not exist"),
    (["collect", "--broker", "h:99999"], 78, "port must be a number"),
    (["collect", "--broker", "h", "--share", "a/b"], 78, "--share 'a/b'"),
    (["watch", "--broker", "h", "--tls-ca", "/no/ca.pem"], 78, "--tls-ca /no/ca.pem: no such"),
    (["watch", "--broker", "h", "--password-file", "/no/pw"], 78, "--password-file needs"),
    (["watch", "--broker", "h", "--username", "u", "--password-file", "/no/pw"], 78,
     "--password-file /no/pw: cannot read"),
    (["collect", "--broker", "h", "--batch-size", "0"], 1, "--batch-size"),
    (["collect", "--broker", "h", "--retire"], 1, "--retire needs the --client-id"),
])
def test_user_mistakes(argv: list[str], code: int, message: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                       ) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_collect_with_unreachable_postgres_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    port = free_port()
    assert main(["collect", "--broker", f"127.0.0.1:{free_port()}", "--db",
                 f"postgresql://postgres@127.0.0.1:{port}/x"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("edge-agent: cannot open the database: postgresql://"), lines
    assert "Connection refused" in lines[-1] and "Traceback" not in "".join(lines)
