"""cxr.client.wire builds the ModelInfer request tritonclient would send, with the study copied once."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request  # tritonclient's own builder: the oracle

from cxr.client.wire import model_infer_request, varint


def _tritonclients(model, inputs, *, version="", outputs=(), parameters=None, timeout=None):
    tensors = []
    for name, datatype, shape, data in inputs:
        t = grpcclient.InferInput(name, list(shape), datatype)
        t.set_data_from_numpy(data)
        tensors.append(t)
    return _get_inference_request(model_name=model, inputs=tensors, model_version=version, request_id="",
                                  outputs=[grpcclient.InferRequestedOutput(n) for n in outputs], sequence_id=0,
                                  sequence_start=False, sequence_end=False, priority=0, timeout=timeout,
                                  parameters=parameters)


@pytest.mark.parametrize("case", ["bytes", "pixels", "two-inputs"])
def test_the_request_is_the_one_tritonclient_builds(case):
    study = bytes(range(256)) * 4099 + b"\x00end"  # ~1 MB, every byte value, odd length
    pixels = (np.arange(37 * 53, dtype=np.uint16).reshape(1, 37, 53) * 31).astype(np.uint16)
    inputs = {"bytes": [("IMAGE_BYTES", "BYTES", [1, 1], np.array([[study]], dtype=object))],
              "pixels": [("PIXELS", "UINT16", [1, 37, 53], pixels)],
              "two-inputs": [("IMAGE_BYTES", "BYTES", [1, 2], np.array([[study, b""]], dtype=object)),
                             ("PIXELS", "UINT16", [1, 37, 53], pixels)]}[case]
    params = {"score_threshold": 0.25, "top_k": 7, "note": "ü", "flag": True}
    ours = model_infer_request("cxr_detector", inputs, model_version="2", outputs=["BOXES", "SCORES"],
                               parameters=params, timeout_us=1_500_000)
    theirs = _tritonclients("cxr_detector", inputs, version="2", outputs=["BOXES", "SCORES"], parameters=params,
                            timeout=1_500_000)
    assert service_pb2.ModelInferRequest.FromString(ours) == theirs
    assert len(ours) == len(theirs.SerializeToString())  # same message, fields in another order


def test_parameters_are_typed_as_tritonclient_types_them_and_bad_ones_refused():
    parsed = service_pb2.ModelInferRequest.FromString(
        model_infer_request("m", [], parameters={"b": False, "i": 3, "f": 0.5, "s": "x"}))
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in parsed.parameters.items()}
    assert kinds == {"b": "bool_param", "i": "int64_param", "f": "double_param", "s": "string_param"}
    with pytest.raises(ValueError, match="reserved"):
        model_infer_request("m", [], parameters={"priority": 1})
    with pytest.raises(ValueError, match="must be str, bool, int or float"):
        model_infer_request("m", [], parameters={"x": [1]})


def test_varint_is_protobufs():
    assert [varint(n) for n in (0, 1, 127, 128, 300, 2**21)] == [b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02",
                                                                 b"\x80\x80\x80\x01"]
    with pytest.raises(ValueError):
        varint(-1)
