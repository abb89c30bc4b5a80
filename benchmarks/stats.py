"""The statistics of a benchmark point, and running one (pure; no model, no server).

A *point* is one (backend, concurrency, batch size) setting.  :func:`run_point`
drives it with the closed-loop load driver (:func:`cxr.benchmarks.load.run_load`):
``concurrency`` workers call ``fn(batch)`` back to back until the point has sent
``requests`` calls or ``seconds`` have passed, after ``warmup`` unrecorded calls per
worker.  Every successful call becomes a :class:`Sample` (start, end, images);
:func:`summarize` turns the samples into the point's figures:

- latency p50/p95/p99/mean in ms *per request* (a request carries ``batch`` images,
  so at batch 1 it is the latency per image), percentiles by linear interpolation
  (numpy's default, what perf_analyzer and Locust report too);
- throughput in images/s = images completed / (last end - first start): the wall
  window in which the workers were busy, so concurrent requests are not double
  counted and idle time before the first call is not charged.

The clock is injectable so tests can drive the accounting with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cxr.benchmarks.load import Clock, run_load

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Sample:
    """One successful request: start/end in seconds (any common origin) and the images it carried."""

    start: float
    end: float
    images: int = 1

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass
class PointStats:
    """The figures of one benchmark point (times in ms, throughput in images/s)."""

    backend: str
    concurrency: int
    batch: int
    requests: int
    images: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    images_per_s: float | None
    wall_s: float
    model_ms_per_image: float | None = None  # detector only, no decode/pre/post; None when unknown
    errors: int = 0
    extra: dict = field(default_factory=dict)  # e.g. Triton queue time

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of ``latencies_s`` in milliseconds (None when empty)."""
    if not len(latencies_s):
        return None
    return float(np.percentile(np.asarray(latencies_s, dtype=np.float64), q)) * 1000.0


def summarize(samples: Sequence[Sample], *, backend: str, concurrency: int, batch: int, errors: int = 0) -> PointStats:
    """Percentiles and throughput of ``samples`` (see the module docstring)."""
    lat = [s.latency_s for s in samples]
    images = sum(s.images for s in samples)
    wall = (max(s.end for s in samples) - min(s.start for s in samples)) if samples else 0.0
    p50, p95, p99 = (percentile_ms(lat, q) for q in PERCENTILES)
    return PointStats(
        backend=backend, concurrency=concurrency, batch=batch, requests=len(samples), images=images,
        p50_ms=p50, p95_ms=p95, p99_ms=p99, mean_ms=float(np.mean(lat)) * 1000.0 if lat else None,
        images_per_s=images / wall if wall > 0 else None, wall_s=wall, errors=errors,
    )


@dataclass(frozen=True)
class LoadConfig:
    """How long each point runs.  Defaults are the full run; ``--quick`` shortens them."""

    requests: int = 64  # calls per point: enough for a stable p95, p99 is indicative
    seconds: float = 20.0  # ... or this much wall time, whichever comes first
    warmup: int = 3  # calls per worker before recording (ORT/torch allocate on first runs)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.seconds <= 0 or self.warmup < 0:
            raise ValueError(f"LoadConfig needs requests >= 1, seconds > 0, warmup >= 0; got {self}")


QUICK = LoadConfig(requests=16, seconds=4.0, warmup=1)


def run_point(
    fn: Callable[[Sequence], object],
    items: Sequence,
    *,
    backend: str,
    concurrency: int = 1,
    batch: int = 1,
    load: LoadConfig = LoadConfig(),
    clock: Clock = time.perf_counter,
) -> tuple[PointStats, list[Sample]]:
    """One point of :func:`cxr.benchmarks.load.run_load`: stats and the successful calls' samples.

    ``fn`` receives a list of ``batch`` items (cycled from ``items``).  A call that
    raises counts as an error, not as a sample: a failing backend must not look fast.
    The first error's message is kept in ``stats.extra["first_error"]``.
    """
    run = run_load(fn, items, requests=load.requests, concurrency=concurrency, batch=batch, warmup=load.warmup,
                   seconds=load.seconds, clock=clock, name=f"bench-{backend}")
    samples = [Sample(c.start, c.end, c.images) for c in run.calls if c.ok]
    stats = summarize(samples, backend=backend, concurrency=concurrency, batch=batch,
                      errors=len(run.calls) - len(samples))
    if run.failures:
        first = next(iter(run.failures.values()))
        stats.extra["first_error"] = f"{type(first).__name__}: {first}"[:300]
    return stats, samples


class CallTimer:
    """Wraps a detector callable and records the wall time of every call.

    Used for model-only time in process: the pipeline calls the wrapped detector, and
    the durations (one per batch) are read after the point.  ``list.append`` is atomic
    in CPython, so concurrent workers need no lock.
    """

    def __init__(self, fn: Callable, clock: Clock = time.perf_counter) -> None:
        self.fn = fn
        self.clock = clock
        self.calls: list[tuple[float, int]] = []  # (seconds, batch size)

    def __call__(self, batch):
        t0 = self.clock()
        out = self.fn(batch)
        self.calls.append((self.clock() - t0, len(batch)))
        return out

    def reset(self) -> None:
        self.calls = []

    def ms_per_image(self) -> float | None:
        """Median over calls of (call time / images in the call), in ms."""
        if not self.calls:
            return None
        return float(np.median([s / max(n, 1) for s, n in self.calls])) * 1000.0
