"""Addresses and ports for the embedded server: loopback checks, free ports, ``host:port``."""

from __future__ import annotations

import ipaddress
import random
import socket
from pathlib import Path


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: bound together, so the kernel cannot hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def stable_port(low: int = 10000) -> int:
    """A free loopback port outside the kernel's ephemeral range.

    :func:`free_port` hands out an ephemeral port; once released, any outgoing
    connection may get it as its local port.  A server that is stopped and restarted
    on the same ports (fault drills) needs ports no client socket can take meanwhile.
    """
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    if first_ephemeral <= low + 100:
        return free_port()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, first_ephemeral)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
