"""cxr.contract: the one definition of the served contract, and its closed vocabularies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxr import contract
from cxr.boxes import LetterboxRecord
from cxr.contract import Artifact, Precision, ServeTarget, Step

ROOT = Path(__file__).resolve().parents[2]
# Every product file: the core, the four wings and the Triton adapters.
PRODUCT = sorted(
    [p for d in ("cxr", "training", "export", "client", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    + list((ROOT / "model_repository").glob("*/1/model.py"))
)
CONTRACT = ROOT / "cxr" / "contract.py"
# The graph's tensor names are common words ("images", "boxes", "labels"): they are
# checked where the graph is wired, i.e. in the files issue 12 found restating them and
# in every file that takes the graph's names (or the preprocess step's output) from
# the contract.
GRAPH_READERS = ["export/triton_config.py", "model_repository/preprocess/1/model.py",
                 "model_repository/detector/1/model.py", "model_repository/postprocess/1/model.py",
                 "export/onnx_export.py", "export/tensorrt.py"]
GRAPH_NAMES = {"DETECTOR_INPUT", "RAW_OUTPUTS", "SEGMENT_RAW_OUTPUTS", "MASK_PROBS", "raw_outputs", "detector_input",
               "detector_outputs", "preprocess_outputs"}


def _string_literals(path: Path) -> set[str]:
    """String constants of a module's code (docstrings excluded)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings}


def _wires_the_graph(path: Path) -> bool:
    """True for a file that imports the graph's names from the contract (or is listed in GRAPH_READERS)."""
    if path.relative_to(ROOT).as_posix() in GRAPH_READERS:
        return True
    return any(isinstance(node, ast.ImportFrom) and node.module == "cxr.contract"
               and any(alias.name in GRAPH_NAMES for alias in node.names)
               for node in ast.walk(ast.parse(path.read_text())))


def test_record_length_is_the_letterbox_record_layout():
    record = LetterboxRecord.fit(300, 200, 64, (0.1, 0.2))
    assert len(record.to_array()) == contract.RECORD_LENGTH == len(LetterboxRecord.ARRAY_FIELDS)
    assert contract.RECORD.dims == (contract.RECORD_LENGTH,)


def test_no_file_restates_a_tensor_name_or_artifact_file():
    names = {t.name for t in (*contract.ENSEMBLE_INPUTS, *contract.EXPLAIN_OUTPUTS, contract.RECORD)}
    names |= {contract.ENSEMBLE, contract.EXPLAIN, "IMAGES", *(a.file for a in Artifact), *(a.path for a in Artifact)}
    graph_names = {contract.DETECTOR_INPUT, *contract.SEGMENT_RAW_OUTPUTS}  # common words: only where the graph is wired
    found = {f.relative_to(ROOT).as_posix(): sorted(_string_literals(f) & (names | (graph_names if _wires_the_graph(f) else set())))
             for f in PRODUCT if f != CONTRACT}
    assert not {f: hits for f, hits in found.items() if hits}, "use the names in cxr.contract"


def test_the_scan_covers_every_wing_and_the_graph_readers():
    """The rule above guards nothing if the file list shrinks (a moved folder, a wrong glob)."""
    scanned = {p.relative_to(ROOT).as_posix() for p in PRODUCT}
    assert {"cxr/serving/boundary.py", "client/requests.py", "cxr/server/launcher.py", "benchmarks/perf_data.py",
            "export/repository.py", "export/commands.py", "benchmarks/backends.py", "training/train.py"} <= scanned
    assert set(GRAPH_READERS) <= scanned and all(_wires_the_graph(ROOT / f) for f in GRAPH_READERS)
    assert _wires_the_graph(ROOT / "cxr" / "serving" / "steps.py")  # found by its imports, not listed


def test_wire_and_numpy_types():
    assert contract.IMAGE_BYTES.wire_dtype == "BYTES" and contract.IMAGE_BYTES.numpy_dtype == "object"
    assert contract.PIXELS.wire_dtype == "UINT16" and contract.BOXES.numpy_dtype == "float32"
    assert [t.name for t in contract.detector_outputs(300)] == list(contract.RAW_OUTPUTS)
    assert contract.detector_outputs(300)[-1].reshape == () and contract.detector_outputs(300, for_postprocess=True)[-1].reshape is None


@pytest.mark.parametrize("kind,value", [(Precision, "int8"), (ServeTarget, "gpu-trt"), (Artifact, "onnx-int8"),
                                        (Step, "detector")])
def test_vocabularies_take_a_member_or_its_string(kind, value):
    member = kind(value)
    assert kind(member) is member and kind(value.upper()) is member and kind(f" {value} ") is member
    assert member == value and str(member) == value and f"{member}" == value and {value: 1}[member] == 1


def test_an_unknown_value_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown precision 'fp64'; choose one of: fp32, fp16, bf16, int8, int8-bf16"):
        Precision("fp64")
    with pytest.raises(ValueError, match=r"unknown target 'tpu'; choose one of: cpu, gpu-onnx, gpu-trt"):
        ServeTarget("tpu")


def test_the_artifact_table_is_consistent():
    assert len({a.file for a in Artifact}) == len(Artifact)
    assert [Artifact.for_cpu(p) for p in contract.CPU_PRECISIONS] == [Artifact.ONNX, Artifact.ONNX_INT8]
    with pytest.raises(ValueError, match="fp32 or int8"):
        Artifact.for_cpu(Precision.FP16)
    for target in ServeTarget:
        config = ROOT / "model_repository" / "detector" / ("config.pbtxt" if target.config_name is None
                                                             else f"configs/{target.config_name}.pbtxt")
        text = config.read_text()
        if target.artifact is not None:
            assert f'platform: "{target.artifact.platform}"' in text and target.artifact.file in text
        else:
            assert 'backend: "python"' in text
