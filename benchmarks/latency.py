"""``cxr bench latency``: the concurrency x batch sweep of every available backend.

Per backend, batch 1 runs at every concurrency of the sweep (closed-loop workers,
see :mod:`cxr.benchmarks.stats`); larger batches run at concurrency 1 and only in
process, where the caller chooses the batch.  Served backends always send one
study per request: Triton's dynamic batcher forms the batches, which is what the
concurrency sweep exercises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from cxr.benchmarks.backends import Backend, BenchImage, Unavailable
from cxr.benchmarks.stats import QUICK, LoadConfig, PointStats, run_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """Which points to run and how long each one takes."""

    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    batches: tuple[int, ...] = (1, 4)  # in process only; > 1 at concurrency 1
    load: LoadConfig = LoadConfig()

    def points(self, backend: Backend) -> list[tuple[int, int]]:
        """(concurrency, batch) pairs for ``backend``."""
        pts = [(c, 1) for c in self.concurrency]
        pts += [(1, b) for b in self.batches if b != 1 and b in backend.batches]
        return pts


FULL_SWEEP = Sweep()
QUICK_SWEEP = Sweep(concurrency=(1, 2, 4), batches=(1, 4), load=QUICK)


def inputs_for(backend: Backend, images: Sequence[BenchImage]) -> list[BenchImage]:
    """The images a backend can take (shared memory needs decoded pixels)."""
    if backend.name == "triton-shm":
        return [im for im in images if im.pixels is not None]
    return list(images)


def run_latency(backends: Sequence[Backend | Unavailable], images: Sequence[BenchImage], sweep: Sweep, *,
                progress: bool = False) -> dict[str, list[PointStats]]:
    """Every point of ``sweep`` for every available backend; ``{name: [PointStats, ...]}``."""
    usable = [b for b in backends if isinstance(b, Backend)]
    total = sum(len(sweep.points(b)) for b in usable)
    bar = tqdm(total=total, desc="latency", unit="point", disable=not progress, dynamic_ncols=True)
    results: dict[str, list[PointStats]] = {}
    try:
        for backend in usable:
            items = inputs_for(backend, images)
            results[backend.name] = []
            if not items:
                log.warning("%s: no usable images, skipped", backend.name)
                bar.update(len(sweep.points(backend)))
                continue
            warm_up(backend, items, sweep)
            for concurrency, batch in sweep.points(backend):
                bar.set_postfix_str(f"{backend.name} c={concurrency} b={batch}")
                backend.begin_point()
                stats, _ = run_point(backend.run, items, backend=backend.name, concurrency=concurrency, batch=batch,
                                     load=sweep.load)
                stats.model_ms_per_image, extra = backend.end_point()
                stats.extra.update(extra)
                results[backend.name].append(stats)
                log.info("%s c=%d b=%d: p50 %s ms, %s img/s", backend.name, concurrency, batch,
                         _fmt(stats.p50_ms), _fmt(stats.images_per_s))
                bar.update(1)
    finally:
        bar.close()
    return results


def warm_up(backend: Backend, items: Sequence[BenchImage], sweep: Sweep) -> None:
    """A few untimed calls at every batch size before the backend's first point.

    PyTorch (oneDNN primitives per shape), ONNX Runtime (arena growth) and Triton (the
    Python stubs' first imports) are several times slower on their first calls; the
    per-point warm-up alone would leave that cost inside the first point.
    """
    for batch in sorted({b for _, b in sweep.points(backend)}):
        for i in range(max(sweep.load.warmup, 1) + (2 if batch == 1 else 1)):
            try:
                backend.run([items[(i * batch + k) % len(items)] for k in range(batch)])
            except Exception as exc:  # noqa: BLE001 - the timed calls will count and report it
                log.warning("%s: warm-up call failed: %s", backend.name, exc)
                return


def headline(points: Sequence[PointStats]) -> PointStats | None:
    """The point the joined table shows: concurrency 1, batch 1 (single-study latency)."""
    return next((p for p in points if p.concurrency == 1 and p.batch == 1), None)


def best_throughput(points: Sequence[PointStats]) -> PointStats | None:
    """The point with the highest images/s (any concurrency or batch)."""
    scored = [p for p in points if p.images_per_s]
    return max(scored, key=lambda p: p.images_per_s) if scored else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"
