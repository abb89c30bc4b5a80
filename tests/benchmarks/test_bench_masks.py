"""`cxr bench masks` (benchmarks/masks.py): a Mask R-CNN's rows on the suite's tiny mask model -- eager and
ORT FP32 timed through the served steps with their parity, ORT INT8 named unavailable when not exported,
cxr_segment served by the embedded tritonserver with masks identical to ORT's, and the bad inputs refused
by name."""

from __future__ import annotations

import json

import pytest

from cxr.cli import main
from cxr.machine import cpu_info, isa_line


@pytest.fixture(scope="module")
def seg_onnx_repository(seg_checkpoint, tmp_path_factory):
    from cxr.export.commands import run_export

    repo = tmp_path_factory.mktemp("bench-masks") / "model_repository"
    run_export("onnx", seg_checkpoint, repository=repo)
    return repo


def test_bench_masks_reports_each_backend_with_its_parity(seg_checkpoint, seg_onnx_repository, synth_data, tmp_path,
                                                          capsys):
    rc = main(["bench", "masks", "--checkpoint", str(seg_checkpoint), "--repository", str(seg_onnx_repository),
               "--data", str(synth_data), "--images", "3", "--warmup", "1", "--threads", "1",
               "--triton", "--out", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    n = result["studies"]
    assert rc == 0 and result["isa"] == isa_line(cpu_info()) and 1 <= n <= 3 and result["split"] == "test"
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", "onnx", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-bf16",
                          "triton"]
    served = rows["triton"]  # cxr_segment of the embedded tritonserver over gRPC: the in-process ORT masks
    assert served["studies"] == n and served["identical_to_onnx"] == n and 0 < served["p50_ms"] <= served["p95_ms"]
    for name in ("onnx-int8", "openvino-int8", "openvino-int8-bf16"):
        assert rows[name]["status"] == "unavailable" and "model.int8.onnx" in rows[name]["reason"]
    for name in ("pytorch", "onnx", "openvino-fp32"):  # OpenVINO: the paths cxr serve may choose
        r = rows[name]
        assert r["status"] == "ok" and r["studies"] == n, r
        assert 0 < r["p50_ms"] <= r["p95_ms"] and r["images_per_s"] > 0
        assert 0 < r["model_p50_ms"] < r["p95_ms"] and r["paste_p50_ms"] >= 0 and r["encode_p50_ms"] > 0
        assert r["mask_bytes_median"] > 8 * 3  # more than the grid: some mask has pixels
        masks = r["parity"]["masks"]  # the tiny model scores below the parity's report score: no matched pairs
        assert r["parity"]["passed"] and (masks["iou_median"] is None or masks["iou_median"] >= 0.99)
        assert masks["segm_ap_test"] is not None and masks["segm_ap_delta"] <= 0.005  # the data's masks are there
    assert rows["onnx"]["mask_bytes_median"] == pytest.approx(rows["pytorch"]["mask_bytes_median"], rel=0.05)  # same masks
    md = (tmp_path / "masks.md").read_text()
    assert "| onnx | ok |" in md and "| onnx-int8 | unavailable" in md and result["isa"] in md
    assert f"{n} of {n} studies identical to onnx" in md
    assert json.loads((tmp_path / "masks.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))


def test_bench_masks_refuses_what_it_cannot_measure(seg_checkpoint, seg_onnx_repository, synth_data, tmp_path, capsys):
    import torch

    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model

    common = ["--data", str(synth_data), "--out", str(tmp_path)]
    rc = main(["bench", "masks", "--checkpoint", str(seg_checkpoint), "--repository", str(tmp_path / "none"), *common])
    assert rc == 2 and "no model repository" in capsys.readouterr().err
    rc = main(["bench", "masks", "--checkpoint", str(seg_checkpoint), "--repository", str(seg_onnx_repository),
               "--backends", "onnx,tensorrt", *common])
    assert rc == 2 and "unknown mask backend(s) tensorrt" in capsys.readouterr().err
    rc = main(["bench", "masks", "--checkpoint", str(seg_checkpoint), "--repository", str(seg_onnx_repository),
               "--backends", "pytorch", "--triton", *common])
    assert rc == 2 and "keep onnx in --backends" in capsys.readouterr().err
    torch.manual_seed(0)
    cfg = ModelConfig(arch="fasterrcnn_mobilenet_v2_fpn", fpn_channels=64, size=128, representation_size=64)
    ls = get_labelset("nih-bbox")
    det = save_checkpoint(tmp_path / "det.pt", build_model(cfg), Checkpoint(
        state={}, model_config=cfg, preprocess=PreprocessConfig(size=128), class_names=ls.names, labelset_name=ls.name,
        model_version="test"))
    rc = main(["bench", "masks", "--checkpoint", str(det), "--repository", str(seg_onnx_repository), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "detect checkpoint" in err and "--task segment" in err and len(err.strip().splitlines()) == 1
