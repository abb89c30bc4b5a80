"""The segmentation ensemble's configs and the masks' wire form (torch-free parts)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr import contract
from cxr.errors import InvalidRequestError
from cxr.export.triton_config import SEGMENT_CONFIGS, render, write_configs
from cxr.masks import CroppedMasks, wire_size
from cxr.postprocess import DetectionArrays
from cxr.serving import steps

META = {"task": "segment", "model_version": "2026.12.04+seg", "class_names": ["Atelectasis", "Effusion"],
        "preprocess": {"size": 128, "channels": 3}, "postprocess": {"score_threshold": 0.05}, "model": {"candidates": 20}}


def test_a_mask_model_gets_cxr_segment_and_keeps_cxr_detector_as_it_is():
    seg, det = render(META), render({**META, "task": "detect"})
    assert set(seg) - set(det) == set(SEGMENT_CONFIGS)
    for rel in det:
        if rel.startswith(contract.Step.DETECTOR.value):  # the graph's outputs: a fifth, masks [K, M, M]
            assert f'name: "{contract.MASK_PROBS}" data_type: TYPE_FP32 dims: [ 20, 28, 28 ]' in seg[rel]
            assert contract.MASK_PROBS not in det[rel]
        else:
            assert seg[rel] == det[rel], rel
    ensemble = seg[f"{contract.SEGMENT}/config.pbtxt"]
    assert all(f'name: "{t.name}"' in ensemble for t in contract.SEGMENT_OUTPUTS)
    assert 'name: "MASK_BITS" data_type: TYPE_UINT8 dims: [ -1 ]' in ensemble
    assert [line.strip() for line in ensemble.splitlines() if "model_name" in line] == [
        f'model_name: "{m}"' for m in (contract.Step.PREPROCESS, contract.Step.DETECTOR, contract.SEGMENT_POSTPROCESS)]
    post = seg[f"{contract.SEGMENT_POSTPROCESS}/config.pbtxt"]
    assert 'name: "masks" data_type: TYPE_FP32 dims: [ 20, 28, 28 ]' in post and 'backend: "python"' in post


def test_a_detector_exported_over_a_mask_model_removes_cxr_segment(tmp_path):
    write_configs(tmp_path, META)
    assert all((tmp_path / rel).is_file() for rel in SEGMENT_CONFIGS)
    write_configs(tmp_path, {**META, "task": "detect"})
    assert not any((tmp_path / rel).exists() for rel in SEGMENT_CONFIGS)
    assert (tmp_path / contract.ENSEMBLE / "config.pbtxt").is_file()


def _dets(masks: np.ndarray) -> DetectionArrays:
    n = len(masks)
    return DetectionArrays(np.tile(np.array([[0, 0, 4, 4]], np.float32), (n, 1)), np.linspace(0.9, 0.5, n).astype(np.float32),
                           np.ones(n, np.int64), masks=CroppedMasks.from_masks(masks))


def test_mask_tensors_pad_a_request_and_read_back():
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 30)) > 0.6
    b = np.zeros((1, 50, 60), bool)
    b[0, 10:20, 5:9] = True
    none = DetectionArrays(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                           masks=CroppedMasks.empty(7, 9))
    out = steps.mask_tensors([_dets(a), _dets(b), none])
    rects, bits, grid = (out[t.name] for t in (contract.MASK_RECTS, contract.MASK_BITS, contract.MASK_GRID))
    assert rects.dtype == np.int32 and bits.dtype == np.uint8 and grid.dtype == np.int32
    assert rects.shape == (3, 3, 4) and grid.tolist() == [[40, 30], [50, 60], [7, 9]]
    assert rects[1, 0].tolist() == [5, 10, 9, 20] and not rects[1, 1:].any() and not rects[2].any()
    for i, masks in enumerate((a, b)):
        r = rects[i, : len(masks)]
        back = CroppedMasks.from_wire(r, bits[i, : wire_size(r)], *grid[i])
        np.testing.assert_array_equal(back.stack(), masks)
    assert bits.shape[1] == max(wire_size(rects[0]), 5) and not bits[1, 5:].any()


def test_masks_above_the_bound_fail_their_request(monkeypatch):
    masks = np.ones((2, 64, 64), bool)
    size = 2 * 16 + 2 * 64 * 64 // 8 + 8
    assert size <= contract.mask_wire_bound(2, 64, 64)
    monkeypatch.setattr(steps, "MAX_MASK_BYTES", size - 1)  # the rule, at a size a test can afford
    with pytest.raises(InvalidRequestError, match=r"masks of this study's 2 detections take .* MB.*raise score_threshold or lower top_k"):
        steps.mask_tensors([_dets(masks)])
    monkeypatch.setattr(steps, "MAX_MASK_BYTES", size)
    assert steps.mask_tensors([_dets(masks)])[contract.MASK_BITS.name].shape == (1, 1024)
