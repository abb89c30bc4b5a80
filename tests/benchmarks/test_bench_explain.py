"""`cxr bench explain` (benchmarks/explain.py): the explanation row on the suite's tiny model -- cxr_explain
against cxr_detector through the embedded tritonserver over gRPC, the ratio of their medians, and the batch
sizes Triton's statistics saw the detector run during the explained requests."""

from __future__ import annotations

import json

import pytest

from cxr.cli import main
from cxr.machine import cpu_info, isa_line


def test_bench_explain_reports_cost_in_detections(checkpoint, repository, synth_data, tmp_path, capsys):
    pytest.importorskip("pytriton")
    rc = main(["bench", "explain", "--checkpoint", str(checkpoint), "--repository", str(repository),
               "--data", str(synth_data), "--images", "2", "--masks", "16", "--out", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["isa"] == isa_line(cpu_info()) and result["studies"] == 2
    (row,) = result["rows"]
    assert row["studies"] == 2 and row["masks"] == 16 and row["default_masks"] >= 1
    assert 0 < row["detect_p50_ms"] and 0 < row["explain_p50_ms"] <= row["explain_max_ms"]
    assert row["detection_equivalents"] == pytest.approx(row["explain_p50_ms"] / row["detect_p50_ms"])
    # An explained study costs one unmasked detector pass, then the 16 masked copies when it has detections.
    assert len(row["detections"]) == 2
    assert row["detector_inferences"] == sum(1 + 16 * (d > 0) for d in row["detections"])
    assert 1 <= row["detector_executions"] <= row["detector_inferences"]
    assert row["batch_mean"] == pytest.approx(row["detector_inferences"] / row["detector_executions"])
    sizes = {int(k): v for k, v in row["batch_sizes"].items()}
    assert sizes and min(sizes) >= 1 and row["batch_min"] == min(sizes) and row["batch_max"] == max(sizes)
    assert sum(size * n for size, n in sizes.items()) == row["detector_inferences"]
    assert sum(sizes.values()) == row["detector_executions"]
    md = (tmp_path / "explain.md").read_text()
    assert result["isa"] in md and "| 16 (" in md and f"{row['detection_equivalents']:.1f}" in md
    assert json.loads((tmp_path / "explain.json").read_text())["rows"] == result["rows"]


def test_bench_explain_refuses_what_it_cannot_measure(checkpoint, synth_data, tmp_path, capsys):
    common = ["--checkpoint", str(checkpoint), "--data", str(synth_data), "--out", str(tmp_path)]
    assert main(["bench", "explain", "--repository", str(tmp_path / "none"), *common]) == 2
    assert "no cxr_explain in" in capsys.readouterr().err
    assert main(["bench", "explain", "--repository", str(tmp_path), "--masks", "0", *common]) == 2
    assert "--masks >= 1" in capsys.readouterr().err
