"""Input data for NVIDIA's ``perf_analyzer`` (``--input-data FILE``) with real encoded studies.

So users with the NGC client container (``nvcr.io/nvidia/tritonserver:<ver>-py3-sdk``)
can reproduce ``cxr bench``'s served numbers with NVIDIA's own load generator.

The format (perf_analyzer docs, "Real Input Data"): a JSON object whose ``"data"``
list holds one entry per request, each mapping input names to tensors *without*
the batch dimension; perf_analyzer sends the entries round-robin.  A tensor can be
``{"content": {"b64": "..."}, "shape": [...]}`` - base64 of the tensor's raw
little-endian bytes in row-major order.  For a ``BYTES`` / ``STRING`` tensor every
element in those raw bytes is a 4-byte little-endian unsigned length followed by
the element's bytes (Triton's wire serialisation), so one encoded study as the
single element of ``IMAGE_BYTES`` (dims ``[1]``) is::

    {"data": [{"IMAGE_BYTES": {"content": {"b64": base64(uint32_le(len(png)) + png)}, "shape": [1]}}, ...]}

``PIXELS`` (UINT16 ``[H, W]``, variable shape) entries are the same with the raw
pixel bytes and ``"shape": [H, W]``; 8-bit films are widened by 257 so that the
server's default ``bits_stored=16`` scaling gives the same values (v * 257 / 65535 =
v / 255, up to float32 rounding).  The
ensemble's inputs are optional, so a file that names only one of them sends only
that one.  Command lines: :func:`command_lines`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cxr import contract

IMAGE_BYTES, PIXELS = contract.IMAGE_BYTES.name, contract.PIXELS.name


def serialize_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """Triton's raw BYTES serialisation: per element uint32 little-endian length + bytes."""
    return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)


def deserialize_bytes_tensor(raw: bytes) -> list[bytes]:
    """Inverse of :func:`serialize_bytes_tensor` (raises ValueError on a truncated buffer)."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError(f"truncated BYTES tensor: length prefix at offset {offset} of {len(raw)}")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise ValueError(f"truncated BYTES tensor: element of {n} bytes at offset {offset} of {len(raw)}")
        out.append(raw[offset:offset + n])
        offset += n
    return out


def bytes_entry(study: bytes) -> dict:
    """One request: the encoded study (PNG/JPEG/DICOM) as ``IMAGE_BYTES``."""
    b64 = base64.b64encode(serialize_bytes_tensor([study])).decode("ascii")
    return {IMAGE_BYTES: {"content": {"b64": b64}, "shape": [1]}}


def pixels_entry(pixels: np.ndarray) -> dict:
    """One request: uint8/uint16 ``[H, W]`` pixels as ``PIXELS`` (uint8 widened to the 16-bit range)."""
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PIXELS must be uint8/uint16 [H, W], got {arr.dtype} {arr.shape}")
    wide = arr.astype("<u2") * 257 if arr.dtype == np.uint8 else arr.astype("<u2")
    return {PIXELS: {"content": {"b64": base64.b64encode(np.ascontiguousarray(wide).tobytes()).decode("ascii")},
                     "shape": list(arr.shape)}}


def perf_analyzer_data(entries: Iterable[dict]) -> dict:
    data = list(entries)
    if not data:
        raise ValueError("perf_analyzer needs at least one input entry")
    return {"data": data}


def decode_entry(entry: dict) -> bytes | np.ndarray:
    """What one entry sends: the study bytes for IMAGE_BYTES, the uint16 array for PIXELS (round-trip check)."""
    if IMAGE_BYTES in entry:
        (element,) = deserialize_bytes_tensor(base64.b64decode(entry[IMAGE_BYTES]["content"]["b64"]))
        return element
    t = entry[PIXELS]
    return np.frombuffer(base64.b64decode(t["content"]["b64"]), dtype="<u2").reshape(t["shape"])


def write_perf_data(out: Path, studies: Sequence[bytes], pixels: Sequence[np.ndarray] = ()) -> dict[str, Path]:
    """``perf_analyzer_data.json`` (IMAGE_BYTES) and, with pixels, ``perf_analyzer_pixels.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"bytes": out / "perf_analyzer_data.json"}
    written["bytes"].write_text(json.dumps(perf_analyzer_data(bytes_entry(s) for s in studies)))
    if len(pixels):
        written["pixels"] = out / "perf_analyzer_pixels.json"
        written["pixels"].write_text(json.dumps(perf_analyzer_data(pixels_entry(p) for p in pixels)))
    return written


def command_lines(url: str = f"localhost:{contract.GRPC_PORT}", data: str = "perf_analyzer_data.json",
                  pixels: str | None = "perf_analyzer_pixels.json", concurrency: str = "1:8") -> list[str]:
    """perf_analyzer invocations matching ``cxr bench``'s served sweep (gRPC, batch 1, p95 stabilised)."""
    base = f"perf_analyzer -m {contract.ENSEMBLE} -u {url} -i grpc -b 1 --concurrency-range {concurrency} --percentile=95"
    lines = [f"{base} --input-data {data}"]
    if pixels:
        lines.append(f"{base} --input-data {pixels} --shared-memory=system")
    return lines
