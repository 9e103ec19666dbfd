"""Credentials out of URLs before they reach status, logs or error replies.

A camera URL may carry a user and password in its authority (``rtsp://admin:pw@host``) or in
its query (``http://cam/snap.cgi?user=admin&pwd=...``); both are shown as ``***``.
"""

from __future__ import annotations

import re

_SECRET_KEYS = frozenset({
    "user", "username", "usr", "login", "pwd", "pass", "passwd", "password", "token",
    "access_token", "auth", "authorization", "key", "apikey", "api_key", "secret", "sig",
    "signature", "session", "sessionid", "credential", "credentials"})


def display_uri(uri: str | int) -> str:
    """``uri`` for status, logs and errors, with credentials replaced by ``***``.

    Covers userinfo (``rtsp://admin:pa@ss@host``: everything up to the *last* ``@`` of the
    authority, so an ``@`` in the password leaks nothing) and query or fragment parameters
    whose name says credential (``?user=admin&pwd=...``, ``token``, ``password``, ``key``...).
    """
    text = str(uri)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{_scrub_params(tail)}"


def _scrub_params(tail: str) -> str:
    """``path?query#fragment`` with the values of credential-named parameters hidden."""
    out = []
    for i, part in enumerate(re.split(r"([?&;#])", tail)):
        if i % 2 == 0 and "=" in part and i > 0:
            name, _, _value = part.partition("=")
            if name.strip().lower() in _SECRET_KEYS:
                part = f"{name}=***"
        out.append(part)
    return "".join(out)


_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrub_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`display_uri`."""
    return _URL_RE.sub(lambda m: display_uri(m.group(0)), text)
