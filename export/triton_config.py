"""``config.pbtxt`` files of the Triton model repository, rendered from model metadata.

One ensemble, ``cxr_detector``, is the model clients call for detections::

    IMAGE_BYTES ──► preprocess ──IMAGES, RECORD──► detector ──boxes, scores, labels, valid──► postprocess ──► BOXES, BOXES_MM, SCORES, LABELS, MODEL_VERSION
    (or PIXELS)      (python)                     (python/ORT | onnxruntime_onnx | tensorrt_plan)  (python)

``cxr_explain`` (:func:`explain_config`) is the one they call for detections with a saliency
map each: a Python model that sends masked copies to ``detector`` (BLS).  A Mask R-CNN's
repository adds ``cxr_segment`` (:func:`segment_configs`): the same preprocess and detector,
then ``segment_postprocess`` (detections plus masks in the wire form of ``cxr.contract``).

``detector`` has one ``config.pbtxt`` per target: the default is the embedded CPU
server's Python-backend model running ONNX Runtime; ``configs/gpu-onnx.pbtxt`` and
``configs/gpu-trt.pbtxt`` are selected with ``tritonserver --model-config-name``
(``cxr serve --target``).  Metadata stamped by ``cxr export`` goes into each
model's ``parameters`` (class list, input size, preprocessing, model version).
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr.contract import (
    DETECTOR_INPUT, ENSEMBLE, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, EXPLAIN, EXPLAIN_MAX_BATCH, EXPLAIN_OUTPUTS, MASK_SIZE,
    MAX_BATCH, RAW_OUTPUTS, RECORD, SEGMENT, SEGMENT_OUTPUTS, SEGMENT_POSTPROCESS, SEGMENT_RAW_OUTPUTS, Artifact, ConfigKey,
    Precision, DetectorRuntime, ServeTarget, Step, Tensor, detector_input, detector_outputs, preprocess_outputs,
)
from cxr.saliency import SaliencyConfig

# No waiting for company: the dynamic batcher still batches every request that queued
# while the instance was busy (what load brings), but a lone request never waits.  The
# former 2000 / 500 / 500 us made every request at concurrency 1 wait ~3.5 ms in the three
# queues and bought no throughput at concurrency 4 (benchmarks/README.md, "Serving overhead").
QUEUE_DELAY_US = {Step.PREPROCESS: 0, Step.DETECTOR: 0, Step.POSTPROCESS: 0}
# The NGC GPU detector configs keep their 2 ms: not measured on a GPU yet (no GPU here).
GPU_QUEUE_DELAY_US = 2000
# Detector parameter: ONNX Runtime's intra-op threads busy-wait between kernels ("1", its
# default) or sleep ("0"); see cxr.serving.runtime.ort_session.  The served default is "0":
# spinning threads take the cores the preprocess/postprocess stubs and gRPC need.
SERVED_SPINNING = False
# cxr_explain: how long an explanation may wait behind others for the explainer (one
# instance: explanations run one at a time, each fills the detector's batches).  A request's
# own timeout shortens it (allow_timeout_override; Triton 2.51 honours a request's timeout in
# the queue only when the model has a default one), so a client that gave up is never started.
EXPLAIN_QUEUE_TIMEOUT_US = 600_000_000
# Tensors inside the ensemble: the preprocess outputs and the detector's raw outputs.
_IMAGES, _RECORD = DETECTOR_INPUT, "record"
_RAW = {name: f"raw_{name}" for name in RAW_OUTPUTS}
_SEGMENT_RAW = {name: f"raw_{name}" for name in SEGMENT_RAW_OUTPUTS}
# Written only for a Mask R-CNN (meta["task"] == "segment"); removed from a repository that no longer holds one.
SEGMENT_CONFIGS = (f"{SEGMENT}/config.pbtxt", f"{SEGMENT_POSTPROCESS}/config.pbtxt")


def is_segment(meta: dict) -> bool:
    """A Mask R-CNN's metadata: its graph has the masks output and it gets ``cxr_segment``."""
    return meta.get("task") == "segment"


def _params(**values) -> str:
    items = []
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        items.append(f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(text)} }} }}')
    return "\n".join(items)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + "".join(f"{d}, " for d in dims).removesuffix(", ") + (" ]" if dims else "]")


def _io(kind: str, tensors: tuple[Tensor, ...] | list[Tensor]) -> str:
    rows = []
    for t in tensors:
        extra = " optional: true" if t.optional else ""
        if t.reshape is not None:
            extra += f" reshape: {{ shape: {_dims(t.reshape)} }}"
        rows.append(f'  {{ name: "{t.name}" data_type: {t.dtype} dims: {_dims(t.dims)}{extra} }}')
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def _header(name: str, backend: str, queue: int | None) -> str:
    key = "backend" if backend == "python" else "platform"  # ensembles and native runtimes are platforms
    lines = [f'name: "{name}"', f'{key}: "{backend}"', f"max_batch_size: {MAX_BATCH}"]
    if queue is not None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue} }}")
    return "\n".join(lines)


def _delays(queue_delay_us) -> dict:
    delays = dict(QUEUE_DELAY_US)
    delays.update({Step(k): int(v) for k, v in (queue_delay_us or {}).items()})
    return delays


def detector_io(size: int, channels: int, candidates: int, mask_size: int | None = None) -> tuple[str, str]:
    return _io("input", [detector_input(size, channels)]), _io("output", detector_outputs(candidates, mask_size=mask_size))


def _instances(kind: str) -> str:
    return f"instance_group [ {{ count: 1 kind: {kind} }} ]"


def render(meta: dict, *, cpu_threads: int = 0, queue_delay_us: dict | None = None,
           spinning: bool | None = SERVED_SPINNING,
           runtime: DetectorRuntime | str = DetectorRuntime.ONNXRUNTIME) -> dict[str, str]:
    """All config files of the repository (relative path -> text) for ``meta``.

    ``meta`` is :meth:`cxr.training.checkpoint.Checkpoint.metadata` (or the
    repository's ``cxr-metadata.json``).  cpu_threads: ORT intra-op threads for the
    CPU detector (0 = all cores).  queue_delay_us: per step, over :data:`QUEUE_DELAY_US`
    (the levers ``cxr bench`` measures; benchmarks/README.md).  spinning: the CPU
    detector's :data:`ConfigKey.INTRA_OP_SPINNING` parameter (None: not written, ORT's default).
    runtime: the CPU detector's :data:`ConfigKey.RUNTIME` (a :class:`~cxr.contract.DetectorRuntime`):
    ONNX Runtime (the default) or OpenVINO's CPU plugin on the same ONNX files (needs the
    ``openvino`` package in the server's environment; benchmarks/README.md, "Runtimes").
    """
    runtime = DetectorRuntime(runtime)  # an unknown one: InvalidOptionError listing the runtimes
    delays = _delays(queue_delay_us)
    pre, post = meta["preprocess"], meta["postprocess"]
    size, channels = int(pre["size"]), int(pre["channels"])
    candidates = int(meta["model"]["candidates"])
    version = meta.get(ConfigKey.MODEL_VERSION, "unexported")
    classes = meta[ConfigKey.CLASS_NAMES]
    files: dict[str, str] = {}

    files[f"{Step.PREPROCESS}/config.pbtxt"] = "\n".join([
        _header(Step.PREPROCESS, "python", delays[Step.PREPROCESS]),
        _io("input", ENSEMBLE_INPUTS),
        _io("output", preprocess_outputs(size, channels)),
        _instances("KIND_CPU"),
        _params(**{ConfigKey.PREPROCESS: pre, ConfigKey.MODEL_VERSION: version}),
    ]) + "\n"

    det_in, det_out = detector_io(size, channels, candidates, MASK_SIZE if is_segment(meta) else None)
    stamped = _params(**{ConfigKey.MODEL_VERSION: version, ConfigKey.CLASS_NAMES: classes})
    files[f"{Step.DETECTOR}/config.pbtxt"] = "\n".join([
        _header(Step.DETECTOR, "python", delays[Step.DETECTOR]), det_in, det_out, _instances("KIND_CPU"), stamped,
        _params(**{ConfigKey.MODEL_FILE: Artifact.ONNX.file, ConfigKey.INT8_MODEL_FILE: Artifact.ONNX_INT8.file,
                   ConfigKey.PRECISION: Precision.FP32.value, ConfigKey.INTRA_OP_THREADS: str(cpu_threads),
                   **({} if spinning is None else {ConfigKey.INTRA_OP_SPINNING: "1" if spinning else "0"}),
                   ConfigKey.RUNTIME: runtime.value}),
    ]) + "\n"
    for target in (ServeTarget.GPU_ONNX, ServeTarget.GPU_TRT):
        artifact = target.artifact
        files[f"{Step.DETECTOR}/configs/{target.config_name}.pbtxt"] = "\n".join([
            _header(Step.DETECTOR, artifact.platform, GPU_QUEUE_DELAY_US),
            f'default_model_filename: "{artifact.file}"', det_in, det_out, _instances("KIND_GPU"), stamped,
        ]) + "\n"

    files[f"{Step.POSTPROCESS}/config.pbtxt"] = "\n".join([
        _header(Step.POSTPROCESS, "python", delays[Step.POSTPROCESS]),
        _io("input", [*detector_outputs(candidates, for_postprocess=True), RECORD]),
        _io("output", ENSEMBLE_OUTPUTS),
        _instances("KIND_CPU"),
        _params(**{ConfigKey.POSTPROCESS: post, ConfigKey.CLASS_NAMES: classes, ConfigKey.MODEL_VERSION: version}),
    ]) + "\n"

    images, record = preprocess_outputs(size, channels)
    files[f"{ENSEMBLE}/config.pbtxt"] = "\n".join([
        _header(ENSEMBLE, "ensemble", None),
        _io("input", ENSEMBLE_INPUTS),
        _io("output", ENSEMBLE_OUTPUTS),
        "ensemble_scheduling {",
        _step(Step.PREPROCESS, {t.name: t.name for t in ENSEMBLE_INPUTS}, {images.name: _IMAGES, record.name: _RECORD}),
        _step(Step.DETECTOR, {detector_input(size, channels).name: _IMAGES}, _RAW),
        _step(Step.POSTPROCESS, {**_RAW, RECORD.name: _RECORD}, {t.name: t.name for t in ENSEMBLE_OUTPUTS}),
        "}",
        _params(**{ConfigKey.MODEL_VERSION: version, ConfigKey.CLASS_NAMES: classes}),
    ]) + "\n"
    files[f"{EXPLAIN}/config.pbtxt"] = explain_config(meta)
    if is_segment(meta):
        files.update(segment_configs(meta, candidates, delays[Step.POSTPROCESS]))
    return files


def segment_configs(meta: dict, candidates: int, queue: int) -> dict[str, str]:
    """A Mask R-CNN's ``cxr_segment`` ensemble (preprocess -> detector -> segment_postprocess) and
    its last step; the two first steps are ``cxr_detector``'s own models."""
    size, channels = int(meta["preprocess"]["size"]), int(meta["preprocess"]["channels"])
    version = meta.get(ConfigKey.MODEL_VERSION, "unexported")
    classes = meta[ConfigKey.CLASS_NAMES]
    post = "\n".join([
        _header(SEGMENT_POSTPROCESS, "python", queue),
        _io("input", [*detector_outputs(candidates, for_postprocess=True, mask_size=MASK_SIZE), RECORD]),
        _io("output", SEGMENT_OUTPUTS),
        _instances("KIND_CPU"),
        _params(**{ConfigKey.POSTPROCESS: meta["postprocess"], ConfigKey.CLASS_NAMES: classes, ConfigKey.MODEL_VERSION: version}),
    ]) + "\n"
    images, record = preprocess_outputs(size, channels)
    ensemble = "\n".join([
        _header(SEGMENT, "ensemble", None),
        _io("input", ENSEMBLE_INPUTS),
        _io("output", SEGMENT_OUTPUTS),
        "ensemble_scheduling {",
        _step(Step.PREPROCESS, {t.name: t.name for t in ENSEMBLE_INPUTS}, {images.name: _IMAGES, record.name: _RECORD}),
        _step(Step.DETECTOR, {detector_input(size, channels).name: _IMAGES}, _SEGMENT_RAW),
        _step(SEGMENT_POSTPROCESS, {**_SEGMENT_RAW, RECORD.name: _RECORD}, {t.name: t.name for t in SEGMENT_OUTPUTS}),
        "}",
        _params(**{ConfigKey.MODEL_VERSION: version, ConfigKey.CLASS_NAMES: classes}),
    ]) + "\n"
    return {SEGMENT_CONFIGS[0]: ensemble, SEGMENT_CONFIGS[1]: post}


def explain_config(meta: dict) -> str:
    """``cxr_explain``: a Python model that BLS-calls ``detector`` (not an ensemble: see cxr.contract).

    Its defaults are the detection ones plus ``meta["saliency"]`` (a
    :class:`~cxr.saliency.SaliencyConfig`; the dataclass defaults until a model carries its own).
    """
    saliency = SaliencyConfig.from_dict(meta.get(ConfigKey.SALIENCY) or {}).to_dict()
    return "\n".join([
        f'name: "{EXPLAIN}"', 'backend: "python"', f"max_batch_size: {EXPLAIN_MAX_BATCH}",
        "dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { "
        f"default_timeout_microseconds: {EXPLAIN_QUEUE_TIMEOUT_US} allow_timeout_override: true }} }}",
        _io("input", ENSEMBLE_INPUTS),
        _io("output", EXPLAIN_OUTPUTS),
        _instances("KIND_CPU"),
        _params(**{ConfigKey.PREPROCESS: meta["preprocess"], ConfigKey.POSTPROCESS: meta["postprocess"],
                   ConfigKey.SALIENCY: saliency, ConfigKey.CLASS_NAMES: meta[ConfigKey.CLASS_NAMES],
                   ConfigKey.MODEL_VERSION: meta.get(ConfigKey.MODEL_VERSION, "unexported")}),
    ]) + "\n"


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'    input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'    output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return "  step {\n" + f'    model_name: "{model}"\n    model_version: -1\n' + "\n".join(maps) + "\n  }"


def write_configs(repository: str | Path, meta: dict, **kwargs) -> list[Path]:
    """(Re)write every config.pbtxt of ``repository`` for ``meta``; returns the paths."""
    repository = Path(repository)
    written = []
    for rel, text in render(meta, **kwargs).items():
        path = repository / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    (repository / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version folder
    if is_segment(meta):
        (repository / SEGMENT / "1").mkdir(parents=True, exist_ok=True)
    else:  # a detector replaced a Mask R-CNN: no cxr_segment over a graph without masks
        for rel in SEGMENT_CONFIGS:
            (repository / rel).unlink(missing_ok=True)
    return written
