"""cxr.benchmarks.vocab: the bench's backends, runtime variants and row statuses."""

from __future__ import annotations

import pytest

from cxr.benchmarks.backends import BACKENDS, DEFAULT_BACKENDS, IN_PROCESS, OPT_IN, precision_of
from cxr.benchmarks.report import STATUSES
from cxr.benchmarks.vocab import BenchBackend, BenchStatus, RuntimeVariant
from cxr.contract import Artifact, Precision
from cxr.errors import InvalidOptionError


@pytest.mark.parametrize("kind,value", [(BenchBackend, "triton-shm"), (RuntimeVariant, "openvino-int8"),
                                        (BenchStatus, "failed-parity")])
def test_vocabularies_take_a_member_or_its_string(kind, value):
    member = kind(value)
    assert kind(member) is member and kind(value.upper()) is member and kind(f" {value} ") is member
    assert member == value and str(member) == value and f"{member}" == value and {value: 1}[member] == 1


def test_the_contract_backends_and_the_artifact_table_agree():
    assert {a.backend for a in Artifact} <= set(BenchBackend.values())
    assert BenchBackend.TENSORRT.artifact is Artifact.TRT and BenchBackend.PYTORCH.artifact is None
    assert BenchBackend.TRITON.precision(served="int8") is Precision.INT8


def test_report_order_puts_each_variant_after_the_backend_it_follows():
    assert BACKENDS == ("pytorch", "pytorch-bf16", "pytorch-autocast", "onnx", "onnx-int8", "openvino", "openvino-bf16",
                        "openvino-int8", "openvino-int8-bf16", "tensorrt", "triton", "triton-shm")
    assert set(IN_PROCESS) == set(BACKENDS) - {"triton", "triton-shm"}
    assert OPT_IN == ("pytorch-autocast",) and "pytorch-autocast" not in DEFAULT_BACKENDS


def test_a_variant_names_its_runtime_artifact_and_precision():
    assert RuntimeVariant.OPENVINO_INT8.engine == "openvino" and RuntimeVariant.OPENVINO_INT8.artifact is Artifact.ONNX_INT8
    assert RuntimeVariant.PYTORCH_BF16.engine == "torch" and RuntimeVariant.PYTORCH_BF16.artifact is None
    assert [precision_of(v) for v in RuntimeVariant.values()] == ["bf16", "bf16", "fp32", "bf16", "int8", "int8"]
    assert RuntimeVariant.OPENVINO_INT8_BF16.mode == "bf16"  # its unquantized layers at bf16; its peak is INT8's


def test_statuses_are_the_report_statuses():
    assert STATUSES == ("ok", "failed-parity", "unavailable")
    with pytest.raises(InvalidOptionError, match="unknown backend status 'broken'; choose one of: ok, failed-parity, unavailable"):
        BenchStatus("broken")
