"""The detector connection's TLS options on the command line, for ``cxr predict`` and ``cxr pacs``.

argparse only: importing this pulls in neither tritonclient nor pynetdicom, so the
top-level ``cxr`` parser can offer the options on any install.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.errors import InvalidOptionError


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ssl``, ``--tls-ca``, ``--tls-cert``, ``--tls-key`` (see :func:`tls_options`)."""
    parser.add_argument("--ssl", action="store_true",
                        help="connect to the detector with TLS (implied by --tls-ca/--tls-cert; without --tls-ca "
                        "the system CA store verifies the server)")
    parser.add_argument("--tls-ca", "--root-certificates", dest="tls_ca", type=Path, default=None, metavar="PEM",
                        help="CA certificate (PEM) that signed the server's certificate")
    parser.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                        help="client certificate (PEM) for a server that requires mutual TLS; needs --tls-key")
    parser.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="client private key (PEM) for mutual TLS")


def tls_options(args: argparse.Namespace) -> dict:
    """DetectorClient keyword arguments for :func:`add_tls_arguments`' options ({} = plaintext)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        missing = "--tls-key" if args.tls_key is None else "--tls-cert"
        raise InvalidOptionError(f"mutual TLS needs both --tls-cert and --tls-key; {missing} is missing")
    if not (args.ssl or args.tls_ca or args.tls_cert):
        return {}
    return {"ssl": True, "root_certificates": args.tls_ca, "certificate_chain": args.tls_cert,
            "private_key": args.tls_key}
