"""The backends ``cxr bench`` compares, each as one end-to-end callable.

Every backend turns a list of studies into a list of
:class:`~cxr.postprocess.DetectionArrays` (boxes in ORIGINAL pixels, 1-based class ids)
and includes decoding, preprocessing and postprocessing, so the comparison is end
to end.  In process that is :class:`cxr.serving.runtime.Pipeline` around a detector
(PyTorch eager, ONNX Runtime FP32 / INT8, TensorRT FP16); served it is the
``cxr_detector`` ensemble through :class:`cxr.client.DetectorClient` with encoded
bytes (``triton``) or raw pixels through system shared memory (``triton-shm``).

Besides the contract's backends (:class:`~cxr.benchmarks.vocab.BenchBackend`) the bench measures
*runtime variants* (:class:`~cxr.benchmarks.vocab.RuntimeVariant`): other in-process runtimes of the same model --
PyTorch in bfloat16 (channels-last bf16 network, or plain autocast) and OpenVINO's CPU
plugin on the same ONNX files (FP32, bf16 inference precision, the INT8 QDQ model).
They are rows of the report, not serving options: one becomes a serving option only when
it is faster at equal parity (benchmarks/README.md, "Runtimes").

A backend that cannot run here is an :class:`Unavailable` with the reason (no GPU,
artifact not exported, openvino not installed, server unreachable), never an exception:
the report lists it.

Model-only time: in process a :class:`~cxr.benchmarks.stats.CallTimer` wraps the
detector; served, the ``detector`` model's compute time comes from Triton's own
statistics extension (``compute_infer`` ns / images), read before and after a point,
together with the per-step split of every model of the ensemble (:class:`TritonStats`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.benchmarks.stats import CallTimer
from cxr.benchmarks.vocab import BenchBackend, BenchStatus, RuntimeVariant
from cxr.contract import Artifact, Precision
from cxr.errors import InvalidOptionError
from cxr.postprocess import DetectionArrays

log = logging.getLogger(__name__)

# Report order: each contract backend, then the runtime variants that follow it.
BACKENDS = tuple(n for b in BenchBackend for n in (b.value, *(v.value for v in RuntimeVariant if v.follows is b)))
IN_PROCESS = tuple(n for n in BACKENDS if n in RuntimeVariant.values() or BenchBackend(n).in_process)
# Measured slower than plain FP32 eager (NCHW autocast; benchmarks/README.md): only when asked for.
OPT_IN = (RuntimeVariant.PYTORCH_AUTOCAST.value,)
# cxr serve's detector paths (cxr.serving.paths) and the in-process rows that run the same thing.
TWIN_OF_PATH = {"ort-fp32": "onnx", "ort-int8": "onnx-int8", "openvino-fp32": "openvino",
                "openvino-bf16": "openvino-bf16", "openvino-int8": "openvino-int8",
                "openvino-int8-bf16": "openvino-int8-bf16"}
DEFAULT_BACKENDS = tuple(n for n in BACKENDS if n not in OPT_IN)
# What "% of peak" divides by: the measured GEMM peak of the precision a backend computes in.
PEAK_OF_PRECISION = {"fp32": "fp32", "bf16": "bf16", "int8": "int8", "fp16": "cuda_fp16"}


def precision_of(name: str, served: Precision | str = Precision.FP32) -> str:
    """What backend ``name`` computes in: fp32 | bf16 | int8 | fp16."""
    if name in RuntimeVariant.values():
        return RuntimeVariant(name).precision
    return str(BenchBackend(name).precision(served=served))


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
    twin: str | None = None  # served: the in-process backend running what the server's detector runs
    timer: CallTimer | None = None
    triton_stats: TritonStats | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    status = BenchStatus.OK

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
    status: BenchStatus = BenchStatus.UNAVAILABLE

    def close(self) -> None:  # uniform with Backend
        pass


def _mb(path: Path) -> float | None:
    return path.stat().st_size / 1e6 if path.is_file() else None


def _pipeline_backend(name: str, detector, ckpt, *, size_mb: float | None, detail: str, batches: tuple[int, ...]) -> Backend:
    from cxr.serving.pipeline import Pipeline

    timer = CallTimer(detector)
    pipe = Pipeline(timer, ckpt.preprocess, ckpt.postprocess)

    def run(images: Sequence[BenchImage]) -> list[DetectionArrays]:
        return pipe([im.data for im in images], batch_size=max(len(images), 1))

    return Backend(name, run, precision_of(name), size_mb, batches=batches, detail=detail, timer=timer)


def open_variant(name: str, ckpt, *, checkpoint: Path, repository: Path, batches: tuple[int, ...]) -> Backend | Unavailable:
    """A :class:`~cxr.benchmarks.vocab.RuntimeVariant` behind the cxr pipeline."""
    from cxr.export.repository import artifact_path

    variant = RuntimeVariant(name)
    artifact, mode = variant.artifact, variant.mode
    if variant.engine == "torch":
        from cxr.export.torch_detector import TorchDetector

        return _pipeline_backend(name, TorchDetector(ckpt, mode=mode), ckpt, size_mb=_mb(Path(checkpoint)),
                                 detail=f"{checkpoint} (PyTorch {mode})", batches=batches)
    path = artifact_path(repository, artifact)
    if not path.is_file():
        return Unavailable(name, f"not exported: {path} is missing (run `cxr export {artifact} --checkpoint CKPT --repository {repository}`)")
    try:
        from cxr.serving.runtime import OpenVinoDetector

        detector = OpenVinoDetector(path, precision=mode)
    except ImportError as exc:
        return Unavailable(name, str(exc))
    except Exception as exc:  # noqa: BLE001 - an op OpenVINO cannot compile: report, do not crash
        return Unavailable(name, f"OpenVINO cannot load {path}: {type(exc).__name__}: {exc}")
    return _pipeline_backend(name, detector, ckpt, size_mb=_mb(path), detail=f"{path} (OpenVINO CPU, {mode})", batches=batches)


def open_in_process(name: str, ckpt, *, checkpoint: Path, repository: Path, batches: tuple[int, ...] = (1, 4)) -> Backend | Unavailable:
    """PyTorch eager, a runtime variant or an exported artifact of ``repository`` behind the cxr pipeline."""
    from cxr.export.repository import artifact_path

    if name in RuntimeVariant.values():
        return open_variant(name, ckpt, checkpoint=checkpoint, repository=repository, batches=batches)
    if BenchBackend(name) is BenchBackend.PYTORCH:
        from cxr.export.torch_detector import TorchDetector

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
            from cxr.serving.runtime import OrtDetector

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


# Triton's per-model statistics, in perf_analyzer's order: a request's server time is
# queue + compute input + compute infer + compute output + overhead (the rest of "success").
STAT_KEYS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def parse_statistics(stats: dict) -> dict[str, dict]:
    """``get_inference_statistics(as_json=True)`` -> ``{model: counters}`` (cumulative since load).

    counters: ``requests`` (successful requests), ``images`` (inference_count),
    ``executions``, ``<key>_ns`` for each of :data:`STAT_KEYS` (summed over requests:
    a request that shared a batch is charged the batch's compute time), and
    ``batch_infer_ns`` (compute infer summed over executions, from ``batch_stats``).
    proto3 JSON writes uint64 as strings and omits zeros.
    """
    out = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})
        c = {"requests": int(inf.get("success", {}).get("count", 0)), "images": int(m.get("inference_count", 0)),
             "executions": int(m.get("execution_count", 0)),
             "batch_infer_ns": sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in m.get("batch_stats", []))}
        c.update({f"{k}_ns": int(inf.get(k, {}).get("ns", 0)) for k in STAT_KEYS})
        out[m["name"]] = c
    return out


def step_split(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model, the mean ms per request of each stage between two :func:`parse_statistics` snapshots.

    ``{model: {"requests", "mean_batch", "request_ms", "queue_ms", "compute_input_ms", "compute_infer_ms",
    "compute_output_ms", "overhead_ms"}}``; a model without requests in between is left out.
    """
    out = {}
    for name, a in after.items():
        b = before.get(name, dict.fromkeys(a, 0))
        d = {k: a[k] - b.get(k, 0) for k in a}
        if d["requests"] <= 0:
            continue
        ms = {f"{k}_ms": d[f"{k}_ns"] / d["requests"] / 1e6 for k in STAT_KEYS}
        ms["request_ms"] = ms.pop("success_ms")
        parts = sum(ms[f"{k}_ms"] for k in STAT_KEYS[1:])
        out[name] = {"requests": d["requests"], "mean_batch": d["images"] / d["executions"] if d["executions"] else None,
                     **ms, "overhead_ms": max(ms["request_ms"] - parts, 0.0),
                     "infer_ms_per_image": d["batch_infer_ns"] / d["images"] / 1e6 if d["images"] and d["batch_infer_ns"] else None}
    return out


class TritonStats:
    """Model-only time of the served ``detector`` and the per-step split of the ensemble, from Triton's statistics."""

    def __init__(self, url: str, model: str = "detector") -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self._before: dict | None = None

    def snapshot(self) -> dict[str, dict]:
        # "" = every loaded model, in one call (the ensemble and its three steps).
        return parse_statistics(self.client.get_inference_statistics("", as_json=True, client_timeout=10))

    def begin(self) -> None:
        try:
            self._before = self.snapshot()
        except Exception as exc:  # noqa: BLE001 - statistics are a bonus, not a requirement
            log.debug("no Triton statistics: %s", exc)
            self._before = None

    def end(self) -> tuple[float | None, dict]:
        """(detector ms per image, {"steps": step_split, "detector_queue_ms" (per request), "detector_mean_batch"})."""
        if self._before is None:
            return None, {}
        try:
            after = self.snapshot()
        except Exception:  # noqa: BLE001
            return None, {}
        steps = step_split(self._before, after)
        det = steps.get(self.model)
        if det is None:
            return None, {"steps": steps}
        extra = {"steps": steps, "detector_queue_ms": det["queue_ms"],
                 "detector_mean_batch": det["mean_batch"]}
        model_ms = det["infer_ms_per_image"]
        if model_ms is None:  # no batch_stats: at batch 1 the per-request figure is the per-image one
            model_ms = det["compute_infer_ms"] / (det["mean_batch"] or 1.0)
        return model_ms, extra

    def close(self) -> None:
        self.client.close()


def open_served(name: str, ckpt, *, url: str, repository: Path, probe: BenchImage, precision: Precision | str = Precision.FP32,
                timeout_s: float = 120.0, choice=None) -> Backend | Unavailable:
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
    artifact = Artifact.for_cpu(precision)
    # The in-process row of the path the server runs (cxr serve's choice; for --url the report takes ORT at its precision).
    twin = TWIN_OF_PATH[choice.path.name] if choice is not None else None
    backend = Backend(name, run, str(precision), _mb(Path(repository) / artifact.path), batches=(1,), twin=twin,
                      detail=f"cxr_detector at {url}" + (" via system shared memory" if shm else "")
                      + (f"; path {choice.path.name}: {choice.reason}" if choice is not None else ""))
    backend.closers.append(client.close)
    try:
        backend.triton_stats = TritonStats(url)
        backend.closers.append(backend.triton_stats.close)
    except Exception as exc:  # noqa: BLE001
        log.debug("no statistics client: %s", exc)
    return backend


def open_backends(ckpt, *, checkpoint: Path, repository: Path, url: str | None, probe: BenchImage | None,
                  names: Sequence[str] = DEFAULT_BACKENDS, served_precision: Precision | str = Precision.FP32,
                  batches: tuple[int, ...] = (1, 4), served_choice=None) -> list[Backend | Unavailable]:
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
            out.append(open_served(name, ckpt, url=url, repository=repository, probe=probe, precision=served_precision,
                                   choice=served_choice))
        b = out[-1]
        log.info("backend %s: %s", name, b.detail if isinstance(b, Backend) else f"unavailable ({b.reason})")
    return out
