"""gRPC transport security of the embedded server: the TLS mode and its PEM files.

Triton's HTTP endpoint has no TLS of its own (it is meant to sit behind a reverse
proxy), so with TLS on, HTTP and metrics stay on 127.0.0.1 even when gRPC binds a
public address (:class:`~cxr.server.launcher.TritonServer`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cxr.errors import UsageError
from cxr.vocab import ClosedVocabulary


class TlsMode(ClosedVocabulary, label="tls mode"):
    """The gRPC endpoint's transport security."""

    OFF = "off"  # plaintext: loopback, or behind a TLS proxy
    TLS = "tls"  # server certificate only
    MTLS = "mtls"  # mutual: clients must present a certificate the client CA signed

    @property
    def description(self) -> str:
        return {TlsMode.OFF: "plaintext", TlsMode.TLS: "TLS",
                TlsMode.MTLS: "mutual TLS: client certificates required"}[self]


def check_pem(path: Path | str, what: str, flag: str) -> Path:
    """``path`` resolved, after checking it is a readable PEM file; UsageError names ``flag``."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise UsageError(f"{flag}: {what} file not found: {p}")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag}: {what} file {p} is not readable by this user")
    with open(p, "rb") as f:
        head = f.read(64 * 1024)
    if b"-----BEGIN " not in head:
        raise UsageError(f"{flag}: {what} file {p} is not PEM (no '-----BEGIN' line); Triton reads PEM only")
    return p
