"""The committed model repository, config rendering and the serving helpers (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr.errors import InvalidImageError
from cxr.labels import get_labelset
from cxr.postprocess import DetectionArrays, PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.serving.boundary import model_parameters
from cxr.serving.steps import decode_request_image, detection_tensors, postprocess_overrides

REPO = Path(__file__).resolve().parents[2] / "model_repository"


def _default_meta():
    from cxr.training.model import ModelConfig

    return {"model_version": "unexported", "class_names": list(get_labelset("nih-bbox").names),
            "preprocess": PreprocessConfig().to_dict(), "postprocess": PostprocessConfig().to_dict(),
            "model": ModelConfig().to_dict()}


def test_committed_configs_are_what_the_generator_renders():
    from cxr.export.triton_config import render

    for rel, text in render(_default_meta()).items():
        assert (REPO / rel).read_text() == text, f"{rel} differs from export/triton_config.py's output"


# An adapter reads tensors, calls cxr and builds responses: today 35 to 57 lines.  The
# bound leaves room for one more config key or input, not for a numeric step.
ADAPTER_MAX_LINES = 70


def test_model_adapters_are_thin():
    for model in ("preprocess", "detector", "postprocess"):
        lines = (REPO / model / "1" / "model.py").read_text().splitlines()
        assert len(lines) <= ADAPTER_MAX_LINES, f"{model}/1/model.py has {len(lines)} lines; numerics belong in cxr"


def test_stamped_parameters_reach_the_configs(tmp_path):
    from cxr.export.triton_config import render

    meta = _default_meta() | {"model_version": "2026.11.25+abcd", "preprocess": PreprocessConfig(size=256).to_dict()}
    files = render(meta)
    assert "dims: [ 3, 256, 256 ]" in files["preprocess/config.pbtxt"]
    assert '"2026.11.25+abcd"' in files["postprocess/config.pbtxt"]
    assert 'platform: "tensorrt_plan"' in files["detector/configs/gpu-trt.pbtxt"]
    assert 'default_model_filename: "model.onnx"' in files["detector/configs/gpu-onnx.pbtxt"]


def test_model_parameters_decode_json():
    cfg = {"parameters": {"preprocess": {"string_value": json.dumps({"size": 256})}, "precision": {"string_value": "int8"}}}
    assert model_parameters(json.dumps(cfg)) == {"preprocess": {"size": 256}, "precision": "int8"}


def test_request_needs_exactly_one_input():
    with pytest.raises(InvalidImageError, match="exactly one of IMAGE_BYTES"):
        decode_request_image(None, None, {})
    with pytest.raises(InvalidImageError, match="exactly one"):
        decode_request_image(b"x", np.zeros((8, 8), np.uint16), {})


def test_pixels_with_bits_and_spacing():
    img = decode_request_image(None, np.full((16, 16), 4095, np.uint16), {"bits_stored": 12, "spacing_row_mm": 0.2, "spacing_col_mm": 0.1})
    assert img.pixels.max() == pytest.approx(1.0) and img.spacing_mm == (0.2, 0.1)


def test_oversized_request_refused():
    from cxr.contract import MAX_REQUEST_BYTES

    with pytest.raises(InvalidImageError, match="above the"):
        decode_request_image(b"\0" * (MAX_REQUEST_BYTES + 1), None, {})


@pytest.mark.parametrize("params,message", [
    ({"score_threshold": "abc"}, "score_threshold='abc' is not a number"),
    ({"score_threshold": 2.0}, "score_threshold must be in"),
    ({"iou_threshold": "nan"}, "not finite"),
    ({"top_k": -1}, "max_detections must be >= 0"),
])
def test_bad_overrides_name_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        postprocess_overrides(PostprocessConfig(), params)


def test_overrides_apply():
    cfg = postprocess_overrides(PostprocessConfig(), {"score_threshold": "0.4", "top_k": 3})
    assert cfg.score_threshold == 0.4 and cfg.max_detections == 3 and cfg.iou_threshold == 0.5


def test_detection_tensors_pad_and_label():
    names = get_labelset("nih-bbox").names
    a = DetectionArrays(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9], np.float32), np.array([2]), np.ones((1, 4), np.float32))
    out = detection_tensors([a, DetectionArrays.empty()], names)
    assert out["BOXES"].shape == (2, 1, 4) and out["LABELS"][0, 0] == b"Cardiomegaly"
    assert out["SCORES"][1, 0] == -1.0 and out["LABELS"][1, 0] == b""
    assert np.isnan(out["BOXES_MM"][1]).all()


def test_server_command_is_loopback_and_explicit(tmp_path):
    from cxr.server.install import TritonInstall
    from cxr.server.launcher import TritonServer

    srv = TritonServer(model_repository=tmp_path, target="gpu-trt")
    cmd = srv.command(TritonInstall(Path("/bin/tritonserver"), Path("/lib"), Path("/backends")))
    assert "--grpc-address=127.0.0.1" in cmd and "--model-control-mode=explicit" in cmd
    assert "--model-config-name=gpu-trt" in cmd and "--load-model=cxr_detector" in cmd
    with pytest.raises(ValueError, match="unknown target"):
        TritonServer(model_repository=tmp_path, target="tpu").command(TritonInstall(Path("/x"), Path("/y"), Path("/z")))


def test_serve_refuses_a_repository_without_a_model(tmp_path):
    from cxr.errors import UsageError
    from cxr.export.repository import ensure_repository
    from cxr.server.launcher import TritonServer

    ensure_repository(tmp_path / "repo", _default_meta())
    with pytest.raises(UsageError, match="no exported model: run `cxr export onnx"):
        TritonServer(model_repository=tmp_path / "repo").start()
    with pytest.raises(UsageError, match="not a cxr model repository"):
        TritonServer(model_repository=tmp_path).start()


def test_gpu_target_on_the_embedded_server_is_refused(tmp_path):
    from cxr.errors import UsageError
    from cxr.export.repository import ensure_repository
    from cxr.server.launcher import TritonServer

    repo = ensure_repository(tmp_path / "repo", _default_meta())
    (repo / "detector" / "1" / "model.onnx").write_bytes(b"placeholder")
    with pytest.raises(UsageError, match="target gpu-trt needs Triton's tensorrt backend"):
        TritonServer(model_repository=repo, target="gpu-trt").start()
