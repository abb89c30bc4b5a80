"""Checkpoint -> ONNX (FP32) with a dynamic batch, checked and simplified.

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter fails on
torchvision detection models (pytorch/vision #9306, #9462).  The graph is
:class:`cxr.export.graph.ServingGraph`; the checkpoint's metadata (class list,
input size, preprocessing, model version) is stamped into the model's
``metadata_props`` under the key ``cxr``.  A segment-task checkpoint (Mask R-CNN) exports the
same graph with a fifth output, ``masks`` (:data:`cxr.contract.SEGMENT_RAW_OUTPUTS`).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import torch

from cxr.contract import DETECTOR_INPUT as INPUT_NAME
from cxr.contract import raw_outputs
from cxr.export.graph import OPSET, ServingGraph

log = logging.getLogger(__name__)
METADATA_KEY = "cxr"


def export_onnx(ckpt, path: str | Path, *, opset: int = OPSET, simplify: bool = True, export_batch: int = 2) -> Path:
    """Write ``ckpt`` (a :class:`cxr.training.checkpoint.Checkpoint`) as an ONNX model.

    ``export_batch`` is the batch traced at export; it is > 1 on purpose, so that a
    graph that had baked the batch size in would fail the batch tests.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ServingGraph.from_checkpoint(ckpt)
    dummy = torch.zeros(export_batch, ckpt.preprocess.channels, graph.size, graph.size)
    output_names = list(raw_outputs(graph.has_masks))  # a Mask R-CNN adds "masks" [B, K, 28, 28]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints in the graph are expected here
        torch.onnx.export(
            graph, (dummy,), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=output_names,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}},
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model, full_check=True)
    if simplify:
        model = _simplify(model)
        onnx.checker.check_model(model, full_check=True)
    stamp_metadata(model, ckpt.metadata() | {"precision": "fp32", "opset": opset})
    onnx.save(model, path)
    log.info("wrote %s (%.1f MB, opset %d)", path, path.stat().st_size / 1e6, opset)
    return path


def _simplify(model):
    try:
        import onnxslim
    except ImportError:  # optional: the unsimplified graph is correct, only larger
        log.warning("onnxslim is not installed; writing the unsimplified graph")
        return model
    return onnxslim.slim(model)


def stamp_metadata(model, meta: dict) -> None:
    """Put ``meta`` (JSON) into the ONNX model's ``metadata_props``."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)


def read_metadata(path: str | Path) -> dict:
    """The ``cxr`` metadata of an exported ONNX file (empty dict if absent)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}
