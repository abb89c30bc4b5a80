"""Which runtime x precision the embedded CPU server's detector runs: the fastest one that passed parity.

A *path* is one way the Python-backend ``detector`` can run the exported ONNX files in process:
ONNX Runtime or OpenVINO's CPU plugin, FP32, BF16 (OpenVINO's inference precision hint on the FP32
file; needs AVX512-BF16 or AMX), INT8 (the QDQ file ``cxr export onnx-int8`` placed) or, on
OpenVINO, INT8-BF16 (that file with its unquantized layers at BF16 instead of FP32).
``cxr export paths`` checks each path available on the machine against PyTorch on held-out
studies (the detector's parity check), times it and writes the verdicts to :data:`PATHS_FILE`
beside the ONNX files; ``cxr serve`` (``--path auto``, the default) reads them and serves
:func:`choose`'s answer: the fastest path that passed, timed on a CPU of the same ISA as the
one it serves from (otherwise it times the passed paths again at start-up), ONNX Runtime FP32
when nothing else passed -- never a faster wrong one.  A user can pin a path (``--path NAME``).
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.contract import Artifact
from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.machine import line_cap

PATHS_FILE = "paths.json"  # in detector/<version>/, beside model.onnx
RUNTIME_ENV = "CXR_DETECTOR_RUNTIME"  # onnxruntime | openvino, set by `cxr serve` with CXR_DETECTOR_PRECISION
AUTO = "auto"


@dataclass(frozen=True)
class ServedPath:
    name: str  # what --path takes
    runtime: str  # cxr.contract.DetectorRuntime's value
    precision: str  # fp32 | bf16 | int8

    @property
    def file(self) -> str:
        """The ONNX file it runs, in detector/<version>/."""
        return Artifact.for_cpu(self.precision).file

    def available(self, folder: Path, isa: str) -> str | None:
        """Why this path cannot run here, or None when it can."""
        if not (Path(folder) / self.file).is_file():
            return f"no {self.file} (cxr export {Artifact.for_cpu(self.precision)})"
        if "bf16" in self.precision and "BF16 yes" not in isa:
            return "the CPU has no BF16 instructions (AVX512-BF16 or AMX)"
        cap = line_cap(isa)  # ONEDNN_MAX_CPU_ISA, as cxr.machine.isa_line names it
        if "bf16" in self.precision and cap and not any(k in cap for k in ("BF16", "AMX", "AVX10")):
            return f"oneDNN is capped at {cap} (ONEDNN_MAX_CPU_ISA): no BF16 kernels"
        if self.runtime == "openvino" and importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install 'cxr-triton[openvino]')"
        return None

    def detector(self, folder: Path, *, threads: int | None = None, profile: bool = False):
        """The in-process callable that runs this path (what the served detector builds); ``profile``:
        OpenVINO's per-layer counters on (:meth:`~cxr.serving.runtime.OpenVinoDetector.layer_times`)."""
        from cxr.serving.runtime import OpenVinoDetector, OrtDetector, openvino_precision

        path = Path(folder) / self.file
        if self.runtime == "openvino":
            return OpenVinoDetector(path, threads=threads, precision=openvino_precision(self.precision), profile=profile)
        if profile:
            raise InvalidOptionError(f"{self.name}: per-layer times are read from OpenVINO paths only")
        return OrtDetector(path, threads=threads)


PATHS = (
    ServedPath("ort-fp32", "onnxruntime", "fp32"),  # the fallback: always allowed
    ServedPath("ort-int8", "onnxruntime", "int8"),
    ServedPath("openvino-fp32", "openvino", "fp32"),
    ServedPath("openvino-bf16", "openvino", "bf16"),
    ServedPath("openvino-int8", "openvino", "int8"),
    # INT8 where quantized, BF16 (not FP32) for the rest: on AMX both run on its tiles
    ServedPath("openvino-int8-bf16", "openvino", "int8-bf16"),
)
BY_NAME = {p.name: p for p in PATHS}
FALLBACK = PATHS[0]


def path_named(name: str) -> ServedPath:
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidOptionError(f"unknown detector path {name!r}; choose {AUTO} or one of: {', '.join(BY_NAME)}") from None


def time_path(detector, inputs: list[np.ndarray], *, warmup: int = 3, rounds: int = 15) -> float:
    """Median milliseconds of one call at batch 1, cycling over ``inputs`` ([1, C, S, S] each)."""
    for i in range(warmup):
        detector(inputs[i % len(inputs)])
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        detector(inputs[i % len(inputs)])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def random_inputs(folder: Path, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``count`` model inputs ``[1, C, S, S]`` of the shape ``folder``'s FP32 ONNX file takes (standard-normal
    pixels: what a preprocessed film's values look like), for timing paths where no studies are at hand."""
    from cxr.serving.runtime import ort_session

    shape = ort_session(Path(folder) / FALLBACK.file, threads=1, optimization="none").get_inputs()[0].shape
    c, size = int(shape[1]), int(shape[2])
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, c, size, size)).astype(np.float32) for _ in range(count)]


def read_record(folder: Path) -> dict | None:
    """The verdicts ``cxr export paths`` wrote into ``folder``, or None when it never ran there."""
    path = Path(folder) / PATHS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("paths"), dict):
        raise InvalidFileError(f"{path} is not a paths record written by `cxr export paths`: delete it and "
                               "run that command again")
    return record


@dataclass(frozen=True)
class Choice:
    path: ServedPath
    reason: str
    p50_ms: float | None = None


def choose(folder: Path, isa: str, *, retime=None) -> Choice:
    """The path ``cxr serve --path auto`` serves from ``folder`` on a CPU whose ISA line is ``isa``.

    Candidates are the paths whose parity passed in the record and that can run here; their
    timings count when they were taken on the same ISA line, otherwise ``retime(path) -> ms``
    (when given) times them now.  No record, or nothing faster that passed: ONNX Runtime FP32."""
    record = read_record(folder)
    if record is None:
        return Choice(FALLBACK, f"no {PATHS_FILE}: `cxr export paths` has not checked the other paths")
    rows = record["paths"]
    passed = [BY_NAME[n] for n, r in rows.items() if n in BY_NAME and (r.get("parity") or {}).get("passed")
              and BY_NAME[n].available(folder, isa) is None]
    if not passed:
        return Choice(FALLBACK, "no path passed parity in " + PATHS_FILE)
    same = record.get("isa") == isa
    if same:
        timed = {p: rows[p.name].get("p50_ms") for p in passed}
    elif retime is not None:
        timed = {p: retime(p) for p in passed}
    else:
        return Choice(FALLBACK, f"{PATHS_FILE} was timed on another CPU ({record.get('isa')})")
    timed = {p: ms for p, ms in timed.items() if ms is not None}
    if not timed:
        return Choice(FALLBACK, "no timing for the paths that passed")
    best = min(timed, key=timed.get)
    others = ", ".join(f"{p.name} {ms:.1f} ms" for p, ms in sorted(timed.items(), key=lambda kv: kv[1]) if p is not best)
    where = "timed by `cxr export paths` on this ISA" if same else "timed now (the record is from another CPU)"
    delta = (rows[best.name].get("parity") or {}).get("map_delta")
    parity = f"parity passed (mAP delta {delta:+.4f})" if delta is not None else "parity passed"
    return Choice(best, f"fastest that passed parity: {timed[best]:.1f} ms p50 at batch 1 ({where}); {parity}"
                        + (f"; others: {others}" if others else ""), timed[best])
