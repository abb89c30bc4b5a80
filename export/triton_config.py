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

ENSEMBLE = "cxr_detector"
MAX_BATCH = 8
# Long enough for concurrent requests to meet in one batch, short next to a
# ~100 ms CPU inference.
QUEUE_DELAY_US = {"preprocess": 500, "detector": 2000, "postprocess": 500}


def _params(**values) -> str:
    items = []
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        items.append(f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(text)} }} }}')
    return "\n".join(items)


def _io(kind: str, tensors: list[tuple]) -> str:
    rows = []
    for t in tensors:
        name, dtype, dims = t[:3]
        extra = "".join(f" {x}" for x in t[3:])
        rows.append(f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}')
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def _header(name: str, backend: str, queue: int | None) -> str:
    key = "platform" if backend in ("ensemble", "onnxruntime_onnx", "tensorrt_plan") else "backend"
    lines = [f'name: "{name}"', f'{key}: "{backend}"', f"max_batch_size: {MAX_BATCH}"]
    if queue is not None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue} }}")
    return "\n".join(lines)


def detector_io(size: int, channels: int, candidates: int) -> tuple[str, str]:
    inputs = _io("input", [("images", "TYPE_FP32", [channels, size, size])])
    outputs = _io("output", [
        ("boxes", "TYPE_FP32", [candidates, 4]),
        ("scores", "TYPE_FP32", [candidates]),
        ("labels", "TYPE_INT64", [candidates]),
        ("valid", "TYPE_INT64", [1], "reshape: { shape: [ ] }"),  # the graph's [B] as Triton's [B, 1]
    ])
    return inputs, outputs


def render(meta: dict, *, cpu_threads: int = 0) -> dict[str, str]:
    """All config files of the repository (relative path -> text) for ``meta``.

    ``meta`` is :meth:`cxr.training.checkpoint.Checkpoint.metadata` (or the
    repository's ``cxr-metadata.json``).  cpu_threads: ORT intra-op threads for the
    CPU detector (0 = all cores).
    """
    pre, post = meta["preprocess"], meta["postprocess"]
    size, channels = int(pre["size"]), int(pre["channels"])
    candidates = int(meta["model"]["candidates"])
    version = meta.get("model_version", "unexported")
    files: dict[str, str] = {}

    files["preprocess/config.pbtxt"] = "\n".join([
        _header("preprocess", "python", QUEUE_DELAY_US["preprocess"]),
        _io("input", [
            ("IMAGE_BYTES", "TYPE_STRING", [1], "optional: true"),
            ("PIXELS", "TYPE_UINT16", [-1, -1], "optional: true"),
        ]),
        _io("output", [("IMAGES", "TYPE_FP32", [channels, size, size]), ("RECORD", "TYPE_FP32", [8])]),
        'instance_group [ { count: 1 kind: KIND_CPU } ]',
        _params(preprocess=pre, model_version=version),
    ]) + "\n"

    det_in, det_out = detector_io(size, channels, candidates)
    common_det = [det_in, det_out, _params(model_version=version, class_names=meta["class_names"])]
    files["detector/config.pbtxt"] = "\n".join([
        _header("detector", "python", QUEUE_DELAY_US["detector"]), *common_det[:2],
        'instance_group [ { count: 1 kind: KIND_CPU } ]',
        common_det[2],
        _params(model_file="model.onnx", int8_model_file="model.int8.onnx", precision="fp32", intra_op_threads=str(cpu_threads)),
    ]) + "\n"
    for target, platform, filename in (("gpu-onnx", "onnxruntime_onnx", "model.onnx"), ("gpu-trt", "tensorrt_plan", "model.plan")):
        files[f"detector/configs/{target}.pbtxt"] = "\n".join([
            _header("detector", platform, QUEUE_DELAY_US["detector"]), f'default_model_filename: "{filename}"', *common_det[:2],
            'instance_group [ { count: 1 kind: KIND_GPU } ]', common_det[2],
        ]) + "\n"

    files["postprocess/config.pbtxt"] = "\n".join([
        _header("postprocess", "python", QUEUE_DELAY_US["postprocess"]),
        _io("input", [
            ("boxes", "TYPE_FP32", [candidates, 4]), ("scores", "TYPE_FP32", [candidates]),
            ("labels", "TYPE_INT64", [candidates]), ("valid", "TYPE_INT64", [1]), ("RECORD", "TYPE_FP32", [8]),
        ]),
        _io("output", [
            ("BOXES", "TYPE_FP32", [-1, 4]), ("BOXES_MM", "TYPE_FP32", [-1, 4]), ("SCORES", "TYPE_FP32", [-1]),
            ("LABELS", "TYPE_STRING", [-1]), ("MODEL_VERSION", "TYPE_STRING", [1]),
        ]),
        'instance_group [ { count: 1 kind: KIND_CPU } ]',
        _params(postprocess=post, class_names=meta["class_names"], model_version=version),
    ]) + "\n"

    files[f"{ENSEMBLE}/config.pbtxt"] = "\n".join([
        _header(ENSEMBLE, "ensemble", None),
        _io("input", [("IMAGE_BYTES", "TYPE_STRING", [1], "optional: true"), ("PIXELS", "TYPE_UINT16", [-1, -1], "optional: true")]),
        _io("output", [
            ("BOXES", "TYPE_FP32", [-1, 4]), ("BOXES_MM", "TYPE_FP32", [-1, 4]), ("SCORES", "TYPE_FP32", [-1]),
            ("LABELS", "TYPE_STRING", [-1]), ("MODEL_VERSION", "TYPE_STRING", [1]),
        ]),
        "ensemble_scheduling {",
        _step("preprocess", {"IMAGE_BYTES": "IMAGE_BYTES", "PIXELS": "PIXELS"}, {"IMAGES": "images", "RECORD": "record"}),
        _step("detector", {"images": "images"}, {k: f"raw_{k}" for k in ("boxes", "scores", "labels", "valid")}),
        _step("postprocess", {**{k: f"raw_{k}" for k in ("boxes", "scores", "labels", "valid")}, "RECORD": "record"},
              {k: k for k in ("BOXES", "BOXES_MM", "SCORES", "LABELS", "MODEL_VERSION")}),
        "}",
        _params(model_version=version, class_names=meta["class_names"]),
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
