"""The client's one exception type and the one place gRPC errors become it.

Integrators catch :class:`DetectorError` and branch on ``status`` / ``retryable``;
they never see ``tritonclient`` or ``grpc`` exception types.  The SDK converts at a
single boundary (:func:`to_detector_error`) so that the sync and asyncio clients
report the same failure identically.
"""

from __future__ import annotations

from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

from cxr.errors import UsageError  # the CLI prints these as one line

# Status of failures found on this side before anything was sent.
CLIENT = "CLIENT"
# Transient by definition (gRPC: "the service is currently unavailable"): connection
# refused, server restarting, channel not yet connected, and a connection reset by a
# server killed mid-request (gRPC reports that as UNAVAILABLE too).  Inference has no
# side effects, so sending a request again after a reset is safe.  Everything else
# would fail the same way again.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})

# Exceptions the boundary knows how to convert; anything else is a bug in the SDK
# and must surface with its own traceback.
CONVERTIBLE = (InferenceServerException, SharedMemoryException)


class DetectorError(UsageError):
    """Any failure of a detector call.

    status: gRPC status name ("UNAVAILABLE", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    ...) or "CLIENT" when the input was rejected locally before sending.
    message: the server's message (or the local validation message), unchanged.
    retryable: True when the same call may succeed later (server unreachable).
    attempts: how many times the call was sent before giving up (0 = never sent).
    gave_up: why the client stopped retrying a retryable failure (the deadline or the
    retry budget ran out), "" otherwise; ``str(err)`` ends with it.
    """

    def __init__(self, status: str, message: str, *, retryable: bool | None = None, attempts: int = 0,
                 gave_up: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retryable = status in RETRYABLE_STATUSES if retryable is None else retryable
        self.attempts = attempts
        self.gave_up = gave_up

    def __str__(self) -> str:
        text = f"{self.status}: {self.message}"
        return f"{text} ({self.gave_up})" if self.gave_up else text

    def __reduce__(self):  # keep status/message when pickled across processes
        return (_rebuild, (self.status, self.message, self.retryable, self.attempts, self.gave_up))


def _rebuild(status: str, message: str, retryable: bool, attempts: int, gave_up: str = "") -> DetectorError:
    return DetectorError(status, message, retryable=retryable, attempts=attempts, gave_up=gave_up)


def client_error(message: str) -> DetectorError:
    """A local validation failure: never sent, never retryable."""
    return DetectorError(CLIENT, message, retryable=False)


def to_detector_error(exc: BaseException) -> DetectorError:
    """THE boundary: a tritonclient / shared-memory exception as a DetectorError.

    tritonclient reports gRPC codes as ``"StatusCode.UNAVAILABLE"``; errors it raises
    itself before sending (bad shape, bad parameter type) have no status and are
    reported as CLIENT.
    """
    if isinstance(exc, InferenceServerException):
        raw = exc.status()
        status = str(raw).rsplit(".", 1)[-1] if raw else CLIENT
        return DetectorError(status, exc.message() or str(exc))
    if isinstance(exc, SharedMemoryException):
        return DetectorError(CLIENT, f"system shared memory: {exc}", retryable=False)
    raise TypeError(f"to_detector_error cannot convert {type(exc).__name__}; only {CONVERTIBLE}") from exc
