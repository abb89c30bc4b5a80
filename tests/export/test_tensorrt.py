"""TensorRT FP16: unit-tested up to the GPU boundary; the GPU part skips with a reason."""

from __future__ import annotations

import pytest

from cxr.export.tensorrt import BatchProfile, TensorRTUnavailable, engine_metadata_path, gpu_name, require_tensorrt

HAS_GPU = gpu_name() is not None
try:
    import tensorrt  # noqa: F401

    HAS_TRT = True
except ImportError:
    HAS_TRT = False


def test_batch_profile_shapes_and_validation():
    assert BatchProfile(1, 4, 8).shapes(3, 512) == ((1, 3, 512, 512), (4, 3, 512, 512), (8, 3, 512, 512))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)


def test_engine_metadata_sits_next_to_the_plan(tmp_path):
    assert engine_metadata_path(tmp_path / "model.plan").name == "model.plan.json"


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the no-GPU message cannot be observed")
def test_no_gpu_gives_a_clear_error():
    with pytest.raises(TensorRTUnavailable, match="needs an NVIDIA GPU.*export `onnx` or `onnx-int8` instead"):
        require_tensorrt()


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_cli_trt_without_gpu_exits_with_the_reason(tmp_path, capsys):
    from cxr.cli import main
    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model

    cfg = ModelConfig(arch="fasterrcnn_mobilenet_v3_large_fpn", size=128, representation_size=32)
    ls = get_labelset("nih-bbox")
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), Checkpoint({}, cfg, PreprocessConfig(size=128), ls.names, ls.name))
    assert main(["export", "trt", "--checkpoint", str(path), "--repository", str(tmp_path / "repo")]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "detector").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason="needs an NVIDIA GPU and the tensorrt package")
def test_fp16_engine_builds_and_keeps_parity(tmp_path):
    import numpy as np
    import torch

    from cxr.export.onnx_export import export_onnx
    from cxr.export.torch_detector import TorchDetector
    from cxr.export.tensorrt import TrtDetector, build_engine
    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="fasterrcnn_mobilenet_v3_large_fpn", size=256, representation_size=64)
    ls = get_labelset("nih-bbox")
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), Checkpoint({}, cfg, PreprocessConfig(size=256), ls.names, ls.name))
    ckpt = load_checkpoint(path)
    plan = build_engine(export_onnx(ckpt, tmp_path / "m.onnx"), tmp_path / "m.plan", channels=3, size=256,
                        profile=BatchProfile(1, 2, 4))
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32)
    t, r = TrtDetector(plan)(x), TorchDetector(ckpt)(x)
    assert t[0].shape == r[0].shape
    top = min(int(t[3][0]), int(r[3][0]), 10)
    np.testing.assert_allclose(t[1][0, :top], r[1][0, :top], atol=2e-2)


def test_engine_outputs_come_back_in_the_graphs_order():
    from cxr.export.tensorrt import graph_outputs

    # TensorRT lists I/O tensors in its own order; a Mask R-CNN's engine has the fifth output
    assert graph_outputs(["valid", "masks", "boxes", "labels", "scores"]) == ["boxes", "scores", "labels", "valid", "masks"]
    assert graph_outputs(["labels", "valid", "scores", "boxes"]) == ["boxes", "scores", "labels", "valid"]
    with pytest.raises(ValueError, match="no output valid .*not a cxr serving graph"):
        graph_outputs(["boxes", "scores", "labels", "masks"])


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason="needs an NVIDIA GPU and the tensorrt package")
def test_fp16_mask_engine_keeps_mask_parity(tmp_path):
    """A Mask R-CNN's engine: FP16 masks of the top candidates against PyTorch's, after the paste."""
    import numpy as np
    import torch

    from cxr.boxes import LetterboxRecord
    from cxr.export.onnx_export import export_onnx
    from cxr.export.tensorrt import TrtDetector, build_engine
    from cxr.export.torch_detector import TorchDetector
    from cxr.labels import get_labelset
    from cxr.masks import crop_iou
    from cxr.preprocess import PreprocessConfig
    from cxr.serving.steps import unmap_detections
    from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="maskrcnn_mobilenet_v2_fpn", size=256, representation_size=64, mask_head_channels=64,
                      mask_head_layers=2)
    model = build_model(cfg)
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(30.0)  # away from 0.5, as a trained head
    ls = get_labelset("nih-bbox")
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, Checkpoint({}, cfg, PreprocessConfig(size=256), ls.names, ls.name)))
    plan = build_engine(export_onnx(ckpt, tmp_path / "m.onnx"), tmp_path / "m.plan", channels=3, size=256,
                        profile=BatchProfile(1, 2, 4))
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32)
    t, r = TrtDetector(plan)(x), TorchDetector(ckpt)(x)
    assert len(t) == 5 and t[4].shape == r[4].shape
    records = np.stack([LetterboxRecord.fit(512, 512, 256).to_array()] * 2)
    for dt, dr in zip(unmap_detections(t, records, ckpt.postprocess), unmap_detections(r, records, ckpt.postprocess)):
        top = min(len(dt), len(dr), 5)
        ious = [crop_iou(dr.masks, i, dt.masks, i) for i in range(top) if dt.labels[i] == dr.labels[i]]
        assert not ious or np.median(ious) >= 0.9
