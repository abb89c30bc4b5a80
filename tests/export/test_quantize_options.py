"""INT8 options (which ops, reduce_range by ISA) and the in-process runtimes' options, on a tiny model.
No timing: which option is faster is measured by `cxr bench` (benchmarks/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cxr.export.onnx_export import export_onnx, read_metadata  # noqa: E402
from cxr.export.quantize import NETWORK_SCOPE, Int8Options, quantize_int8  # noqa: E402
from cxr.export.torch_detector import TorchDetector  # noqa: E402
from cxr.serving.runtime import OpenVinoDetector, OrtDetector, ort_session
from cxr.labels import get_labelset  # noqa: E402
from cxr.preprocess import PreprocessConfig  # noqa: E402
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from cxr.training.model import ModelConfig, build_model  # noqa: E402

TINY = dict(arch="fasterrcnn_mobilenet_v3_large_fpn", size=64, anchor_sizes=(8, 16, 32, 64, 128),
            rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, representation_size=32, candidates=30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    labels = get_labelset("nih-bbox")
    ckpt = Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=cfg.size), class_names=labels.names,
                      labelset_name=labels.name, model_version="tiny")
    path = save_checkpoint(tmp / "m.pt", build_model(cfg).eval(), ckpt)
    ckpt = load_checkpoint(path)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(2)]
    return tmp, ckpt, export_onnx(ckpt, tmp / "model.onnx"), calib


def _ort_ops(path, tmp):
    """Op type -> count of what ONNX Runtime runs after its graph optimisations (QDQ fusion into QLinear* kernels)."""
    from collections import Counter

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # fusions, no layout change
    opts.optimized_model_filepath = str(tmp / f"optimized-{path.name}")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def _fed_by_dq(path, op_type: str) -> int:
    """How many ``op_type`` nodes of the network take a DequantizeLinear output (i.e. run quantized)."""
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == op_type and n.name.startswith(NETWORK_SCOPE)
               and any(i in dq for i in n.input))


def test_full_int8_quantizes_the_adds_between_convolutions_compute_only_does_not(tiny):
    tmp, _, fp32, calib = tiny
    full = quantize_int8(fp32, tmp / "full.onnx", calib, options=Int8Options.full())
    compute = quantize_int8(fp32, tmp / "compute.onnx", calib, options=Int8Options.compute_only())
    assert _fed_by_dq(full, "Conv") == _fed_by_dq(compute, "Conv") > 0
    # With every op type quantized ORT's kernels stay in uint8 through the squeeze-excite pools and products,
    # so fewer tensors are converted back and forth between uint8 and float32.
    ops_full, ops_compute = _ort_ops(full, tmp), _ort_ops(compute, tmp)
    assert ops_full["QLinearGlobalAveragePool"] > 0 and ops_compute["QLinearGlobalAveragePool"] == 0
    assert ops_full["QLinearConv"] == ops_compute["QLinearConv"] > 0
    boundaries = lambda ops: ops["QuantizeLinear"] + ops["DequantizeLinear"]  # noqa: E731
    assert boundaries(ops_full) < boundaries(ops_compute)
    meta = read_metadata(full)
    assert meta["int8_options"]["op_types"] == "all" and meta["int8_options"]["scope"] == list(NETWORK_SCOPE)
    assert read_metadata(compute)["int8_options"]["op_types"] == ["Conv", "MatMul", "Gemm"]
    # The box predictor (class scores, box regression) and the graph's own arithmetic stay FP32.
    assert any("box_predictor" in n for n in meta["int8_excluded_nodes"])
    # Nothing outside the network is quantized: every QuantizeLinear reads the image or a network node's output
    # (ROI Align reads dequantized features, but in float32, as do NMS, top-k and the box decoding).
    model = onnx.load(str(full))
    producer = {o: n for n in model.graph.node for o in n.output}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        src = producer.get(q.input[0])
        # (nodes that ONNX function inlining left unnamed are known by their output, named after the module)
        assert src is None or (src.name or src.output[0]).startswith(NETWORK_SCOPE), (q.name, src.output[0])
    boxes, scores, labels, valid = OrtDetector(full, threads=1)(calib[0])
    assert boxes.shape == (1, 30, 4) and valid.shape == (1,)


def test_reduce_range_follows_the_cpu_unless_given(monkeypatch):
    import cxr.export.quantize as q

    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert Int8Options().resolved_reduce_range() is False  # VNNI/AMX: full 8-bit weights are exact
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert Int8Options().resolved_reduce_range() is True  # int16 pair accumulation could saturate
    assert Int8Options(reduce_range=False).resolved_reduce_range() is False
    with pytest.raises(ValueError, match="unknown INT8 calibration 'kl'; choose one of: minmax, entropy, percentile"):
        Int8Options(calibration="kl")


def test_percentile_calibration_builds_a_model(tiny):
    tmp, _, fp32, calib = tiny
    out = quantize_int8(fp32, tmp / "pct.onnx", calib, options=Int8Options(calibration="percentile"))
    assert read_metadata(out)["int8_options"]["calibration"] == "percentile"


def test_ort_session_options_reach_the_session(tiny):
    _, _, fp32, _ = tiny
    off = ort_session(fp32, threads=1, spinning=False, optimization="extended").get_session_options()
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert ort_session(fp32, threads=1).get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(ValueError, match="unknown optimization level 'max'"):
        ort_session(fp32, optimization="max")


def test_pytorch_bf16_modes_stay_close_to_fp32(tiny):
    _, ckpt, _, calib = tiny
    ref = TorchDetector(ckpt)(calib[0])
    for mode in ("bf16", "autocast"):
        out = TorchDetector(ckpt, mode=mode)(calib[0])
        assert [a.dtype for a in out] == [a.dtype for a in ref]  # float32 / int64 outputs whatever the compute dtype
        assert np.abs(out[1][0, :5] - ref[1][0, :5]).max() < 0.05  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="unknown PyTorch mode 'fp8'"):
        TorchDetector(ckpt, mode="fp8")


def test_openvino_runs_the_same_onnx_or_says_how_to_install_it(tiny):
    _, _, fp32, calib = tiny
    try:
        import openvino  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install openvino"):
            OpenVinoDetector(fp32)
        return
    ref = OrtDetector(fp32, threads=1)(calib[0])
    out = OpenVinoDetector(fp32, threads=1)(np.concatenate([calib[0], calib[1]]))  # batch 2: compiled on first sight
    assert out[0].shape == (2, *ref[0].shape[1:])
    keep = ref[1][0] > ref[1][0].min() + 1e-4  # ties at the top-k cut may be ordered differently
    assert np.abs(np.sort(out[1][0][keep]) - np.sort(ref[1][0][keep])).max() < 1e-3
    prepared = OpenVinoDetector(fp32, threads=1)
    prepared.prepare(range(1, 4))  # what the served detector does at start-up: no compile inside a request
    assert sorted(prepared._compiled) == [1, 2, 3]
    again = prepared(np.concatenate([calib[0], calib[1]]))
    assert sorted(prepared._compiled) == [1, 2, 3] and np.array_equal(again[1], out[1])


def test_served_detector_options_are_rendered_into_its_config():
    from cxr.export.triton_config import render
    from cxr.postprocess import PostprocessConfig

    meta = {"model_version": "v", "class_names": list(get_labelset("nih-bbox").names), "preprocess": PreprocessConfig().to_dict(),
            "postprocess": PostprocessConfig().to_dict(), "model": ModelConfig().to_dict()}
    default = render(meta)["detector/config.pbtxt"]
    assert "max_queue_delay_microseconds: 0 }" in default  # a lone request never waits for company
    assert 'key: "intra_op_spinning" value: { string_value: "0" }' in default
    assert 'key: "runtime" value: { string_value: "onnxruntime" }' in default
    tuned = render(meta, queue_delay_us={"detector": 1500}, spinning=True, runtime="openvino")
    assert "max_queue_delay_microseconds: 1500 }" in tuned["detector/config.pbtxt"]
    assert "max_queue_delay_microseconds: 0 }" in tuned["preprocess/config.pbtxt"]
    assert '"runtime" value: { string_value: "openvino" }' in tuned["detector/config.pbtxt"]
    assert 'string_value: "1" }' in tuned["detector/config.pbtxt"]
    with pytest.raises(ValueError, match="unknown detector runtime 'tvm'; choose one of: onnxruntime, openvino"):
        render(meta, runtime="tvm")
