"""The backends ``cxr bench`` compares, each as one end-to-end callable.

Every backend turns a list of studies into a list of
:class:`~cxr.postprocess.DetectionArrays` (boxes in ORIGINAL pixels, 1-based class ids)
and includes decoding, preprocessing and postprocessing, so the comparison is end
to end.  In process that is :class:`cxr.export.runtime.Pipeline` around a detector
(PyTorch eager, ONNX Runtime FP32 / INT8, TensorRT FP16); served it is the
``cxr_detector`` ensemble through :class:`cxr.client.DetectorClient` with encoded
bytes (``triton``) or raw pixels through system shared memory (``triton-shm``).

A backend that cannot run here is an :class:`Unavailable` with the reason (no GPU,
artifact not exported, server unreachable), never an exception: the report lists it.

Model-only time: in process a :class:`~cxr.benchmarks.stats.CallTimer` wraps the
detector; served, the ``detector`` model's compute time comes from Triton's own
statistics extension (``compute_infer`` ns / images), read before and after a point.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.benchmarks.stats import CallTimer
from cxr.contract import Artifact, BenchBackend, Precision
from cxr.errors import InvalidOptionError
from cxr.postprocess import DetectionArrays

log = logging.getLogger(__name__)

BACKENDS = BenchBackend.values()  # report order
IN_PROCESS = tuple(b.value for b in BenchBackend if b.in_process)


@dataclass(frozen=True)
class BenchImage:
    """One held-out study in the two forms the backends take, plus its ground truth.

    data: the encoded file (PNG/JPEG/DICOM bytes), what PACS sends and what the
    in-process pipelines and ``triton`` decode inside the timed call.
    pixels: the decoded grayscale array (uint8/uint16 ``[H, W]``) with its
    ``bits_stored``, what ``triton-shm`` sends; decoded *before* timing because a
    caller that uses shared memory already holds pixels.
    """

    name: str
    data: bytes
    pixels: np.ndarray | None = None
    bits_stored: int | None = None
    truth: dict | None = None  # {"boxes": [M, 4] ORIGINAL pixels, "labels": [M] 1-based}


@dataclass
class Backend:
    """An available backend: ``run(images) -> detections`` plus what the report needs."""

    name: str
    run: Callable[[Sequence[BenchImage]], list[DetectionArrays]]
    precision: str
    size_mb: float | None
    batches: tuple[int, ...] = (1,)  # in process: images per call; served: always 1 per request
    detail: str = ""  # e.g. the artifact path or server URL
    timer: CallTimer | None = None
    triton_stats: TritonStats | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    status = "ok"

    def begin_point(self) -> None:
        if self.timer is not None:
            self.timer.reset()
        if self.triton_stats is not None:
            self.triton_stats.begin()

    def end_point(self) -> tuple[float | None, dict]:
        """(model-only ms per image, extra figures) for the point just run."""
        if self.timer is not None:
            return self.timer.ms_per_image(), {}
        if self.triton_stats is not None:
            return self.triton_stats.end()
        return None, {}

    def close(self) -> None:
        for fn in reversed(self.closers):
            with contextlib.suppress(Exception):
                fn()
        self.closers.clear()


@dataclass(frozen=True)
class Unavailable:
    """A backend that cannot run on this machine, and why."""

    name: str
    reason: str
    status: str = "unavailable"

    def close(self) -> None:  # uniform with Backend
        pass


def _mb(path: Path) -> float | None:
    return path.stat().st_size / 1e6 if path.is_file() else None


def _pipeline_backend(name: str, detector, ckpt, *, size_mb: float | None, detail: str, batches: tuple[int, ...]) -> Backend:
    from cxr.export.pipeline import Pipeline

    timer = CallTimer(detector)
    pipe = Pipeline(timer, ckpt.preprocess, ckpt.postprocess)

    def run(images: Sequence[BenchImage]) -> list[DetectionArrays]:
        return pipe([im.data for im in images], batch_size=max(len(images), 1))

    return Backend(name, run, BenchBackend(name).precision(), size_mb, batches=batches, detail=detail, timer=timer)


def open_in_process(name: str, ckpt, *, checkpoint: Path, repository: Path, batches: tuple[int, ...] = (1, 4)) -> Backend | Unavailable:
    """PyTorch eager or an exported artifact of ``repository`` behind the cxr pipeline."""
    from cxr.export.repository import artifact_path

    if BenchBackend(name) is BenchBackend.PYTORCH:
        from cxr.export.runtime import TorchDetector

        return _pipeline_backend(name, TorchDetector(ckpt), ckpt, size_mb=_mb(Path(checkpoint)), detail=str(checkpoint), batches=batches)
    kind = BenchBackend(name).artifact
    path = artifact_path(repository, kind)
    if kind is Artifact.TRT:
        from cxr.export.tensorrt import TensorRTUnavailable, require_tensorrt

        try:
            require_tensorrt()
        except TensorRTUnavailable as exc:
            return Unavailable(name, str(exc))
    if not path.is_file():
        return Unavailable(name, f"not exported: {path} is missing (run `cxr export {kind} --checkpoint CKPT --repository {repository}`)")
    try:
        if kind is Artifact.TRT:
            from cxr.export.tensorrt import TrtDetector

            detector = TrtDetector(path)
        else:
            from cxr.export.runtime import OrtDetector

            detector = OrtDetector(path)
    except Exception as exc:  # noqa: BLE001 - e.g. an engine built on another GPU: report, do not crash
        return Unavailable(name, f"cannot load {path}: {type(exc).__name__}: {exc}")
    return _pipeline_backend(name, detector, ckpt, size_mb=_mb(path), detail=str(path), batches=batches)


def to_detections(result, class_names: Sequence[str]) -> DetectionArrays:
    """A client :class:`~cxr.client.results.StudyResult` as :class:`DetectionArrays` (1-based ids)."""
    index = {n: i + 1 for i, n in enumerate(class_names)}
    dets = result.detections
    if not dets:
        return DetectionArrays.empty()
    return DetectionArrays(
        np.asarray([d.box_xyxy_px for d in dets], np.float32).reshape(-1, 4),
        np.asarray([d.score for d in dets], np.float32),
        np.asarray([index[d.label] for d in dets], np.int64),
    )


class TritonStats:
    """Model-only time of the served ``detector`` from Triton's statistics extension."""

    def __init__(self, url: str, model: str = "detector") -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self._before: dict | None = None

    def snapshot(self) -> dict:
        stats = self.client.get_inference_statistics(self.model, as_json=True, client_timeout=10)
        s = stats["model_stats"][0]
        inf = s.get("inference_stats", {})
        # proto3 JSON writes uint64 as strings and omits zeros.
        ns = lambda key: int(inf.get(key, {}).get("ns", 0))  # noqa: E731
        return {"images": int(s.get("inference_count", 0)), "executions": int(s.get("execution_count", 0)),
                "compute_ns": ns("compute_infer"), "queue_ns": ns("queue"),
                "input_ns": ns("compute_input"), "output_ns": ns("compute_output")}

    def begin(self) -> None:
        try:
            self._before = self.snapshot()
        except Exception as exc:  # noqa: BLE001 - statistics are a bonus, not a requirement
            log.debug("no Triton statistics: %s", exc)
            self._before = None

    def end(self) -> tuple[float | None, dict]:
        if self._before is None:
            return None, {}
        try:
            after = self.snapshot()
        except Exception:  # noqa: BLE001
            return None, {}
        d = {k: after[k] - self._before[k] for k in after}
        if d["images"] <= 0:
            return None, {}
        extra = {"detector_queue_ms_per_image": d["queue_ns"] / d["images"] / 1e6,
                 "detector_mean_batch": d["images"] / d["executions"] if d["executions"] else None}
        return d["compute_ns"] / d["images"] / 1e6, extra

    def close(self) -> None:
        self.client.close()


def open_served(name: str, ckpt, *, url: str, repository: Path, probe: BenchImage, precision: Precision | str = Precision.FP32,
                timeout_s: float = 120.0) -> Backend | Unavailable:
    """The ``cxr_detector`` ensemble at ``url``: bytes in (``triton``) or shm pixels in (``triton-shm``).

    One probe request decides availability, so an unreachable server or a host
    without shared memory access is reported instead of failing every timed call.
    """
    try:
        from cxr.client import DetectorClient, DetectorError, Pixels
    except ImportError as exc:
        return Unavailable(name, f"the client is not installed ({exc}); pip install 'cxr-triton[client]'")
    shm = BenchBackend(name) is BenchBackend.TRITON_SHM
    if shm and probe.pixels is None:
        return Unavailable(name, "the benchmark images could not be decoded to raw pixels for shared memory")
    try:
        client = DetectorClient(url=url, timeout_s=timeout_s, retries=0, use_shared_memory=shm)
    except DetectorError as exc:
        return Unavailable(name, f"cannot connect to {url}: {exc}")
    classes = list(ckpt.class_names)

    def payload(im: BenchImage):
        return Pixels(im.pixels, bits_stored=im.bits_stored) if shm else im.data

    def run(images: Sequence[BenchImage]) -> list[DetectionArrays]:
        return [to_detections(client.predict(payload(im)), classes) for im in images]

    try:
        run([probe])
    except DetectorError as exc:
        client.close()
        hint = " (shared memory needs the server on this host)" if shm else ""
        return Unavailable(name, f"probe request to {url} failed{hint}: {exc}")
    precision = BenchBackend(name).precision(served=precision)
    backend = Backend(name, run, precision, _mb(Path(repository) / Artifact.for_cpu(precision).path),
                      batches=(1,), detail=f"cxr_detector at {url}" + (" via system shared memory" if shm else ""))
    backend.closers.append(client.close)
    try:
        backend.triton_stats = TritonStats(url)
        backend.closers.append(backend.triton_stats.close)
    except Exception as exc:  # noqa: BLE001
        log.debug("no statistics client: %s", exc)
    return backend


def open_backends(ckpt, *, checkpoint: Path, repository: Path, url: str | None, probe: BenchImage | None,
                  names: Sequence[str] = BACKENDS, served_precision: Precision | str = Precision.FP32,
                  batches: tuple[int, ...] = (1, 4)) -> list[Backend | Unavailable]:
    """Open every backend of ``names`` in :data:`BACKENDS` order; the unusable ones as Unavailable."""
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise InvalidOptionError(f"unknown backend(s) {unknown}; choose from: {', '.join(BACKENDS)}")
    out: list[Backend | Unavailable] = []
    for name in BACKENDS:
        if name not in names:
            continue
        if name in IN_PROCESS:
            out.append(open_in_process(name, ckpt, checkpoint=checkpoint, repository=repository, batches=batches))
        elif url is None or probe is None:
            out.append(Unavailable(name, "no server: pass --url HOST:PORT or let cxr bench start the embedded one"))
        else:
            out.append(open_served(name, ckpt, url=url, repository=repository, probe=probe, precision=served_precision))
        b = out[-1]
        log.info("backend %s: %s", name, b.detail if isinstance(b, Backend) else f"unavailable ({b.reason})")
    return out
