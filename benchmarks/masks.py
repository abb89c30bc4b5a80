"""``cxr bench masks``: the Mask R-CNN's rows -- speed and mask parity per backend, and what the masks cost.

For a ``segment`` checkpoint and the repository ``cxr export`` wrote for it, every backend
(``pytorch``: the eager serving graph; ``onnx``: ORT FP32; ``onnx-int8``: ORT INT8, when the
repository holds ``model.int8.onnx``) runs the held-out studies one at a time, in process,
through the served steps (:mod:`cxr.serving.steps`): decode + letterbox, the detector, postprocess
with the paste into the ORIGINAL grid (:func:`~cxr.serving.steps.unmap_detections`), and the wire
encoding (:func:`~cxr.serving.steps.mask_tensors`).  Each step is timed per study; the row gives
p50/p95 of the whole, images/s of one stream (studies / summed time), and the paste (postprocess
with the masks minus postprocess of the same raw output without them) and encode costs.  Parity
against ``pytorch``: :func:`cxr.export.parity.compare` with the tolerance of the row's precision
(matched-mask IoU median, segm AP and its delta against the data's masks, box mAP delta).

With ``triton`` the repository is also served by the embedded tritonserver and ``cxr_segment`` is
asked over gRPC, one study at a time through the SDK (encoded bytes in, masks decoded from the
wire form): p50/p95 and images/s end to end, and how many studies' detections and masks are
identical, pixel for pixel, to the in-process ORT FP32 row (the server is pinned to that path,
``ort-fp32``).  OpenVINO rows (FP32, BF16 where the CPU has it, INT8 on the QDQ file) are the
paths ``cxr serve`` may choose (:mod:`cxr.serving.paths`).  Not here: TensorRT rows for masks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError, MissingFileError

BACKENDS = ("pytorch", "onnx", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-bf16")


def _detectors(ckpt, repository: Path, threads: int | None):
    """(name, precision, detector or the reason it is unavailable) per backend."""
    from cxr.contract import Artifact, Precision, Step
    from cxr.export.torch_detector import TorchDetector
    from cxr.machine import cpu_info, isa_line
    from cxr.serving.paths import BY_NAME
    from cxr.serving.runtime import OrtDetector

    yield "pytorch", Precision.FP32, TorchDetector(ckpt)
    for name, kind in (("onnx", Artifact.ONNX), ("onnx-int8", Artifact.ONNX_INT8)):
        path = repository / kind.path
        if path.is_file():
            yield name, kind.precision, OrtDetector(path, threads=threads)
        else:
            yield name, kind.precision, f"no {kind.path} in {repository} (cxr export {kind} --checkpoint ... --repository ...)"
    folder, isa = repository / Step.DETECTOR / "1", isa_line(cpu_info())
    for name in BACKENDS[3:]:  # the served paths of cxr.serving.paths that run on OpenVINO
        path = BY_NAME[name]
        why = path.available(folder, isa)
        yield name, Precision(path.precision), why if why is not None else path.detector(folder, threads=threads)


def time_study(detector, data: bytes, preprocess, postprocess) -> tuple[dict, object, int]:
    """One study through the served steps: ms per step, its DetectionArrays, and its mask bytes on the wire."""
    from cxr.decode.image import decode_image
    from cxr.serving.steps import mask_tensors, prepare_batch, unmap_detections

    t0 = time.perf_counter()
    x, records = prepare_batch([decode_image(data)], preprocess)
    t1 = time.perf_counter()
    raw = detector(x)
    t2 = time.perf_counter()
    dets = unmap_detections(raw, records, postprocess)
    t3 = time.perf_counter()
    wire = mask_tensors(dets)
    t4 = time.perf_counter()
    unmap_detections(tuple(raw)[:4], records, postprocess)  # the same postprocess without the masks
    t5 = time.perf_counter()
    ms = {"preprocess": t1 - t0, "model": t2 - t1, "postprocess_paste": t3 - t2, "encode": t4 - t3,
          "postprocess": t5 - t4}
    ms = {k: v * 1e3 for k, v in ms.items()}
    ms["total"] = ms["preprocess"] + ms["model"] + ms["postprocess_paste"] + ms["encode"]
    ms["paste"] = max(0.0, ms["postprocess_paste"] - ms["postprocess"])
    return ms, dets[0], int(sum(v.nbytes for v in wire.values()))


def _row(name: str, precision, timings: list[dict], wire_bytes: list[int]) -> dict:
    def pct(key: str, q: float) -> float:
        return float(np.percentile([t[key] for t in timings], q))

    return {"name": name, "precision": str(precision), "status": "ok", "studies": len(timings),
            "p50_ms": pct("total", 50), "p95_ms": pct("total", 95),
            "images_per_s": 1e3 * len(timings) / sum(t["total"] for t in timings),
            "model_p50_ms": pct("model", 50), "preprocess_p50_ms": pct("preprocess", 50),
            "postprocess_p50_ms": pct("postprocess", 50), "paste_p50_ms": pct("paste", 50),
            "paste_p95_ms": pct("paste", 95), "encode_p50_ms": pct("encode", 50), "encode_p95_ms": pct("encode", 95),
            "mask_bytes_median": float(np.median(wire_bytes)), "mask_bytes_max": int(max(wire_bytes))}


def served_row(repository: Path, films: list[bytes], reference: list, *, warmup: int, log_file: Path) -> dict:
    """``cxr_segment`` of an embedded tritonserver on ``repository``: latency per study end to end through the
    SDK, and the studies whose detections and masks equal ``reference`` (in-process ORT FP32) pixel for pixel."""
    from cxr.client import DetectorClient
    from cxr.contract import SEGMENT
    from cxr.server.launcher import TritonServer

    with TritonServer.on_free_ports(repository, log_file=log_file, path="ort-fp32") as server, \
            DetectorClient(url=server.url, model_name=SEGMENT, timeout_s=600.0) as client:
        for data in films[:warmup]:
            client.predict(data)
        times, same = [], 0
        for data, ref in zip(films, reference):
            t0 = time.perf_counter()
            result = client.predict(data)
            times.append((time.perf_counter() - t0) * 1e3)
            same += len(result.detections) == len(ref) and all(
                np.array_equal(d.mask.full(), ref.masks.mask(i)) for i, d in enumerate(result.detections))
    return {"name": "triton", "precision": "served", "status": "ok", "studies": len(times),
            "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "images_per_s": 1e3 * len(times) / sum(times), "identical_to_onnx": same}


def measure_masks(checkpoint: Path, repository: Path, data: Path, *, split: str = "test", images: int = 16,
                  warmup: int = 2, threads: int | None = None, backends=BACKENDS, progress: bool = True,
                  triton: bool = False, log_file: Path | None = None) -> dict:
    """The rows of every backend in ``backends`` (``pytorch`` always runs: it is the parity reference), and
    with ``triton`` the served row (needs the ``onnx`` row: its masks are what the served ones are held to)."""
    from cxr.export.commands import _studies
    from cxr.export.parity import TOLERANCES, compare
    from cxr.machine import cpu_info, isa_line
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.engine import ground_truth

    if images < 1 or warmup < 0:
        raise InvalidOptionError(f"need --images >= 1 and --warmup >= 0, got {images} and {warmup}")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise InvalidOptionError(f"unknown mask backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if triton and "onnx" not in backends:
        raise InvalidOptionError("--triton holds the served masks to the onnx row: keep onnx in --backends")
    if not Path(repository).is_dir():
        raise MissingFileError(f"no model repository at {repository}: export the checkpoint first (cxr export onnx)")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.model_config.task != "segment":
        raise InvalidOptionError(f"{checkpoint} is a {ckpt.model_config.task} checkpoint ({ckpt.model_config.arch}): "
                                 "cxr bench masks needs a Mask R-CNN (cxr train --task segment)")
    studies = _studies(data, split, images, ckpt.labelset_name)
    films = [Path(s.path).read_bytes() for s in studies]
    gts = ground_truth(studies, ckpt.labelset, masks=True)
    rows, reference, onnx_dets = [], None, None
    for name, precision, detector in _detectors(ckpt, Path(repository), threads):
        if name not in backends and name != "pytorch":
            continue
        if isinstance(detector, str):
            rows.append({"name": name, "precision": str(precision), "status": "unavailable", "reason": detector})
            continue
        for data_ in films[:warmup]:
            time_study(detector, data_, ckpt.preprocess, ckpt.postprocess)
        timings, dets, wire = [], [], []
        for data_ in films:
            ms, d, nbytes = time_study(detector, data_, ckpt.preprocess, ckpt.postprocess)
            timings.append(ms), dets.append(d), wire.append(nbytes)
        row = _row(name, precision, timings, wire)
        if reference is None:
            reference = dets
        report = compare(reference, dets, names=[s.image_id for s in studies], ground_truth=gts,
                         class_names=ckpt.class_names, tolerance=TOLERANCES[precision])
        row["parity"] = {"passed": report.passed, "failures": report.failures, "map_delta": report.map_delta,
                         "masks": None if report.masks is None else vars(report.masks)}
        if not report.passed:
            row["status"] = "failed-parity"
        rows.append(row)
        if progress:
            print(f"{name}: p50 {row['p50_ms']:.1f} ms, {row['images_per_s']:.2f} images/s", flush=True)
        if name == "onnx":
            onnx_dets = dets
    if triton:
        if onnx_dets is None:
            raise MissingFileError(f"--triton holds the served masks to the onnx row: export {repository}'s model.onnx")
        rows.append(served_row(Path(repository), films, onnx_dets, warmup=warmup,
                               log_file=log_file or Path(repository) / "tritonserver-bench-masks.log"))
    cpu = cpu_info()
    return {"checkpoint": str(checkpoint), "model": ckpt.model_config.arch, "size": ckpt.preprocess.size,
            "split": split, "studies": len(studies), "cpu": cpu["model"], "isa": isa_line(cpu),
            "threads": threads, "rows": rows, "load_average": [round(v, 2) for v in __import__("os").getloadavg()]}


def table(result: dict) -> str:
    """The rows as a Markdown table, with the machine above it."""
    def f(v, fmt=".4f"):
        return "n/a" if v is None else format(v, fmt)

    lines = [f"{result['model']} @{result['size']}, {result['studies']} {result['split']} studies, batch 1, one stream; "
             f"{result['cpu']} ({result['isa']}), load average {result['load_average']}",
             "", "| backend | status | p50 ms | p95 ms | images/s | model p50 ms | paste p50/p95 ms | encode p50/p95 ms "
             "| mask bytes median/max | mask IoU median | segm AP (Δ) | segm AP50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["name"] == "triton":
            lines.append(f"| triton (cxr_segment over gRPC) | {r['status']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                         f"{r['images_per_s']:.2f} | | | | | {r['identical_to_onnx']} of {r['studies']} studies "
                         "identical to onnx pixel for pixel | | |")
            continue
        if r["status"] == "unavailable":
            lines.append(f"| {r['name']} | unavailable: {r['reason']} |" + " |" * 10)
            continue
        m = r["parity"]["masks"] or {}
        lines.append(
            f"| {r['name']} | {r['status']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['images_per_s']:.2f} | "
            f"{r['model_p50_ms']:.1f} | {r['paste_p50_ms']:.2f} / {r['paste_p95_ms']:.2f} | "
            f"{r['encode_p50_ms']:.3f} / {r['encode_p95_ms']:.3f} | {r['mask_bytes_median']:.0f} / {r['mask_bytes_max']} | "
            f"{f(m.get('iou_median'))} | {f(m.get('segm_ap_test'))} ({f(m.get('segm_ap_delta'), '.5f')}) | "
            f"{f(m.get('segm_ap50_test'))} |")
    return "\n".join(lines)


DESCRIPTION = (
    "A Mask R-CNN's rows: PyTorch eager, ORT FP32 and INT8, OpenVINO FP32, BF16 and INT8 (when exported and "
    "installed) run held-out studies one at a time "
    "through the served steps; p50/p95 end to end, images/s of one stream, the model, paste and encode costs per "
    "study, the masks' bytes on the wire, and parity against PyTorch (matched-mask IoU median, segm AP and its delta, "
    "with the export tolerance of each precision); --triton adds cxr_segment served by the embedded tritonserver. "
    "Writes OUT/masks.json and masks.md.")


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="a segment checkpoint")
    p.add_argument("--repository", type=Path, required=True, metavar="DIR", help="the model repository exported from it")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="NIH-layout data with masks.json")
    p.add_argument("--split", default="test", help="split to run (default test)")
    p.add_argument("--images", type=int, default=16, metavar="N", help="studies to run (default 16)")
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="untimed studies per backend first (default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="ORT intra-op threads (default: ORT's)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})")
    p.add_argument("--triton", action="store_true",
                   help="also serve the repository with the embedded tritonserver and time cxr_segment over gRPC")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for masks.json and masks.md")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_masks(args) -> int:
    result = measure_masks(args.checkpoint, args.repository, args.data, split=args.split, images=args.images,
                           warmup=args.warmup, threads=args.threads,
                           backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
                           progress=not args.json, triton=args.triton, log_file=args.out / "tritonserver.log")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "masks.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "masks.md").write_text(table(result) + "\n")
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(table(result))
        print(f"\nwrote {args.out / 'masks.json'}, {args.out / 'masks.md'}")
    return 0
