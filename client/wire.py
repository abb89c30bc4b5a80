"""A ``ModelInfer`` request on the wire with the study's bytes copied once.

tritonclient's ``infer`` copies a tensor into the request several times before gRPC sees it
(the serialized BYTES tensor, the protobuf field, ``SerializeToString``): measured on loopback,
the Python client spent ~3 ms per MB of study above Triton's own request time where Triton's
C++ client (perf_analyzer) spends ~1.1; for an 8.4 MB film 25 ms against 10
(benchmarks/README.md, "What gRPC costs").  The KServe v2 ``ModelInferRequest`` is a protobuf
message: its small fields are serialized as usual and each input's bytes are appended as a
``raw_input_contents`` field (number 7, length-delimited), which protobuf readers accept after
the other fields.  The result is the message tritonclient would send (tested field by field
against tritonclient's own request builder), built with one copy of the data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_RAW_INPUT_CONTENTS = bytes([(7 << 3) | 2])  # field 7 of ModelInferRequest, wire type 2 (length-delimited)
# Parameter names the protocol reserves for itself (tritonclient refuses them as user parameters too).
RESERVED_PARAMETERS = ("sequence_id", "priority", "binary_data_output")


def model_infer_rpc(channel):
    """``ModelInfer`` on a gRPC channel (sync or asyncio) taking :func:`model_infer_request`'s bytes
    as they are and answering the parsed ``ModelInferResponse``."""
    from tritonclient.grpc import service_pb2

    return channel.unary_unary(MODEL_INFER, request_serializer=None,
                               response_deserializer=service_pb2.ModelInferResponse.FromString)


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tensor_buffers(datatype: str, data: np.ndarray) -> list:
    """The raw contents of one input as buffers (joined later, so copied once): BYTES elements
    each after its little-endian uint32 length (Triton's BYTES layout), other types row-major."""
    if datatype == "BYTES":
        out: list = []
        for element in np.asarray(data, dtype=object).reshape(-1):
            raw = element if isinstance(element, (bytes, bytearray, memoryview)) else str(element).encode("utf-8")
            out += [struct.pack("<I", len(raw)), raw]
        return out
    return [memoryview(np.ascontiguousarray(data)).cast("B")]


def model_infer_request(model_name: str, inputs: Sequence[tuple[str, str, Sequence[int], np.ndarray]], *,
                        model_version: str = "", outputs: Iterable[str] = (), parameters: Mapping | None = None,
                        timeout_us: int | None = None) -> bytes:
    """The serialized ``ModelInferRequest``: ``inputs`` are ``(name, datatype, shape, data)``, sent in order.

    ``parameters``: request parameters (str, bool, int or float, as tritonclient types them);
    ``timeout_us``: Triton's per-request timeout parameter.
    """
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model_name, model_version=model_version)
    for name, datatype, shape, _ in inputs:
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(int(d) for d in shape)
    for name in outputs:
        request.outputs.add().name = name
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = int(timeout_us)
    for key, value in (parameters or {}).items():
        if key in RESERVED_PARAMETERS:
            raise ValueError(f"request parameter {key!r} is reserved by the inference protocol")
        param = request.parameters[key]
        if isinstance(value, str):
            param.string_param = value
        elif isinstance(value, bool):  # before int: a bool is an int in Python
            param.bool_param = value
        elif isinstance(value, (int, np.integer)):
            param.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        else:
            raise ValueError(f"request parameter {key!r} must be str, bool, int or float, not {type(value).__name__}")
    parts: list = [request.SerializeToString()]
    for _, datatype, _, data in inputs:
        buffers = tensor_buffers(datatype, data)
        parts += [_RAW_INPUT_CONTENTS, varint(sum(len(b) for b in buffers)), *buffers]
    return b"".join(parts)
