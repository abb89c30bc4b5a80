"""``cxr bench parity``: the same held-out studies through PyTorch and every backend.

Per backend: the export parity figures of :func:`cxr.export.parity.compare` against
PyTorch eager (match rate, |Δscore| max/median, box deviation, mAP delta), judged
by the tolerance of the backend's precision in :data:`cxr.export.parity.TOLERANCES`,
plus the clinical figures of :func:`cxr.training.metrics.evaluate_detections`
against the ground truth (mAP@0.5, per-class AP@0.5, FROC sensitivity at 1 false
positive per image).  A backend outside its tolerance gets status ``failed-parity``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from cxr.benchmarks.backends import Backend, BenchImage, Unavailable
from cxr.benchmarks.latency import inputs_for
from cxr.benchmarks.vocab import BenchBackend as B
from cxr.errors import InvalidOptionError
from cxr.export.parity import TOLERANCES, compare  # noqa: F401 - TOLERANCES re-exported
from cxr.postprocess import DetectionArrays

log = logging.getLogger(__name__)

# bfloat16 has fp16's kind of error (fewer mantissa bits, not fewer levels): judged by its tolerance.
TOLERANCE_OF = {"bf16": "fp16"}


def tolerance_for(precision: str):
    return TOLERANCES[TOLERANCE_OF.get(str(precision), str(precision))]


@dataclass
class BackendParity:
    """Parity and clinical figures of one backend (PyTorch's own row compares with itself)."""

    name: str
    n_images: int
    passed: bool
    map50: float | None
    delta_map50: float | None  # signed: backend - PyTorch, on the same images
    froc_at_1fp: float | None
    per_class_ap50: dict[str, float | None]
    match_rate: float | None
    max_score_delta: float | None
    median_score_delta: float | None
    max_box_dev_px: float | None
    tolerance: str
    failures: list[str] = field(default_factory=list)
    error: str | None = None  # the backend failed to answer at all

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def clinical(dets: Sequence[DetectionArrays], truth: Sequence[dict], class_names: Sequence[str]) -> dict:
    """mAP@0.5, per-class AP@0.5 and FROC at 1 FP/image (no bootstrap: parity needs point values)."""
    from cxr.training.metrics import evaluate_detections

    preds = [{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d in dets]
    m = evaluate_detections(preds, list(truth), list(class_names), bootstrap=0)
    return {"map50": m["map50"], "froc_at_1fp": m["froc"].get("1"),
            "per_class_ap50": {name: row["ap50"] for name, row in m["per_class"].items()}}


def _run_all(backend: Backend, images: Sequence[BenchImage], batch: int) -> list[DetectionArrays]:
    out: list[DetectionArrays] = []
    for start in range(0, len(images), batch):
        out += backend.run(images[start:start + batch])
    return out


def run_parity(backends: Sequence[Backend | Unavailable], images: Sequence[BenchImage], class_names: Sequence[str], *,
               progress: bool = False) -> dict[str, BackendParity]:
    """Parity of every available backend against ``pytorch`` (which must be among them)."""
    usable = {b.name: b for b in backends if isinstance(b, Backend)}
    if B.PYTORCH not in usable:
        raise InvalidOptionError("parity needs the pytorch backend as the reference")
    results: dict[str, BackendParity] = {}
    reference = _run_all(usable[B.PYTORCH], images, 4)
    ref_metrics = clinical(reference, [im.truth for im in images], class_names)
    for name, backend in tqdm(usable.items(), desc="parity", disable=not progress, dynamic_ncols=True):
        subset = inputs_for(backend, images)
        keep = {im.name for im in subset}
        ref = [d for d, im in zip(reference, images) if im.name in keep]
        truth = [im.truth for im in subset]
        tol_name = backend.precision
        if not subset:
            results[name] = BackendParity(name, 0, False, None, None, None, {}, None, None, None, None, tol_name,
                                          failures=["no usable images (shared memory needs grayscale PNG/JPEG pixels)"])
            continue
        try:
            dets = reference if name == B.PYTORCH else _run_all(backend, subset, 4 if 4 in backend.batches else 1)
        except Exception as exc:  # noqa: BLE001 - one broken backend must not hide the others' results
            log.warning("parity: %s failed: %s", name, exc)
            results[name] = BackendParity(name, len(subset), False, None, None, None, {}, None, None, None, None, tol_name,
                                          failures=[f"no answer: {exc}"], error=f"{type(exc).__name__}: {exc}")
            continue
        report = compare(ref, dets, names=[im.name for im in subset], ground_truth=truth,
                         class_names=class_names, tolerance=tolerance_for(tol_name))
        base = ref_metrics if len(subset) == len(images) else clinical(ref, truth, class_names)
        mine = ref_metrics if name == B.PYTORCH else clinical(dets, truth, class_names)
        delta = None if mine["map50"] is None or base["map50"] is None else mine["map50"] - base["map50"]
        results[name] = BackendParity(
            name=name, n_images=len(subset), passed=report.passed, map50=mine["map50"], delta_map50=delta,
            froc_at_1fp=mine["froc_at_1fp"], per_class_ap50=mine["per_class_ap50"], match_rate=report.match_rate,
            max_score_delta=report.max_score_delta, median_score_delta=report.median_score_delta,
            max_box_dev_px=report.max_box_dev_px, tolerance=tol_name, failures=list(report.failures),
        )
        log.info("parity %s: %s", name, "pass" if report.passed else "; ".join(report.failures))
    return results
