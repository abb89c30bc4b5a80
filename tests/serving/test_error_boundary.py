"""The serving layer's one error boundary (cxr.serving.boundary.respond / respond_batched),
through the three real model.py adapters.

Triton's ``triton_python_backend_utils`` exists only inside the Python-backend stub, so
these tests give the adapters a small stand-in with the same names and behaviour
(InferenceResponse with ``error``, Tensor, TritonError codes).  The live server tests
(tests/e2e) run the same adapters in the real stub.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cxr.boxes import LetterboxRecord
from cxr.contract import RAW_OUTPUTS, Step
from cxr.errors import InvalidImageError, InvalidRequestError
from cxr.serving.boundary import respond, respond_batched

REPO = Path(__file__).resolve().parents[2] / "model_repository"


class _TritonError(Exception):
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code

    def message(self) -> str:
        return str(self)


class _Tensor:
    def __init__(self, name: str, array) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self):
        return self._array


class _Response:
    def __init__(self, output_tensors, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, tensors: dict, parameters: dict | None = None) -> None:
        self.tensors = {k: _Tensor(k, v) for k, v in tensors.items()}
        self._parameters = json.dumps(parameters or {})

    def parameters(self) -> str:
        return self._parameters


def _pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TritonError, pb.Tensor, pb.InferenceResponse = _TritonError, _Tensor, _Response
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    logged: list[str] = []
    pb.Logger = types.SimpleNamespace(log_error=logged.append, log_info=logged.append)
    pb.logged = logged
    return pb


@pytest.fixture
def pb(monkeypatch):
    module = _pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def _adapter(step: Step, pb, params: dict):
    spec = importlib.util.spec_from_file_location(f"_adapter_{step}", REPO / str(step) / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports the stand-in pb_utils from sys.modules
    model = module.TritonPythonModel()
    config = {"parameters": {k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in params.items()}}
    model.initialize({"model_config": json.dumps(config)})
    return model


# -------------------------------------------------------------------- the helpers


def test_respond_answers_bad_input_and_bugs_per_request(pb):
    def handle(request):
        kind = request.tensors["kind"].as_numpy().item()
        if kind == "image":
            raise InvalidImageError("not a radiograph")
        if kind == "param":
            raise InvalidRequestError("top_k='x' is not a number")
        if kind == "bug":
            raise ZeroDivisionError("division by zero")
        return {"OUT": np.array([1])}

    out = respond(pb, [_Request({"kind": np.array(k)}) for k in ("ok", "image", "param", "bug", "ok")], handle,
                  step=Step.POSTPROCESS)
    assert [None if r.error is None else r.error.code for r in out] == [None, "INVALID_ARG", "INVALID_ARG", "INTERNAL", None]
    assert str(out[1].error) == "not a radiograph"
    assert str(out[3].error) == "internal error in postprocess (ZeroDivisionError: division by zero)"
    assert out[0].outputs["OUT"].tolist() == [1] and out[4].outputs["OUT"].tolist() == [1]
    assert any("ZeroDivisionError" in line and "Traceback" in line for line in pb.logged)  # for the bug report


def test_respond_batched_runs_once_and_isolates_the_request_that_breaks_it(pb):
    calls = []

    def run(batch):
        calls.append(len(batch))
        if (batch < 0).any():
            raise RuntimeError("negative input")
        return {"double": batch * 2}

    requests = [_Request({"x": np.array([[1.0], [2.0]])}), _Request({"x": np.array([[3.0]])})]
    out = respond_batched(pb, requests, lambda r: r.tensors["x"].as_numpy(), run, step=Step.DETECTOR)
    assert calls == [3]  # one joint call for the whole dynamic batch
    assert out[0].outputs["double"].tolist() == [[2.0], [4.0]] and out[1].outputs["double"].tolist() == [[6.0]]

    calls.clear()
    requests.insert(1, _Request({"x": np.array([[-1.0]])}))
    requests.append(_Request({}))  # no input tensor at all: cannot even be read
    out = respond_batched(pb, requests, lambda r: r.tensors["x"].as_numpy(), run, step=Step.DETECTOR)
    assert calls == [4, 2, 1, 1]  # the joint call fails, then each readable request alone
    assert [None if r.error is None else r.error.code for r in out] == [None, "INTERNAL", None, "INTERNAL"]
    assert "negative input" in str(out[1].error) and "KeyError" in str(out[3].error)
    assert out[2].outputs["double"].tolist() == [[6.0]]


# ------------------------------------------------------------ through the adapters


def _post_params() -> dict:
    return {"postprocess": {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100},
            "class_names": ["Nodule", "Mass"], "model_version": "v-test"}


def _raw(record: np.ndarray, k: int = 4) -> dict:
    boxes = np.tile(np.array([[10, 10, 50, 50]], np.float32), (1, k, 1))
    scores = np.array([[0.9] + [-1.0] * (k - 1)], np.float32)
    return dict(zip(RAW_OUTPUTS, (boxes, scores, np.ones((1, k), np.int64), np.array([[1]], np.int64)))) | {"RECORD": record}


def test_postprocess_adapter_fails_only_the_request_with_a_bug(pb):
    """An unexpected exception in postprocess used to fail the whole batch (execute raised)."""
    model = _adapter(Step.POSTPROCESS, pb, _post_params())
    good = LetterboxRecord.fit(200, 100, 64).to_array()[None]
    broken = np.zeros((1, 3), np.float32)  # a RECORD of the wrong length: LetterboxRecord.from_array fails
    requests = [_Request(_raw(good)), _Request(_raw(broken)), _Request(_raw(good), {"top_k": "many"}), _Request(_raw(good))]
    out = model.execute(requests)
    assert len(out) == 4
    assert out[0].error is None and out[3].error is None
    assert out[0].outputs["LABELS"].tolist() == [[b"Nodule"]] and out[0].outputs["MODEL_VERSION"].tolist() == [[b"v-test"]]
    assert out[1].error.code == "INTERNAL" and "internal error in postprocess" in str(out[1].error)
    assert out[2].error.code == "INVALID_ARG" and "top_k='many' is not a number" in str(out[2].error)


def test_preprocess_adapter_answers_each_study(pb):
    model = _adapter(Step.PREPROCESS, pb, {"preprocess": {"size": 64, "channels": 3}})
    pixels = np.full((1, 40, 30), 1000, np.uint16)
    out = model.execute([
        _Request({"PIXELS": pixels}, {"bits_stored": 12}),
        _Request({"IMAGE_BYTES": np.array([[b"not an image"]], dtype=object)}),
        _Request({"PIXELS": pixels}, {"bits_stored": "twelve"}),
        _Request({"PIXELS": pixels, "IMAGE_BYTES": np.array([[b"x"]], dtype=object)}),
    ])
    assert out[0].error is None and out[0].outputs["IMAGES"].shape == (1, 3, 64, 64)
    assert out[0].outputs["RECORD"].shape == (1, 8)
    assert [r.error.code for r in out[1:]] == ["INVALID_ARG"] * 3
    assert "unrecognised image format" in str(out[1].error)
    assert "bits_stored='twelve' is not a number" in str(out[2].error)
    assert "exactly one of IMAGE_BYTES" in str(out[3].error)
