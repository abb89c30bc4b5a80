"""The client's one exception type and the one place gRPC errors become it.

Integrators catch :class:`DetectorError` and branch on ``status`` / ``retryable``;
they never see ``tritonclient`` or ``grpc`` exception types.  The SDK converts at a
single boundary (:func:`to_detector_error`) so that the sync and asyncio clients
report the same failure identically.  :func:`tls_hint` names the likely TLS/mTLS
misconfiguration behind a refused handshake, for the SDK and ``cxr predict`` alike.

Importable without ``tritonclient`` (only :func:`to_detector_error` needs it).
"""

from __future__ import annotations

import re

from cxr.errors import ExplainedError  # the CLI prints these as one line

try:
    from tritonclient.utils import InferenceServerException
    from tritonclient.utils.shared_memory import SharedMemoryException
except ImportError:  # no client extra: DetectorError and tls_hint still work, nothing to convert
    InferenceServerException = SharedMemoryException = None

# Status of failures found on this side before anything was sent.
CLIENT = "CLIENT"
# Transient by definition (gRPC: "the service is currently unavailable"): connection
# refused, server restarting, channel not yet connected, and a connection reset by a
# server killed mid-request (gRPC reports that as UNAVAILABLE too).  Inference has no
# side effects, so sending a request again after a reset is safe.  Everything else
# would fail the same way again.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})
# The caller has to change something: the input (refused here or by the server), the
# model name, the credentials.  gRPC's HTTP mapping puts exactly these in 4xx, less
# RESOURCE_EXHAUSTED (an overloaded server: wait).  Every other status -- INTERNAL,
# UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED, ... -- is a failure of the server or the network.
USER_STATUSES = frozenset({CLIENT, "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND",
                           "PERMISSION_DENIED", "UNAUTHENTICATED"})

# Exceptions the boundary knows how to convert; anything else is a bug in the SDK
# and must surface with its own traceback.  Empty without tritonclient (``except ()``
# catches nothing).
CONVERTIBLE: tuple[type[BaseException], ...] = (
    () if InferenceServerException is None else (InferenceServerException, SharedMemoryException))


class DetectorError(ExplainedError):
    """Any failure of a detector call.

    status: gRPC status name ("UNAVAILABLE", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    ...) or "CLIENT" when the input was rejected locally before sending.
    message: the server's message (or the local validation message), unchanged.
    retryable: True when the same call may succeed later (server unreachable).
    user_can_fix: True when the caller has to change the call (:data:`USER_STATUSES`:
    a refused study or parameter, a wrong model name); False for a failure of the
    server or the network (INTERNAL, UNAVAILABLE, ...).  ``cxr`` exits 2 or 1 on it.
    attempts: how many times the call was sent before giving up (0 = never sent).
    gave_up: why the client stopped retrying a retryable failure (the deadline or the
    retry budget ran out), "" otherwise; ``str(err)`` ends with it.
    hint: what is probably misconfigured when the failure looks like a refused TLS
    handshake (see :func:`tls_hint`), "" otherwise; ``str(err)`` ends with
    "; hint: ..." after gave_up.
    """

    def __init__(self, status: str, message: str, *, retryable: bool | None = None, attempts: int = 0,
                 gave_up: str = "", hint: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retryable = status in RETRYABLE_STATUSES if retryable is None else retryable
        self.attempts = attempts
        self.gave_up = gave_up
        self.hint = hint

    @property
    def user_can_fix(self) -> bool:
        return self.status in USER_STATUSES

    def __str__(self) -> str:
        text = f"{self.status}: {self.message}"
        if self.gave_up:
            text += f" ({self.gave_up})"
        return f"{text}; hint: {self.hint}" if self.hint else text

    def __reduce__(self):  # keep every field when pickled across processes
        return (_rebuild, (self.status, self.message, self.retryable, self.attempts, self.gave_up, self.hint))


def _rebuild(status: str, message: str, retryable: bool, attempts: int, gave_up: str = "",
             hint: str = "") -> DetectorError:
    return DetectorError(status, message, retryable=retryable, attempts=attempts, gave_up=gave_up, hint=hint)


def client_error(message: str) -> DetectorError:
    """A local validation failure: never sent, never retryable."""
    return DetectorError(CLIENT, message, retryable=False)


def from_rpc_error(exc) -> BaseException:
    """A ``grpc.RpcError`` of a call made on tritonclient's channel (:mod:`cxr.client.wire`) as the
    InferenceServerException tritonclient itself would raise for it (same status and message)."""
    return InferenceServerException(msg=exc.details(), status=str(exc.code()), debug_details=exc.debug_error_string())


def to_detector_error(exc: BaseException) -> DetectorError:
    """THE boundary: a tritonclient / shared-memory exception as a DetectorError.

    tritonclient reports gRPC codes as ``"StatusCode.UNAVAILABLE"``; errors it raises
    itself before sending (bad shape, bad parameter type) have no status and are
    reported as CLIENT.
    """
    if CONVERTIBLE and isinstance(exc, InferenceServerException):
        raw = exc.status()
        status = str(raw).rsplit(".", 1)[-1] if raw else CLIENT
        return DetectorError(status, exc.message() or str(exc))
    if CONVERTIBLE and isinstance(exc, SharedMemoryException):
        return DetectorError(CLIENT, f"system shared memory: {exc}", retryable=False)
    raise TypeError(f"to_detector_error cannot convert {type(exc).__name__}; only {CONVERTIBLE}") from exc


# What gRPC (BoringSSL) says when a handshake is refused, as measured against
# tritonserver on loopback (tests/e2e/test_security.py):
#   TLS client, plaintext server:   "Tls handshake failed ... WRONG_VERSION_NUMBER"
#   server name not in its SAN:     "... Hostname Verification Check failed."
#   server cert not from our CA:    "Tls handshake failed ... CERTIFICATE_VERIFY_FAILED: ..."
#   plaintext client, TLS server;
#   no / untrusted client cert, mTLS server:
#                                   "failed to connect to all addresses; last error:
#                                    UNAVAILABLE: ipv4:...: Socket closed"
# Nothing listening reads "... Connection refused": no pattern below matches that.
_WRONG_VERSION = re.compile(r"wrong[_ ]version[_ ]number", re.IGNORECASE)
_HOSTNAME = re.compile(r"hostname verification|peer name .* is not in peer certificate", re.IGNORECASE)
_VERIFY_FAILED = re.compile(r"certificate[_ ]verify[_ ]failed", re.IGNORECASE)
# "Socket closed" only counts while connecting: an established channel whose server
# dies mid-request is not a TLS problem.
_CLOSED_WHILE_CONNECTING = re.compile(r"failed to connect.*socket closed", re.IGNORECASE | re.DOTALL)
_TLS_WORDS = re.compile(r"handshake|\bssl|\btls", re.IGNORECASE)


def _host(url: str) -> str:
    """The host part of "host:port" ("[::1]:8001" -> "[::1]"), or the url itself."""
    host, sep, port = url.rpartition(":")
    return host if sep and port.isdigit() and host else url


def tls_hint(error: DetectorError, *, ssl: bool, client_certificate: bool = False, url: str = "") -> str | None:
    """What is probably misconfigured when ``error`` looks like a refused TLS handshake, or None.

    gRPC reports every refused handshake as UNAVAILABLE, like a server that is down,
    so the message text is all there is to go on.  ``ssl`` / ``client_certificate``
    say how the client connected (TLS at all; a certificate_chain given) and pick
    between the explanations of the same "Socket closed"; ``url`` ("host:port") names
    the host in the hint.  None for anything else, "Connection refused" included.
    The wording names both the SDK keyword and the ``cxr`` flag.
    """
    if getattr(error, "status", None) != "UNAVAILABLE":
        return None
    text = str(getattr(error, "message", error))
    host = repr(_host(url)) if url else "the host in the url"
    if ssl and _WRONG_VERSION.search(text):
        return ("the server may not use TLS (it answered in plaintext): drop ssl=True / --ssl / --tls-*, "
                "or connect to the server's TLS port")
    if ssl and _HOSTNAME.search(text):
        return (f"the server's certificate is trusted but its subjectAltName does not cover {host}: connect with "
                "a name or address the certificate lists")
    if ssl and _VERIFY_FAILED.search(text):
        return (f"the server's certificate is not signed by root_certificates / --tls-ca (the system CA store when "
                f"none is given), or its subjectAltName does not cover {host}")
    if not (_CLOSED_WHILE_CONNECTING.search(text) or _TLS_WORDS.search(text)):
        return None  # connection refused, DNS, timeouts: not TLS
    if not ssl:
        return ("the server may require TLS: pass ssl=True / --ssl and the CA that signed its certificate "
                "(root_certificates / --tls-ca)")
    if not client_certificate:
        return ("the server may require a client certificate (mutual TLS): pass certificate_chain and private_key "
                "(--tls-cert / --tls-key) issued by a CA the server trusts")
    return ("the server may have refused the client certificate (mutual TLS): certificate_chain / --tls-cert must be "
            "issued by a CA the server trusts, for client authentication, with its own private_key / --tls-key")
