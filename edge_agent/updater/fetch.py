"""Download a model into a staging ``.part`` file: http(s) with Range resume, file://, inline.

The manifest's ``size`` is a hard cap: a server that sends more (or announces more in
Content-Length) is cut off. Free disk space is checked before the first byte. Every socket
operation has a timeout, so a server that accepts and never answers ends in "timed out". A
``.part`` file left by an interrupted download is resumed with a Range request; a server that
ignores Range (200 instead of 206) restarts it from zero. Nothing here activates anything:
the caller checks size and sha256 of the finished file.

Containment: a redirect is followed only to http or https (never from https to http, never to
``file:`` or ``ftp:``); ``deadline_s`` bounds the whole download, and each read returns what
one receive gave (a trickling server cannot hold a read open past the deadline); a ``file:``
source must be a regular file (a FIFO or a device would block or never end) and is refused
altogether when ``allow_file`` is false (a url taken from a command).
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from edge_agent.errors import UpdateError

CHUNK = 64 * 1024
DISK_MARGIN = 16 * 1024 * 1024  # leave this much free after a download
Progress = Callable[[int, int], None]  # (bytes so far, total)


def _check_disk(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest.parent).free
    if free - needed < DISK_MARGIN:
        raise UpdateError(f"not enough disk space in {dest.parent}: {free} bytes free, "
                          f"{needed} needed plus a {DISK_MARGIN // (1024 * 1024)} MB margin")


def _copy(src: IO[bytes], out: IO[bytes], done: int, total: int, progress: Progress | None,
          cancel: threading.Event | None, deadline: float | None = None) -> int:
    read = getattr(src, "read1", src.read)  # one receive at most: the deadline stays in force
    while True:
        if cancel is not None and cancel.is_set():
            raise UpdateError("download cancelled (a rollback was asked for, or the agent is "
                              "stopping); the partial file is kept and resumed next time")
        if deadline is not None and time.monotonic() > deadline:
            raise UpdateError(f"download too slow: {done} of {total} bytes before the deadline; "
                              "the partial file is kept and resumed next time")
        chunk = read(CHUNK)
        if not chunk:
            return done
        done += len(chunk)
        if done > total:
            raise UpdateError(f"download exceeds the manifest size of {total} bytes: refused")
        out.write(chunk)
        if progress is not None:
            progress(done, total)


def _finish(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())


def fetch(url: str, dest: str | Path, expected_size: int, *, timeout: float = 30.0,
          progress: Progress | None = None, cancel: threading.Event | None = None,
          deadline_s: float | None = None, allow_file: bool = True,
          allow_redirect: Callable[[str], str | None] | None = None) -> Path:
    """Download ``url`` into ``dest`` (a ``.part`` file), resuming what is already there.

    Args:
        url: ``http://``, ``https://`` or ``file://``.
        dest: the partial file in staging; it is appended to on resume.
        expected_size: the manifest's size: the hard cap and the expected length.
        timeout: seconds for connecting and for each read.
        progress: called with (bytes so far, total) after each chunk.
        cancel: set to abort between chunks.
        deadline_s: the whole download must finish within this many seconds (a server that
            trickles bytes just fast enough to beat ``timeout`` is cut off).
        allow_file: whether a ``file:`` url is acceptable (not for a url from a command).
        allow_redirect: ``(url) -> why not | None``, asked about every redirect target in
            addition to the scheme rules.

    Returns:
        ``dest``, holding at most ``expected_size`` bytes (the caller checks size and sha256).

    Raises:
        UpdateError: bad scheme, not found, HTTP error, timed out, over the cap, or no disk.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if have > expected_size:
        dest.unlink()
        have = 0
    _check_disk(dest, expected_size - have)
    if have == expected_size:
        return dest
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        if not allow_file:
            raise UpdateError("file: urls are not accepted from a command")
        return _fetch_file(Path(urllib.request.url2pathname(parsed.path)), dest, have,
                           expected_size, progress, cancel)
    if parsed.scheme not in ("http", "https"):
        raise UpdateError(f"unsupported URL scheme {parsed.scheme!r}: use http, https or file")
    deadline = time.monotonic() + deadline_s if deadline_s else None
    return _fetch_http(url, dest, have, expected_size, timeout, progress, cancel, deadline,
                       allow_redirect)


def _fetch_file(src: Path, dest: Path, have: int, total: int, progress: Progress | None,
                cancel: threading.Event | None) -> Path:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat the opened file so the
        # check and the read are about the same file
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise UpdateError(f"{src} is not a regular file: refused")
        os.set_blocking(fd, True)
        size = info.st_size
        if size > total:
            os.close(fd)
            raise UpdateError(f"{src} is {size} bytes, over the manifest size of {total}: "
                              "refused")
        with os.fdopen(fd, "rb") as fh, dest.open("ab") as out:
            fh.seek(have)
            _copy(fh, out, have, total, progress, cancel)
            _finish(out)
    except FileNotFoundError as exc:
        raise UpdateError(f"not found: {src}") from exc
    except OSError as exc:
        raise UpdateError(f"cannot read {src}: {exc.strerror or exc}") from exc
    return dest


class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to http(s), never from https down to http, and only where
    ``allow`` (when given) says yes."""

    def __init__(self, allow: Callable[[str], str | None] | None) -> None:
        self.allow = allow

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        old = urllib.parse.urlparse(req.full_url).scheme
        new = urllib.parse.urlparse(newurl).scheme
        why: str | None = None
        if new not in ("http", "https"):
            why = f"to scheme {new!r}"
        elif old == "https" and new == "http":
            why = "from https down to http"
        elif self.allow is not None:
            why = self.allow(newurl)
        if why is not None:
            raise UpdateError(f"redirect refused ({why}): {_safe(req.full_url)} -> "
                              f"{_safe(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(url: str, dest: Path, have: int, total: int, timeout: float,
                progress: Progress | None, cancel: threading.Event | None,
                deadline: float | None,
                allow_redirect: Callable[[str], str | None] | None = None) -> Path:
    headers = {"User-Agent": "edge-agent-updater"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked)
    opener = urllib.request.build_opener(_RedirectGuard(allow_redirect))
    if deadline is not None:
        timeout = max(0.1, min(timeout, deadline - time.monotonic()))
    try:
        with opener.open(request, timeout=timeout) as resp:
            status = resp.status
            if status == 206:
                start = have
            elif status == 200:
                start = 0  # the server ignored Range: start over
            else:
                raise UpdateError(f"HTTP {status} from {_safe(url)}")
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and start + int(length) > total:
                raise UpdateError(f"server announces {start + int(length)} bytes, over the "
                                  f"manifest size of {total}: refused")
            with dest.open("ab" if start else "wb") as out:
                done = _copy(resp, out, start, total, progress, cancel, deadline)
                _finish(out)
            if done < total:
                raise UpdateError(f"download from {_safe(url)} ended after {done} of {total} "
                                  "bytes; the partial file is kept and resumed next time")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            dest.unlink(missing_ok=True)  # our partial file is no use to this server
        raise UpdateError(f"HTTP {exc.code} {exc.reason} from {_safe(url)}") from exc
    except TimeoutError as exc:
        raise UpdateError(f"timed out after {timeout:g} s fetching {_safe(url)}; "
                          "the partial download is kept and resumed next time") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise UpdateError(f"timed out after {timeout:g} s connecting to {_safe(url)}") \
                from exc
        raise UpdateError(f"cannot fetch {_safe(url)}: {exc.reason}") from exc
    except OSError as exc:
        raise UpdateError(f"download from {_safe(url)} failed: {exc}") from exc
    return dest


def _safe(url: str) -> str:
    """The URL without credentials or query string (tokens), for messages and logs."""
    p = urllib.parse.urlparse(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}"


def write_inline(data_b64: str, dest: str | Path, expected_size: int) -> Path:
    """Write the base64 ``data`` of an inline push into ``dest``.

    Raises:
        UpdateError: not base64, over the manifest size, or no disk space.
    """
    dest = Path(dest)
    if not isinstance(data_b64, str):
        raise UpdateError("inline data must be a base64 string")
    if len(data_b64) // 4 * 3 > expected_size + 3:
        raise UpdateError(f"inline data is larger than the manifest size of {expected_size} "
                          "bytes: refused")
    try:
        raw = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpdateError("inline data is not valid base64") from exc
    if len(raw) > expected_size:
        raise UpdateError(f"inline data is {len(raw)} bytes, over the manifest size of "
                          f"{expected_size}: refused")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(dest, len(raw))
    with dest.open("wb") as out:
        out.write(raw)
        _finish(out)
    return dest
