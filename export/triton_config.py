"""``config.pbtxt`` files of the Triton model repository, rendered from model metadata.

One ensemble, ``cxr_detector``, is the only model clients call::

    IMAGE_BYTES ──► preprocess ──IMAGES, RECORD──► detector ──boxes, scores, labels, valid──► postprocess ──► BOXES, BOXES_MM, SCORES, LABELS, MODEL_VERSION
    (or PIXELS)      (python)                     (python/ORT | onnxruntime_onnx | tensorrt_plan)  (python)

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
    DETECTOR_INPUT, ENSEMBLE, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, MAX_BATCH, RAW_OUTPUTS, RECORD, Artifact, ConfigKey, Precision,
    ServeTarget, Step, Tensor, detector_input, detector_outputs, preprocess_outputs,
)

# Long enough for concurrent requests to meet in one batch, short next to a
# ~100 ms CPU inference.
QUEUE_DELAY_US = {Step.PREPROCESS: 500, Step.DETECTOR: 2000, Step.POSTPROCESS: 500}
# Tensors inside the ensemble: the preprocess outputs and the detector's raw outputs.
_IMAGES, _RECORD = DETECTOR_INPUT, "record"
_RAW = {name: f"raw_{name}" for name in RAW_OUTPUTS}


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


def detector_io(size: int, channels: int, candidates: int) -> tuple[str, str]:
    return _io("input", [detector_input(size, channels)]), _io("output", detector_outputs(candidates))


def _instances(kind: str) -> str:
    return f"instance_group [ {{ count: 1 kind: {kind} }} ]"


def render(meta: dict, *, cpu_threads: int = 0) -> dict[str, str]:
    """All config files of the repository (relative path -> text) for ``meta``.

    ``meta`` is :meth:`cxr.training.checkpoint.Checkpoint.metadata` (or the
    repository's ``cxr-metadata.json``).  cpu_threads: ORT intra-op threads for the
    CPU detector (0 = all cores).
    """
    pre, post = meta["preprocess"], meta["postprocess"]
    size, channels = int(pre["size"]), int(pre["channels"])
    candidates = int(meta["model"]["candidates"])
    version = meta.get(ConfigKey.MODEL_VERSION, "unexported")
    classes = meta[ConfigKey.CLASS_NAMES]
    files: dict[str, str] = {}

    files[f"{Step.PREPROCESS}/config.pbtxt"] = "\n".join([
        _header(Step.PREPROCESS, "python", QUEUE_DELAY_US[Step.PREPROCESS]),
        _io("input", ENSEMBLE_INPUTS),
        _io("output", preprocess_outputs(size, channels)),
        _instances("KIND_CPU"),
        _params(**{ConfigKey.PREPROCESS: pre, ConfigKey.MODEL_VERSION: version}),
    ]) + "\n"

    det_in, det_out = detector_io(size, channels, candidates)
    stamped = _params(**{ConfigKey.MODEL_VERSION: version, ConfigKey.CLASS_NAMES: classes})
    files[f"{Step.DETECTOR}/config.pbtxt"] = "\n".join([
        _header(Step.DETECTOR, "python", QUEUE_DELAY_US[Step.DETECTOR]), det_in, det_out, _instances("KIND_CPU"), stamped,
        _params(**{ConfigKey.MODEL_FILE: Artifact.ONNX.file, ConfigKey.INT8_MODEL_FILE: Artifact.ONNX_INT8.file,
                   ConfigKey.PRECISION: Precision.FP32.value, ConfigKey.INTRA_OP_THREADS: str(cpu_threads)}),
    ]) + "\n"
    for target in (ServeTarget.GPU_ONNX, ServeTarget.GPU_TRT):
        artifact = target.artifact
        files[f"{Step.DETECTOR}/configs/{target.config_name}.pbtxt"] = "\n".join([
            _header(Step.DETECTOR, artifact.platform, QUEUE_DELAY_US[Step.DETECTOR]),
            f'default_model_filename: "{artifact.file}"', det_in, det_out, _instances("KIND_GPU"), stamped,
        ]) + "\n"

    files[f"{Step.POSTPROCESS}/config.pbtxt"] = "\n".join([
        _header(Step.POSTPROCESS, "python", QUEUE_DELAY_US[Step.POSTPROCESS]),
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
    return files


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
    return written
