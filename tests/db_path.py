"""A TCP path to PostgreSQL that a test can cut and restore: the database "outage" of the
outage tests (no mocks: the gateway's driver sees real resets and refused connections).

``DatabasePath(upstream_port)`` listens on 127.0.0.1 and forwards each connection to
127.0.0.1:upstream_port in a thread of its own. ``cut()`` resets every forwarded connection
and refuses new ones (the listening socket is closed) until ``restore()`` listens again on
the same port. ``freeze()`` is the silent kind of outage (a dropped route, a firewall that
drops packets): every socket stays open but no byte is forwarded either way, so the driver
gets neither an answer nor an error, until ``thaw()`` lets the held bytes through. Does not
shape traffic otherwise (no delay, no loss).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class DatabasePath:
    def __init__(self, upstream_port: int = 5432) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._frozen = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self.restore()

    def url(self, direct_url: str) -> str:
        """``direct_url`` (a PostgreSQL URL on 127.0.0.1:5432) through this path."""
        return direct_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Reset every forwarded connection; refuse new ones until ``restore``."""
        with self._lock:
            listener, self._listener = self._listener, None
            doomed = list(self._open)
            self._open.clear()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in doomed:
            # SO_LINGER 0: close sends RST, as a crashed server or a dropped route would.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def freeze(self) -> None:
        """Stop forwarding (both ways, new connections too) with every socket left open."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self.thaw()
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    server.close()
                    return
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self._frozen.is_set():  # hold the bytes, as a black hole would
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(src)
            src.close()
