"""fetch: http Range resume, restart when Range is ignored, caps, 404, hangs, file://, inline."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import UpdateError
from edge_agent.updater.fetch import fetch, write_inline

BODY = os.urandom(300_000)


def test_http_download_resumes_with_range(http_server: Any, tmp_path: Path) -> None:
    http_server.files["/m.bin"] = BODY
    http_server.cut_after["/m.bin"] = 100_000  # the first attempt is cut off
    part = tmp_path / "staging" / "m.part"
    with pytest.raises(UpdateError):
        fetch(http_server.url("/m.bin"), part, len(BODY), timeout=2)
    kept = part.stat().st_size
    assert 0 < kept < len(BODY)
    seen: list[tuple[int, int]] = []
    fetch(http_server.url("/m.bin"), part, len(BODY), timeout=2,
          progress=lambda d, t: seen.append((d, t)))
    assert part.read_bytes() == BODY
    assert http_server.requests[-1] == ("/m.bin", f"bytes={kept}-")
    assert seen[0][0] > kept and seen[-1] == (len(BODY), len(BODY))


def test_server_that_ignores_range_restarts_from_zero(http_server: Any, tmp_path: Path) -> None:
    http_server.files["/m.bin"] = BODY
    http_server.ranges = False
    part = tmp_path / "m.part"
    part.write_bytes(b"junk" * 100)
    fetch(http_server.url("/m.bin"), part, len(BODY), timeout=2)
    assert part.read_bytes() == BODY


def test_complete_part_needs_no_request(http_server: Any, tmp_path: Path) -> None:
    part = tmp_path / "m.part"
    part.write_bytes(BODY)
    fetch(http_server.url("/absent"), part, len(BODY), timeout=2)
    assert http_server.requests == []


def test_size_cap_and_errors(http_server: Any, hanging_url: str, tmp_path: Path) -> None:
    http_server.files["/m.bin"] = BODY
    with pytest.raises(UpdateError, match="over the manifest size"):
        fetch(http_server.url("/m.bin"), tmp_path / "a.part", len(BODY) - 1, timeout=2)
    with pytest.raises(UpdateError, match="HTTP 404"):
        fetch(http_server.url("/nope"), tmp_path / "b.part", 10, timeout=2)
    with pytest.raises(UpdateError, match="timed out"):
        fetch(hanging_url, tmp_path / "c.part", 10, timeout=0.3)
    with pytest.raises(UpdateError, match="unsupported URL scheme"):
        fetch("ftp://example.org/m", tmp_path / "d.part", 10)
    with pytest.raises(UpdateError, match="not enough disk space"):
        fetch(http_server.url("/m.bin"), tmp_path / "e.part", 1 << 60, timeout=2)


def test_file_url_and_inline(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    out = fetch(src.as_uri(), tmp_path / "f.part", len(BODY))
    assert out.read_bytes() == BODY
    with pytest.raises(UpdateError, match="over the manifest size"):
        fetch(src.as_uri(), tmp_path / "g.part", 10)
    with pytest.raises(UpdateError, match="not found"):
        fetch((tmp_path / "missing").as_uri(), tmp_path / "h.part", 10)
    inline = write_inline(base64.b64encode(BODY).decode(), tmp_path / "i.part", len(BODY))
    assert inline.read_bytes() == BODY
    with pytest.raises(UpdateError, match="not valid base64"):
        write_inline("%%%", tmp_path / "j.part", 10)


def test_overall_deadline_cuts_a_trickling_download(http_server: Any, tmp_path: Path) -> None:
    http_server.files["/m.bin"] = BODY
    with pytest.raises(UpdateError, match="too slow"):
        fetch(http_server.url("/m.bin"), tmp_path / "t.part", len(BODY), timeout=2,
              deadline_s=1e-6)
