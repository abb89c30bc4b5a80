"""`cxr bench layers` (benchmarks/layers.py): OpenVINO's per-layer counters per served OpenVINO path on the
suite's tiny detector -- the split by op type adds up, the INT8 paths are named unavailable without
model.int8.onnx, BF16 only where the CPU has it, the plot is drawn, and bad inputs are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.cli import main
from cxr.machine import cpu_info, isa_line


def test_bench_layers_splits_each_openvino_path_by_op_type(checkpoint, repository, synth_data, tmp_path, capsys):
    rc = main(["bench", "layers", "--checkpoint", str(checkpoint), "--repository", str(repository),
               "--data", str(synth_data), "--images", "2", "--runs", "2", "--threads", "1", "--out", str(tmp_path),
               "--json"])
    result = json.loads(capsys.readouterr().out)
    isa = isa_line(cpu_info())
    assert rc == 0 and result["isa"] == isa and result["studies"] == 2 and result["runs"] == 2
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-bf16"]
    for name in ("openvino-int8", "openvino-int8-bf16"):  # only model.onnx was exported
        assert rows[name]["status"] == "unavailable" and "model.int8.onnx" in rows[name]["reason"]
    ok = ["openvino-fp32"] + (["openvino-bf16"] if "BF16 yes" in isa else [])
    if "BF16 yes" not in isa:
        assert rows["openvino-bf16"]["status"] == "unavailable" and "BF16" in rows["openvino-bf16"]["reason"]
    for name in ok:
        r = rows[name]
        assert r["status"] == "ok" and r["calls"] == 4, r
        # what a Faster R-CNN is made of, as OpenVINO runs it
        assert {"Convolution", "ROIAlign", "NonMaxSuppression", "TopK"} <= set(r["by_op"]), sorted(r["by_op"])
        assert r["layers_mean_ms"] == pytest.approx(sum(r["by_op"].values()))
        assert 0 < sum(r["kernels"].values()) <= r["layers_mean_ms"] * (1 + 1e-9)
        assert all(k.split(" ")[0] in r["by_op"] for k in r["kernels"])
        assert r["wall_p50_ms"] > 0 and r["layers_p50_ms"] > 0
    md = (tmp_path / "layers.md").read_text()
    assert result["isa"] in md and "| Convolution |" in md and "openvino-int8: unavailable" in md
    from PIL import Image

    with Image.open(tmp_path / "layers.png") as png:  # drawn: more than one colour, bars wider than the labels
        assert png.size[0] > 500 and len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 8
    assert json.loads((tmp_path / "layers.json").read_text())["rows"] == result["rows"]


def test_layer_times_need_profiling_on(repository):
    from cxr.errors import InvalidOptionError
    from cxr.serving.paths import BY_NAME

    from cxr.contract import Step

    folder = repository / Step.DETECTOR / "1"
    with pytest.raises(InvalidOptionError, match="profile=True"):
        BY_NAME["openvino-fp32"].detector(folder, threads=1).layer_times()
    with pytest.raises(InvalidOptionError, match="OpenVINO paths only"):
        BY_NAME["ort-fp32"].detector(folder, threads=1, profile=True)


def test_bench_layers_refuses_what_it_cannot_measure(checkpoint, repository, tmp_path, capsys):
    common = ["--checkpoint", str(checkpoint), "--out", str(tmp_path)]
    rc = main(["bench", "layers", "--repository", str(tmp_path / "none"), *common])
    assert rc == 2 and "no detector in" in capsys.readouterr().err
    rc = main(["bench", "layers", "--repository", str(repository), "--paths", "ort-fp32", *common])
    assert rc == 2 and "unknown path(s) ort-fp32" in capsys.readouterr().err
    rc = main(["bench", "layers", "--repository", str(repository), "--runs", "0", *common])
    assert rc == 2 and "--runs >= 1" in capsys.readouterr().err
