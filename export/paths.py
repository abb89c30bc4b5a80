"""``cxr export paths``: check and time every way the CPU server's detector can run, record the verdicts.

For each path of :data:`cxr.serving.paths.PATHS` that can run on this machine (its ONNX file placed,
its runtime installed, BF16 only where the CPU has it), the detector's parity check against
PyTorch on the held-out studies (the tolerance of the path's precision: FP32's exact one, or
BF16/INT8's mAP delta <= 0.01), then its median latency at batch 1 on those studies' inputs.  The
verdicts, timings and the CPU's ISA go to ``detector/1/paths.json``, which ``cxr serve --path auto``
reads (:func:`cxr.serving.paths.choose`).  A failed path is recorded, not fatal: it is simply
never served.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

from cxr.contract import Precision, Step
from cxr.errors import UsageError
from cxr.export.parity import TOLERANCES
from cxr.serving.paths import PATHS, PATHS_FILE, Choice, choose, time_path

log = logging.getLogger(__name__)


def runtime_error(exc: BaseException) -> str:
    """One line for a runtime's refusal (OpenVINO's messages run to a dozen lines of C++ locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))] or lines or [""]
    return f"{type(exc).__name__}: {useful[-1]}"[:300]


def run_paths(checkpoint: str | Path, *, repository: str | Path, data: str | Path, check_images: int = 32,
              rounds: int = 15, progress: bool = False) -> tuple[dict, Choice]:
    """Check and time every runnable path of ``repository``'s detector; write and return the record and the choice."""
    from tqdm import tqdm

    from cxr.decode.image import decode_image
    from cxr.export.commands import _studies, check_parity, reference_detections
    from cxr.preprocess import preprocess
    from cxr.export.repository import check_compatible
    from cxr.labels import annotation_labelset
    from cxr.machine import cpu_info, cpu_kind, isa_line
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    check_compatible(repository, ckpt.metadata(), force=False)  # the files there are this checkpoint's
    folder = Path(repository) / Step.DETECTOR / "1"
    if not (folder / PATHS[0].file).is_file():
        raise UsageError(f"{folder} has no {PATHS[0].file}: run `cxr export onnx --checkpoint {checkpoint} "
                         f"--repository {repository}` first (and onnx-int8 for the INT8 paths)")
    studies = _studies(data, "test", check_images, annotation_labelset(ckpt.labelset_name))
    images = [decode_image(s.path) for s in studies]  # decoded once; PyTorch's answer made once for every path
    reference = reference_detections(ckpt, images)
    inputs = [preprocess(image, ckpt.preprocess)[0][None] for image in images[:8]]
    cpu = cpu_info()
    isa = isa_line(cpu)
    rows: dict[str, dict] = {}
    for path in tqdm(PATHS, desc="paths", disable=not progress):
        why = path.available(folder, isa)
        row: dict = {"runtime": path.runtime, "precision": path.precision, "file": path.file}
        if why is not None:
            rows[path.name] = {**row, "skipped": why}
            continue
        try:
            detector = path.detector(folder)
            report = check_parity(ckpt, detector, studies, tolerance=TOLERANCES[Precision(path.precision)], images=images,
                                  reference=reference)
            row["parity"] = {"passed": bool(report.passed), "n_images": report.n_images, "map_delta": report.map_delta,
                             "match_rate": report.match_rate, "max_score_delta": report.max_score_delta}
            if report.masks is not None:
                row["parity"] |= {"mask_iou_median": report.masks.iou_median, "segm_ap_delta": report.masks.segm_ap_delta}
            row["p50_ms"] = time_path(detector, inputs, rounds=rounds)
        except Exception as exc:  # noqa: BLE001 - the runtime refused this file on this CPU: never served, others go on
            rows[path.name] = {**row, "skipped": f"could not run here: {runtime_error(exc)}"}
            log.warning("%s: could not run here: %s", path.name, runtime_error(exc))
            continue
        rows[path.name] = row
        log.info("%s: parity %s, %.1f ms", path.name, "PASS" if report.passed else "FAIL", row["p50_ms"])
    record = {"isa": isa, "cpu_kind": cpu_kind(cpu), "cpu_model": cpu.get("model"), "threads": cpu.get("usable_cores"),
              "model_version": ckpt.model_version, "written": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "held_out_images": len(studies), "paths": rows}
    (folder / PATHS_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record, choose(folder, isa)


def format_paths(record: dict, choice: Choice) -> str:
    """The record as a table, and what ``cxr serve --path auto`` will serve."""
    lines = ["| path | parity | mAP delta | p50 ms (batch 1) |", "| --- | --- | ---: | ---: |"]
    for name, row in record["paths"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | – | – |")
            continue
        p = row["parity"]
        delta = "–" if p.get("map_delta") is None else f"{p['map_delta']:+.4f}"
        lines.append(f"| {name} | {'PASS' if p['passed'] else 'FAIL'} | {delta} | {row['p50_ms']:.1f} |")
    return ("\n".join(lines) + f"\n\n{record['held_out_images']} held-out studies; CPU {record['cpu_model']} "
            f"({record['isa']}).\ncxr serve --path auto serves {choice.path.name}: {choice.reason}\n")
