"""Which runtime x precision ``cxr serve`` runs the detector on (cxr.serving.paths): the fastest path that
passed parity on this CPU, ONNX Runtime FP32 otherwise; a pin that cannot run here is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.errors import InvalidFileError, InvalidOptionError, UsageError
from cxr.serving.paths import FALLBACK, PATHS_FILE, choose, path_named
from cxr.server.launcher import TritonServer

ISA = "AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX yes"


def _folder(tmp_path: Path, rows: dict | None, isa: str = ISA, int8: bool = True) -> Path:
    folder = tmp_path / "detector" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    if int8:
        (folder / "model.int8.onnx").write_bytes(b"onnx")
    if rows is not None:
        (folder / PATHS_FILE).write_text(json.dumps({"isa": isa, "paths": rows}))
    return folder


def _row(passed: bool, ms: float, delta: float = 0.002) -> dict:
    return {"parity": {"passed": passed, "map_delta": delta}, "p50_ms": ms}


def test_without_a_record_onnx_runtime_fp32_serves_and_says_why(tmp_path):
    choice = choose(_folder(tmp_path, None), ISA)
    assert choice.path is FALLBACK and "cxr export paths" in choice.reason


def test_the_fastest_path_that_passed_serves_never_a_faster_one_that_failed(tmp_path):
    pytest.importorskip("openvino")
    rows = {"ort-fp32": _row(True, 20.0, 0.0), "ort-int8": _row(True, 18.0), "openvino-int8": _row(False, 8.0),
            "openvino-bf16": _row(True, 10.0)}
    choice = choose(_folder(tmp_path, rows), ISA)
    assert choice.path.name == "openvino-bf16" and choice.p50_ms == 10.0
    assert "10.0 ms" in choice.reason and "+0.0020" in choice.reason and "openvino-int8" not in choice.reason


def test_nothing_passed_means_fp32(tmp_path):
    choice = choose(_folder(tmp_path, {"ort-int8": _row(False, 5.0)}), ISA)
    assert choice.path is FALLBACK and "no path passed" in choice.reason


def test_a_path_that_cannot_run_here_is_not_chosen(tmp_path):
    """BF16 passed on an AMX machine; this CPU has no BF16 and the INT8 file is gone: FP32 serves."""
    rows = {"ort-fp32": _row(True, 20.0, 0.0), "openvino-bf16": _row(True, 10.0), "ort-int8": _row(True, 12.0)}
    no_bf16 = "AVX2 yes, AVX-512 yes, VNNI yes, BF16 no, AMX no"
    choice = choose(_folder(tmp_path, rows, isa=no_bf16, int8=False), no_bf16)
    assert choice.path is FALLBACK


def test_timings_from_another_cpu_are_taken_again_here(tmp_path):
    rows = {"ort-fp32": _row(True, 20.0, 0.0), "ort-int8": _row(True, 5.0)}
    folder = _folder(tmp_path, rows, isa="AVX2 yes, AVX-512 no, VNNI no, BF16 no, AMX no")
    timed = []
    choice = choose(folder, ISA, retime=lambda p: timed.append(p.name) or {"ort-fp32": 9.0, "ort-int8": 11.0}[p.name])
    assert sorted(timed) == ["ort-fp32", "ort-int8"] and choice.path.name == "ort-fp32"  # INT8 is slower here
    assert "timed now" in choice.reason
    assert choose(folder, ISA).path is FALLBACK  # and without a way to time them, FP32


def test_a_damaged_record_is_named(tmp_path):
    folder = _folder(tmp_path, None)
    (folder / PATHS_FILE).write_text("{not json")
    with pytest.raises(InvalidFileError, match="cxr export paths"):
        choose(folder, ISA)


def test_pins_and_their_refusals(tmp_path):
    with pytest.raises(InvalidOptionError, match="unknown detector path 'tensorrt'"):
        path_named("tensorrt")
    with pytest.raises(InvalidOptionError, match="not both"):
        TritonServer(tmp_path, precision="int8", path="openvino-fp32")
    assert TritonServer(tmp_path, precision="int8").path == "ort-int8"  # the older spelling
    _folder(tmp_path, None, int8=False)
    with pytest.raises(UsageError, match="ort-int8 cannot run here: no model.int8.onnx"):
        TritonServer(tmp_path, path="ort-int8").choose_path()
    assert TritonServer(tmp_path).choose_path().path is FALLBACK


def test_int8_with_a_bf16_remainder_runs_the_int8_file_on_openvino_and_needs_bf16(tmp_path):
    from cxr.serving.runtime import openvino_precision

    path = path_named("openvino-int8-bf16")
    assert (path.runtime, path.file, openvino_precision(path.precision)) == ("openvino", "model.int8.onnx", "bf16")
    assert openvino_precision(path_named("openvino-int8").precision) == "f32"  # plain INT8 keeps its remainder FP32
    folder = _folder(tmp_path, None)
    assert "no BF16" in path.available(folder, "AVX2 yes, AVX-512 yes, VNNI yes, BF16 no, AMX no")
    rows = {"ort-fp32": _row(True, 20.0, 0.0), "openvino-int8": _row(True, 9.0), "openvino-int8-bf16": _row(True, 8.0)}
    (folder / PATHS_FILE).write_text(json.dumps({"isa": ISA, "paths": rows}))
    assert choose(folder, ISA).path is path
