"""Keeps the viewer's Orthanc off every interface but loopback: it runs in a network namespace
of its own, and this relay carries the connections of the host's loopback into it.

Orthanc 1.10 has no bind address: it listens on every interface.  ``cxr viewer serve``
therefore starts, under ``unshare --net`` (as root; ``--map-root-user`` otherwise)::

    python -m cxr.client.viewer.relay --listen-fd N --port P -- Orthanc orthanc.json

In the new namespace only a loopback interface exists, and it starts down: the relay brings
it up, starts Orthanc as its child, and accepts on socket N -- a socket bound to 127.0.0.1
in the host's namespace before the fork, which keeps that namespace -- and connects each
client to 127.0.0.1:P inside.  Nothing but that one host socket reaches Orthanc.  When its
parent goes (its stdin closes), on SIGTERM, or when Orthanc exits, the relay stops Orthanc
and exits; the namespace goes with its last process.  Standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import signal
import socket
import struct
import subprocess
import sys
import threading

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: the SIOCSIFFLAGS ioctl on ``lo``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until EOF, then pass the EOF on (HTTP keep-alive needs half-close)."""
    try:
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(client: socket.socket, port: int) -> None:
    with client:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return  # Orthanc not up yet, or gone: the client sees a closed connection and retries
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()


def _accept(listener: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve, args=(client, port), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.client.viewer.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True, help="a listening TCP socket inherited from the parent")
    parser.add_argument("--port", type=int, required=True, help="the loopback port the command listens on, inside")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server to start (Orthanc CONFIG)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the server to start after --")
    loopback_up()
    listener = socket.socket(fileno=args.listen_fd)
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=_accept, args=(listener, args.port), daemon=True).start()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), done.set()), daemon=True).start()  # parent gone
    while not done.wait(0.5):
        if server.poll() is not None:
            break
    listener.close()
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    return server.wait() or 0


if __name__ == "__main__":
    sys.exit(main())
