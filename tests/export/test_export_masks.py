"""A Mask R-CNN through export: the serving graph's masks, ONNX FP32 / INT8, parity with masks.

Tiny random-weight mask models, deterministic: the mask predictor's logits are scaled up so
the probabilities sit away from 0.5 (a random head says ~0.5 everywhere, where the last bit of
float arithmetic decides a pixel) -- as a trained head's do.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from cxr.boxes import LetterboxRecord
from cxr.contract import SEGMENT_RAW_OUTPUTS, detector_outputs
from cxr.labels import get_labelset
from cxr.preprocess import PreprocessConfig
from cxr.serving.steps import unmap_detections
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.training.model import ModelConfig, build_model

warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cxr.export.commands import ParityError, _studies, check_parity, run_export  # noqa: E402
from cxr.export.graph import ServingGraph  # noqa: E402
from cxr.export.onnx_export import export_onnx, read_metadata  # noqa: E402
from cxr.export.parity import TOLERANCES  # noqa: E402
from cxr.export.torch_detector import TorchDetector  # noqa: E402
from cxr.serving.runtime import OrtDetector  # noqa: E402

SEG = dict(arch="maskrcnn_mobilenet_v2_fpn", fpn_channels=64, size=128, anchor_sizes=(16, 32, 64, 128, 256),
           rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, representation_size=64, candidates=20,
           mask_head_channels=32, mask_head_layers=2)
EVERY = replace(TOLERANCES["fp32"], report_score=0.0)  # a random model scores ~1/9: every candidate counts


def _mask_model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**SEG, **overrides})
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(30.0)
    return cfg, model


def _checkpoint(tmp_path, name="seg.pt", seed=0, **overrides):
    cfg, model = _mask_model(seed, **overrides)
    ls = get_labelset("nih-bbox")
    ckpt = Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=cfg.size), class_names=ls.names,
                      labelset_name=ls.name, model_version="2026.12.04+tinyseg")
    return save_checkpoint(tmp_path / name, model, ckpt)


def _films(n, size=128, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 3, size, size)).astype(np.float32) * 0.5
    x[:, :, 30:70, 40:90] += 2.0
    return x


def _twin_rows(ref_boxes, ref_labels, boxes, labels):
    """For each reference candidate the row of ``boxes`` with the same label and box (a random model
    ties scores, so the graph's top-k may order equal rows differently)."""
    rows = []
    for b, lab in zip(ref_boxes, ref_labels):
        d = np.abs(boxes - b).max(1) + (labels != lab) * 1e3
        rows.append(int(d.argmin()))
        assert d[rows[-1]] < 1e-4, f"no twin for {b} label {lab}"
    return rows


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segexport")
    path = _checkpoint(tmp)
    ckpt = load_checkpoint(path)
    return ckpt, export_onnx(ckpt, tmp / "seg.onnx"), path


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("segsynth") / "data"
    generate(out, SynthConfig(images=14, seed=9, size=256), progress=False)
    assert (out / "masks.json").is_file()
    return out


@pytest.mark.parametrize("arch", ["maskrcnn_mobilenet_v2_fpn", "maskrcnn_resnet50_fpn"])
def test_the_graphs_masks_are_torchvisions(arch):
    cfg, model = _mask_model(arch=arch, fpn_channels=64 if "mobilenet" in arch else 256)
    graph = ServingGraph(model, 128).eval()
    x = torch.from_numpy(_films(2))
    with torch.no_grad():
        ref = model(list(x))
        boxes, scores, labels, valid, masks = graph(x)
    assert masks.shape == (2, cfg.candidates, 28, 28) and graph.mask_size == 28
    for i, r in enumerate(ref):
        n = int(valid[i])
        assert n == len(r["boxes"]) > 0
        rows = _twin_rows(r["boxes"].numpy(), r["labels"].numpy(), boxes[i, :n].numpy(), labels[i, :n].numpy())
        np.testing.assert_allclose(masks[i, rows].numpy(), r["masks"][:, 0].numpy(), atol=1e-6)


def test_onnx_has_the_fifth_output_with_static_mask_dims_and_a_dynamic_batch(seg_export):
    ckpt, path, _ = seg_export
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == list(SEGMENT_RAW_OUTPUTS)
    dims = [d.dim_param or d.dim_value for d in model.graph.output[-1].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2:] == [28, 28]
    assert read_metadata(path)["task"] == "segment"
    det = OrtDetector(path, threads=1)
    x = _films(3, seed=1)
    b3 = det(x)
    assert b3[4].shape == (3, 20, 28, 28) and b3[4].dtype == np.float32
    assert detector_outputs(20, mask_size=28)[-1].dims == (20, 28, 28)
    for i in range(3):
        b1 = det(x[i : i + 1])
        n = int(b1[3][0])
        rows = _twin_rows(b1[0][0, :n], b1[2][0, :n], b3[0][i, :n], b3[2][i, :n])
        np.testing.assert_allclose(b3[4][i, rows], b1[4][0, :n], atol=1e-4)


def test_zero_detections_give_padded_masks_and_empty_results(tmp_path):
    """The guard: no candidate passes, the mask head still pools K rows per image (never zero ROIs)."""
    ckpt = load_checkpoint(_checkpoint(tmp_path, candidate_score_threshold=0.999))
    out = OrtDetector(export_onnx(ckpt, tmp_path / "empty.onnx"), threads=1)(_films(2))
    assert out[3].tolist() == [0, 0] and out[4].shape == (2, 20, 28, 28) and np.isfinite(out[4]).all()
    record = LetterboxRecord.fit(300, 200, 128)
    dets = unmap_detections(out, np.stack([record.to_array()] * 2), ckpt.postprocess)
    assert [len(d) for d in dets] == [0, 0]
    assert all(len(d.masks) == 0 and (d.masks.height, d.masks.width) == (300, 200) for d in dets)
    assert TorchDetector(ckpt)(_films(1))[3].tolist() == [0]


def test_fp32_parity_with_masks_passes_and_reports_segm_ap(seg_export, seg_data):
    ckpt, path, _ = seg_export
    studies = _studies(seg_data, "train", 4, "nih-bbox")  # the tiny test split has no findings
    report = check_parity(ckpt, OrtDetector(path, threads=1), studies, tolerance=EVERY)
    assert report.passed, report.table()
    m = report.masks
    assert m is not None and m.n_pairs == report.matched > 0
    assert m.iou_median >= 0.99 and m.segm_ap_ref is not None and m.segm_ap_delta <= 0.005
    assert "mask IoU" in report.table() and "segm AP" in report.table()
    assert report.to_dict()["masks"]["n_pairs"] == m.n_pairs


def test_pipeline_masks_equal_the_training_predictions(seg_export, seg_data):
    """Serving graph + cxr.serving.steps and engine.predict on the torchvision model: the same
    detections and the same pixels (one paste, one postprocess)."""
    from torch.utils.data import DataLoader

    from cxr.serving.pipeline import Pipeline
    from cxr.training.engine import predict
    from cxr.training.torch_dataset import DetectionDataset, collate

    ckpt, _, _ = seg_export
    studies = _studies(seg_data, "train", 3, "nih-bbox")
    served = Pipeline(TorchDetector(ckpt), ckpt.preprocess, ckpt.postprocess)([s.path for s in studies])
    loader = DataLoader(DetectionDataset(studies, ckpt.labelset, ckpt.preprocess), batch_size=2, collate_fn=collate)
    trained = predict(ckpt.build_model(), loader, torch.device("cpu"), postprocess_config=ckpt.postprocess, progress=False)
    assert sum(len(d) for d in served) > 0
    for s, t in zip(served, trained):
        np.testing.assert_allclose(s.boxes, t["boxes"], atol=1e-3)
        np.testing.assert_array_equal(s.labels, t["labels"])
        assert (s.masks.height, s.masks.width) == (t["masks"].height, t["masks"].width)
        np.testing.assert_array_equal(s.masks.stack(), t["masks"].stack())


def test_parity_fails_when_only_the_masks_differ(tmp_path, seg_data):
    ckpt = load_checkpoint(_checkpoint(tmp_path))
    key = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    state = dict(ckpt.state)
    state[key] = -state[key]  # same boxes and scores; every mask inverted
    path = export_onnx(replace(ckpt, state=state), tmp_path / "inverted.onnx")
    report = check_parity(ckpt, OrtDetector(path, threads=1), _studies(seg_data, "train", 3, "nih-bbox"), tolerance=EVERY)
    assert report.match_rate == 1.0 and not report.passed
    assert any("mask IoU median" in f for f in report.failures), report.failures
    assert "mask IoU" in str(ParityError(report))


def test_int8_quantizes_the_mask_head_and_keeps_the_mask_predictor_fp32(seg_export, seg_data, tmp_path):
    _, _, ckpt_path = seg_export
    res = run_export("onnx-int8", ckpt_path, out=tmp_path / "seg.int8.onnx", data=seg_data, calibration_images=3,
                     int8_budget=None)
    model = onnx.load(str(res.path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weighted = {n.name: len(n.input) > 1 and n.input[1] in dq for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert any(q for name, q in weighted.items() if name.startswith("/mask_head/"))
    assert not any(q for name, q in weighted.items() if "mask_predictor" in name)
    out = OrtDetector(res.path, threads=1)(_films(2))
    assert [a.shape for a in out][-1] == (2, 20, 28, 28)


def test_int8_mixed_precision_counts_mask_changes(seg_export, seg_data):
    from cxr.export.commands import Int8Disagreement

    ckpt, fp32, _ = seg_export
    evaluate = Int8Disagreement(ckpt, fp32, _studies(seg_data, "val", 3, "nih-bbox"))
    assert all(d.masks is not None for d in evaluate.reference)
    assert evaluate(fp32) == 0.0


def test_a_mask_model_can_be_explained_in_process(seg_export, seg_data):
    """D-RISE reads the four detection outputs of a five-output graph (cxr_explain asks for those four)."""
    from cxr.saliency import SaliencyConfig
    from cxr.serving.pipeline import Pipeline

    ckpt, path, _ = seg_export
    study = _studies(seg_data, "train", 1, "nih-bbox")[0]
    dets, maps, _ = Pipeline(OrtDetector(path, threads=1), ckpt.preprocess, ckpt.postprocess).explain(
        study.path, SaliencyConfig(masks=4, grid=4))
    assert len(dets) > 0 and dets.masks is not None and maps.shape[0] == len(dets)
