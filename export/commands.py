"""``cxr export {onnx,onnx-int8,trt}``: build an artifact, check parity, place it.

Parity (``--check``) runs PyTorch (the eager serving graph, which equals the
trained torchvision model exactly) and the artifact through the same ``cxr``
preprocess and postprocess on held-out studies (the test split of ``--data``)
and compares detections; a failure raises :class:`ParityError` with the table of
the worst images.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.export.parity import TOLERANCES, ParityReport, Tolerance, compare
from cxr.export.repository import artifact_path, check_compatible, ensure_repository, place_artifact

log = logging.getLogger(__name__)

KINDS = ("onnx", "onnx-int8", "trt")


class ParityError(RuntimeError):
    def __init__(self, report: ParityReport) -> None:
        super().__init__("parity check failed:\n" + report.table())
        self.report = report


@dataclass
class ExportResult:
    kind: str
    path: Path
    parity: ParityReport | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "parity": None if self.parity is None else self.parity.to_dict()}


def _studies(data: str | Path, split: str, n: int, labelset_name: str):
    from cxr.training.datasets import NIHDataset

    ds = NIHDataset.from_dir(data, labelset=labelset_name, require_images=True)
    studies = [s for s in ds.detection_studies(split)][:n]
    if not studies:
        raise ValueError(f"{data}: split {split!r} has no images to use")
    return studies


def _labelset_name(ckpt) -> str:
    return ckpt.labelset_name if ckpt.labelset_name != "custom" else "nih-bbox"


def check_parity(ckpt, detector, studies, *, tolerance: Tolerance, batch_size: int = 4) -> ParityReport:
    """PyTorch vs ``detector`` on ``studies`` through the same pre/postprocessing."""
    from cxr.export.runtime import Pipeline, TorchDetector
    from cxr.training.engine import ground_truth

    paths = [s.path for s in studies]
    reference = Pipeline(TorchDetector(ckpt), ckpt.preprocess, ckpt.postprocess)(paths, batch_size=batch_size)
    artifact = Pipeline(detector, ckpt.preprocess, ckpt.postprocess)(paths, batch_size=batch_size)
    return compare(reference, artifact, names=[s.image_id for s in studies], ground_truth=ground_truth(studies, ckpt.labelset),
                   class_names=ckpt.class_names, tolerance=tolerance)


def calibration_batches(ckpt, studies) -> list[np.ndarray]:
    """One ``[1, C, S, S]`` model input per study, through the serving preprocessing."""
    from cxr.imaging import decode_image
    from cxr.preprocess import preprocess

    return [preprocess(decode_image(s.path), ckpt.preprocess)[0][None] for s in studies]


def run_export(
    kind: str,
    checkpoint: str | Path,
    *,
    repository: str | Path | None = "model_repository",
    out: str | Path | None = None,
    data: str | Path | None = None,
    check: bool = False,
    check_images: int = 32,
    calibration_images: int = 32,
    force: bool = False,
    batch_profile=None,
) -> ExportResult:
    """Export ``checkpoint`` as ``kind``; write to ``out`` or into ``repository``."""
    from cxr.export.onnx_export import export_onnx
    from cxr.training.checkpoint import load_checkpoint

    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if check and data is None:
        raise ValueError("--check needs --data DIR: parity runs on the held-out (test) studies of that dataset")
    if kind == "onnx-int8" and data is None:
        raise ValueError("onnx-int8 needs --data DIR: INT8 is calibrated on training images of that dataset")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.metadata()
    if repository is not None and out is None:
        check_compatible(repository, meta, force=force)  # fail before minutes of work
    labelset = _labelset_name(ckpt)
    held_out = _studies(data, "test", check_images, labelset) if check else None

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        if kind == "trt":
            from cxr.export.tensorrt import BatchProfile, TrtDetector, build_engine, require_tensorrt

            require_tensorrt()  # before spending time on the ONNX export
            export_onnx(ckpt, fp32)
            built = build_engine(fp32, Path(tmp) / "model.plan", channels=ckpt.preprocess.channels, size=ckpt.preprocess.size,
                                 profile=batch_profile or BatchProfile(), metadata=meta)
            make_detector, tolerance = (lambda p: TrtDetector(p)), TOLERANCES["fp16"]
        elif kind == "onnx-int8":
            from cxr.export.quantize import quantize_int8
            from cxr.export.runtime import OrtDetector

            export_onnx(ckpt, fp32)
            calib = calibration_batches(ckpt, _studies(data, "train", calibration_images, labelset))
            built = quantize_int8(fp32, Path(tmp) / "model.int8.onnx", calib)
            make_detector, tolerance = (lambda p: OrtDetector(p)), TOLERANCES["int8"]
        else:
            from cxr.export.runtime import OrtDetector

            built = export_onnx(ckpt, fp32)
            make_detector, tolerance = (lambda p: OrtDetector(p)), TOLERANCES["fp32"]

        report = None
        if check:
            report = check_parity(ckpt, make_detector(built), held_out, tolerance=tolerance)
            log.info("parity on %d images: %s", report.n_images, "PASS" if report.passed else "FAIL")
            if not report.passed:
                raise ParityError(report)
        extra = {"precision": {"onnx": "fp32", "onnx-int8": "int8", "trt": "fp16"}[kind]}
        if report is not None:
            extra["parity"] = {k: getattr(report, k) for k in ("n_images", "match_rate", "max_score_delta", "max_box_dev_px", "map_delta")}
        if out is not None:
            dest = Path(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(Path(built).read_bytes())
        else:
            dest = place_artifact(repository, kind, built, meta, force=force, extra=extra)
            ensure_repository(repository, meta)
            if kind == "trt":
                from cxr.export.tensorrt import engine_metadata_path

                engine_metadata_path(dest).write_text(engine_metadata_path(built).read_text())
    return ExportResult(kind, dest, report)


__all__ = ["KINDS", "ExportResult", "ParityError", "artifact_path", "check_parity", "run_export"]
