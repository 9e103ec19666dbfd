"""One guest TCP connection relayed to a port on the host's loopback, for qemu's user-mode
network: ``-netdev user,restrict=on,guestfwd=tcp:10.0.2.100:1883-cmd:PYTHON relay.py PORT``.

qemu starts this program once per connection the guest opens to 10.0.2.100:1883, with the
connection as stdin and stdout (and stderr: so this prints nothing), and it copies bytes both
ways to 127.0.0.1:PORT until either side closes. The chardev form of guestfwd
(``...-tcp:127.0.0.1:PORT``) does not do this: qemu connects it once, at start-up, and every
guest connection shares that single host connection, so an MQTT client that reconnects (or a
second client) finds a closed or half-used stream. Standard library only (qemu runs it with
the host's interpreter).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _pump_in(sock: socket.socket) -> None:
    # guest -> host broker
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def main() -> int:
    port = int(sys.argv[1])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return 1  # the guest sees the connection closed, as with a refused port
    sock.settimeout(None)
    threading.Thread(target=_pump_in, args=(sock,), daemon=True).start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(1, view)
                view = view[n:]
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
