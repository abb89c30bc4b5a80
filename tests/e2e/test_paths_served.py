"""``cxr export paths`` and ``cxr serve --path`` with the real embedded tritonserver, on the suite's tiny
trained detector: every runtime x precision that can run here is checked against PyTorch and timed, the
record names the fastest that passed, and the served detector really runs the path it was given -- its
answers equal that path's in process (and, for BF16, differ from ONNX Runtime FP32's)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxr.export.parity import Tolerance, compare
from cxr.machine import cpu_info, isa_line
from cxr.postprocess import DetectionArrays
from cxr.serving.paths import BY_NAME, FALLBACK, PATHS_FILE

pytestmark = pytest.mark.e2e
SAME = Tolerance(min_match_rate=1.0, match_iou=0.99, report_score=0.05, score_margin=1e-4)


@pytest.fixture(scope="module")
def paths_repository(checkpoint, repository, synth_data, tmp_path_factory):
    """A copy of the session's repository (FP32 ONNX only) after `cxr export paths`."""
    from cxr.export.paths import run_paths

    repo = tmp_path_factory.mktemp("paths") / "model_repository"
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("*.log"))
    record, choice = run_paths(checkpoint, repository=repo, data=synth_data, check_images=8, rounds=5)
    return repo, record, choice


def test_export_paths_checks_and_times_every_path_that_can_run_here(paths_repository):
    repo, record, choice = paths_repository
    rows = record["paths"]
    assert set(rows) == set(BY_NAME) and record["isa"] == isa_line(cpu_info())
    assert rows["ort-fp32"]["parity"]["passed"] and rows["ort-fp32"]["parity"]["map_delta"] == 0.0
    for name in ("ort-int8", "openvino-int8", "openvino-int8-bf16"):
        assert "no model.int8.onnx" in rows[name]["skipped"]
    assert "parity" in rows["openvino-fp32"]  # the [all] extra installs openvino
    timed = {n: r["p50_ms"] for n, r in rows.items() if r.get("parity", {}).get("passed")}
    assert all(ms > 0 for ms in timed.values())
    assert choice.path.name == min(timed, key=timed.get)  # the fastest that passed
    assert json.loads((repo / "detector" / "1" / PATHS_FILE).read_text()) == record


def _served(url: str, studies, class_names) -> list[DetectionArrays]:
    from cxr.client import DetectorClient

    out = []
    with DetectorClient(url=url) as client:
        for study in studies:
            dets = client.predict(study).detections
            out.append(DetectionArrays(np.array([d.box_xyxy_px for d in dets], np.float32).reshape(-1, 4),
                                       np.array([d.score for d in dets], np.float32),
                                       np.array([class_names.index(d.label) + 1 for d in dets], np.int64)))
    return out


def test_the_served_detector_runs_the_path_it_is_given(paths_repository, checkpoint, synth_data, tmp_path):
    from cxr.server.launcher import TritonServer
    from cxr.serving.pipeline import Pipeline
    from cxr.training.checkpoint import load_checkpoint

    repo, record, _ = paths_repository
    name = "openvino-bf16" if "skipped" not in record["paths"]["openvino-bf16"] else "openvino-fp32"
    folder = repo / "detector" / "1"
    ckpt = load_checkpoint(checkpoint)
    studies = [p.read_bytes() for p in sorted((synth_data / "images").glob("*.png"))[:4]]
    with TritonServer.on_free_ports(repo, log_file=tmp_path / "tritonserver.log", path=name) as server:
        assert server.choice.path.name == name and "pinned" in server.choice.reason
        served = _served(server.url, studies, list(ckpt.class_names))
    local = Pipeline(BY_NAME[name].detector(folder), ckpt.preprocess, ckpt.postprocess)(studies, batch_size=1)
    assert sum(len(d) for d in local) > 0, "the tiny model should detect something"
    report = compare(local, served, tolerance=SAME)
    assert report.passed and report.matched == report.n_ref == report.n_test, report.table()
    if name == "openvino-bf16":  # and it is not ONNX Runtime FP32 answering
        fp32 = Pipeline(FALLBACK.detector(folder), ckpt.preprocess, ckpt.postprocess)(studies, batch_size=1)
        assert not compare(fp32, served, tolerance=SAME).passed


def test_placing_an_artifact_removes_the_verdicts_of_the_files_it_replaces(paths_repository, checkpoint, tmp_path):
    """A record checked against other files must not choose the path: re-exporting removes it (FP32 serves)."""
    from cxr.export.commands import run_export
    from cxr.serving.paths import choose

    repo = tmp_path / "model_repository"
    shutil.copytree(paths_repository[0], repo)
    folder = repo / "detector" / "1"
    assert (folder / PATHS_FILE).is_file()
    run_export("onnx", checkpoint, repository=repo)
    assert not (folder / PATHS_FILE).exists()
    assert choose(folder, isa_line(cpu_info())).path is FALLBACK


def test_a_path_the_runtime_refuses_is_recorded_and_never_served(paths_repository, checkpoint, synth_data, tmp_path,
                                                                 monkeypatch):
    """OpenVINO can refuse a file on a CPU (seen: "Supported primitive descriptors list is empty for node ...
    MaxPool" with oneDNN capped at AVX2): that path is recorded as not run, with the runtime's reason in one
    line, and the others are still checked, timed and chosen from."""
    from cxr.export.paths import run_paths
    from cxr.serving import runtime

    def refuse(self, *args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nCheck '!getSupportedPrimitiveDescriptors()"
                           ".empty()' failed at src/plugins/intel_cpu/src/node.cpp:345:\nSupported primitive descriptors "
                           "list is empty for node: /backbone/body/maxpool/MaxPool type: Pooling\n")

    monkeypatch.setattr(runtime.OpenVinoDetector, "__init__", refuse)
    repo = tmp_path / "model_repository"
    shutil.copytree(paths_repository[0], repo, ignore=shutil.ignore_patterns("*.log"))
    record, choice = run_paths(checkpoint, repository=repo, data=synth_data, check_images=4, rounds=2)
    rows = record["paths"]
    refused = ["openvino-fp32"] + (["openvino-bf16"] if "BF16 yes" in record["isa"] else [])  # else: no BF16 here
    for name in refused:
        assert rows[name]["skipped"] == ("could not run here: RuntimeError: Supported primitive descriptors list is "
                                         "empty for node: /backbone/body/maxpool/MaxPool type: Pooling"), rows[name]
    assert rows["ort-fp32"]["parity"]["passed"] and choice.path.name == "ort-fp32"

