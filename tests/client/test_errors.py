"""cxr.client.errors without a server: which gRPC failure texts get a TLS hint (and
which one), how DetectorError carries the hint, and that the module needs no tritonclient.

The messages below are copied verbatim from real handshakes between tritonclient and
tritonserver on loopback (the live versions run in tests/e2e/test_security.py); only
the port numbers differ.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")  # cxr.client's package __init__ imports the SDK

from cxr.client.errors import DetectorError, tls_hint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Real gRPC messages (status UNAVAILABLE), by what the client did wrong.
SOCKET_CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:39915: Socket closed"
VERIFY_FAILED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:39915: Tls handshake failed "
                 "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
                 "CERTIFICATE_VERIFY_FAILED: self signed certificate in certificate chain: OK")
WRONG_VERSION = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:34551: Tls handshake failed "
                 "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
                 "WRONG_VERSION_NUMBER: Invalid certificate verification context: OK")
HOSTNAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:56955: Custom verification "
            "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.")
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:39439: Failed to connect to "
           "remote host: Connection refused")
DNS = ("errors resolving 127.1:56955: [field:hostname lookup error:address lookup failed for 127.1:56955: "
       "Domain name not found]")

PLAIN, TLS, MTLS = {"ssl": False}, {"ssl": True}, {"ssl": True, "client_certificate": True}


def _hint(message: str, status: str = "UNAVAILABLE", **client) -> str | None:
    return tls_hint(DetectorError(status, message), url="pacs-gw.example:8001", **client)


@pytest.mark.parametrize(("message", "client", "expected"), [
    # one "Socket closed", three explanations: the client's own options pick which
    (SOCKET_CLOSED, PLAIN, "the server may require TLS: pass ssl=True / --ssl and the CA"),
    (SOCKET_CLOSED, TLS, "the server may require a client certificate (mutual TLS)"),
    (SOCKET_CLOSED, MTLS, "the server may have refused the client certificate (mutual TLS)"),
    (VERIFY_FAILED, TLS, "the server's certificate is not signed by root_certificates / --tls-ca"),
    (VERIFY_FAILED, MTLS, "or its subjectAltName does not cover 'pacs-gw.example'"),
    (HOSTNAME, MTLS, "its subjectAltName does not cover 'pacs-gw.example'"),
    (WRONG_VERSION, TLS, "the server may not use TLS (it answered in plaintext)"),
    (WRONG_VERSION, MTLS, "drop ssl=True / --ssl / --tls-*"),
])
def test_each_refused_handshake_gets_its_own_hint(message, client, expected):
    hint = _hint(message, **client)
    assert hint is not None and expected in hint, hint


def test_the_hints_differ():
    """A hint that reads the same for every cause would not tell the integrator what to fix."""
    hints = {_hint(SOCKET_CLOSED, **PLAIN), _hint(SOCKET_CLOSED, **TLS), _hint(SOCKET_CLOSED, **MTLS),
             _hint(VERIFY_FAILED, **TLS), _hint(HOSTNAME, **TLS), _hint(WRONG_VERSION, **TLS)}
    assert len(hints) == 6 and None not in hints


@pytest.mark.parametrize("client", [PLAIN, TLS, MTLS], ids=["plain", "tls", "mtls"])
@pytest.mark.parametrize("message", [
    REFUSED,  # nothing listening: not TLS, whatever the client's options
    DNS,
    "Socket closed",  # an established channel whose server died mid-request
    "Connection reset by peer",
    "Deadline Exceeded",
])
def test_no_hint_when_nothing_points_at_tls(message, client):
    assert _hint(message, **client) is None


@pytest.mark.parametrize("status", ["DEADLINE_EXCEEDED", "INVALID_ARGUMENT", "INTERNAL", "CLIENT"])
def test_only_unavailable_gets_a_hint(status):
    """A server that answered (any other status) completed the handshake."""
    assert _hint(SOCKET_CLOSED, status, **PLAIN) is None
    assert _hint(VERIFY_FAILED, status, **TLS) is None


@pytest.mark.parametrize(("url", "host"), [("10.1.2.3:8001", "'10.1.2.3'"), ("[::1]:8001", "'[::1]'"),
                                           ("pacs-gw", "'pacs-gw'")])
def test_the_hint_names_the_host_of_the_url(url, host):
    assert host in tls_hint(DetectorError("UNAVAILABLE", HOSTNAME), ssl=True, url=url)


def test_str_ends_with_gave_up_then_the_hint_and_both_survive_pickle():
    err = DetectorError("UNAVAILABLE", SOCKET_CLOSED, attempts=1, gave_up="gave up after 1 attempt in 0.0 s: x",
                        hint=_hint(SOCKET_CLOSED, **TLS))
    assert str(err) == (f"UNAVAILABLE: {SOCKET_CLOSED} (gave up after 1 attempt in 0.0 s: x); hint: "
                        f"{_hint(SOCKET_CLOSED, **TLS)}")
    again = pickle.loads(pickle.dumps(err))
    assert (again.hint, again.gave_up, again.attempts, str(again)) == (err.hint, err.gave_up, 1, str(err))
    assert str(DetectorError("UNAVAILABLE", REFUSED)) == f"UNAVAILABLE: {REFUSED}"  # no hint: nothing appended


@pytest.mark.parametrize(("status", "user"), [("CLIENT", True), ("INVALID_ARGUMENT", True), ("NOT_FOUND", True),
                                            ("FAILED_PRECONDITION", True), ("INTERNAL", False), ("UNKNOWN", False),
                                            ("UNAVAILABLE", False), ("DEADLINE_EXCEEDED", False),
                                            ("RESOURCE_EXHAUSTED", False)])
def test_who_can_fix_a_failure_follows_its_status(status, user):
    """One exception type; a server-side failure is not the user's (cxr exits 1 on it, not 2)."""
    from cxr.errors import ExplainedError, UsageError

    err = pickle.loads(pickle.dumps(DetectorError(status, "m")))
    assert err.user_can_fix is user and isinstance(err, ExplainedError) and not isinstance(err, UsageError)
    assert (err.status, err.message) == (status, "m") and err.retryable is (status == "UNAVAILABLE")


def test_errors_module_and_cli_import_without_tritonclient():
    """errors.py (loaded as a file: the cxr.client package __init__ imports the SDK) works with
    tritonclient unimportable, and importing the CLI does not pull tritonclient in."""
    code = (
        "import importlib.util, sys\n"
        "sys.modules['tritonclient'] = None  # any 'import tritonclient...' now raises ImportError\n"
        f"spec = importlib.util.spec_from_file_location('errors_alone', {str(ROOT / 'client' / 'errors.py')!r})\n"
        "errors = importlib.util.module_from_spec(spec); spec.loader.exec_module(errors)\n"
        "assert errors.CONVERTIBLE == ()\n"
        f"err = errors.DetectorError('UNAVAILABLE', {SOCKET_CLOSED!r})\n"
        "print(errors.tls_hint(err, ssl=False) is not None)\n"
        "del sys.modules['tritonclient']\n"
        "import cxr.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tritonclient', 'grpc')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True", "[]"], done.stdout
