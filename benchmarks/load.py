"""The closed-loop load driver of ``cxr bench`` (latency points) and ``cxr bench soak``.

:func:`run_load` starts ``concurrency`` workers that each call ``fn(batch)`` back to
back (closed loop, like perf_analyzer's concurrency mode): each worker first makes
``warmup`` unrecorded calls, then all start recording together and the run issues
exactly ``requests`` calls, or fewer when ``seconds`` of recording have passed.
Items are cycled from ``items`` in the order the calls are issued, warm-up included,
so workers send different items.  Every recorded call becomes a :class:`Call`
(start, end, ok, status, images); a call that raises is a failed :class:`Call`,
never re-raised: a failing backend must neither stop the run nor look fast.

With ``concurrency == 1`` the calls run in the caller's thread, so fake clocks and
thread-unsafe test doubles work.  The clock is injectable for the same reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Clock = Callable[[], float]


OK = "OK"  # gRPC's status name for success: a call's status when nothing failed


@dataclass(frozen=True)
class Call:
    """One recorded call: start and end in seconds since recording began."""

    start: float
    end: float
    ok: bool = True
    status: str = OK  # gRPC status name of a failure ("UNAVAILABLE", ...), or the exception type
    images: int = 1  # items the call carried

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass
class LoadRun:
    """What :func:`run_load` recorded."""

    calls: list[Call] = field(default_factory=list)  # in completion order
    failures: dict[str, BaseException] = field(default_factory=dict)  # first exception per status, first seen first

    @property
    def messages(self) -> dict[str, str]:
        """The first message per failure status, cut to 300 characters."""
        return {status: str(exc)[:300] for status, exc in self.failures.items()}


def failure_status(exc: BaseException) -> str:
    """``exc.status`` (the client's gRPC status name) when it has one, else the exception's type name."""
    return getattr(exc, "status", None) or type(exc).__name__


def run_load(fn: Callable[[list], object], items: Sequence, *, requests: int, concurrency: int = 1, batch: int = 1,
             warmup: int = 0, seconds: float | None = None, clock: Clock = time.perf_counter,
             on_done: Callable[[Call], None] | None = None, name: str = "load") -> LoadRun:
    """Call ``fn`` with lists of ``batch`` items from ``concurrency`` closed-loop workers.

    ``warmup`` is per worker; ``on_done`` sees every recorded call as it completes
    (under the driver's lock, so it needs none of its own); ``name`` names the threads.
    """
    if concurrency < 1 or batch < 1:
        raise ValueError(f"concurrency and batch must be >= 1, got {concurrency} and {batch}")
    if requests < 0 or warmup < 0:
        raise ValueError(f"requests and warmup must be >= 0, got {requests} and {warmup}")
    if not items:
        raise ValueError("no input items to send: pass at least one")
    lock = threading.Lock()
    run = LoadRun()
    taken = [0]  # items handed out so far, warm-up included
    issued = [0]  # recorded calls started
    origin: list[float] = []

    def take() -> list:  # caller holds the lock
        i = taken[0]
        taken[0] += batch
        return [items[(i + k) % len(items)] for k in range(batch)]

    barrier = threading.Barrier(concurrency)

    def worker() -> None:
        for _ in range(warmup):
            with lock:
                chunk = take()
            try:
                fn(chunk)
            except Exception:  # noqa: BLE001 - a backend that keeps failing is recorded below
                pass
        barrier.wait()  # all workers record together: no warm-up call inside the window
        with lock:
            if not origin:
                origin.append(clock())
        while True:
            with lock:
                if issued[0] >= requests or (seconds is not None and clock() - origin[0] >= seconds):
                    return
                issued[0] += 1
                chunk = take()
            start = clock()
            try:
                fn(chunk)
                ok, status, error = True, OK, None
            except Exception as exc:  # noqa: BLE001 - every failure is a result of the run
                ok, status, error = False, failure_status(exc), exc
            call = Call(start - origin[0], clock() - origin[0], ok, status, len(chunk))
            with lock:
                run.calls.append(call)
                if error is not None:
                    run.failures.setdefault(status, error)
                if on_done is not None:
                    on_done(call)

    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, name=f"{name}-{k}", daemon=True) for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return run
