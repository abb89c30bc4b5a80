"""A served study's buffers are not handed back to the kernel and faulted in again by the next request.

Without ``cxr.serving.allocator.keep_heap`` the preprocess stub took ~1,500 minor page faults per
1024x1024 16-bit study (its decoded film and float copies, several MB, unmapped after each request
and zero-filled page by page by the next); with it, ~30-100.  Counted from ``/proc``, not timed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts page faults in Linux /proc")]

# One study's decoded film alone is 2 MiB = 512 pages; its float copies are twice that and more.
MAX_FAULTS_PER_REQUEST = 400


def _stub_pid(server, model: str) -> int:
    """The Python backend stub serving ``model`` (a child of tritonserver)."""
    parent = server.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        if f"/{model}/1/model.py" in Path(f"/proc/{pid}/cmdline").read_text():
            return int(pid)
    raise AssertionError(f"no Python stub for {model} among tritonserver's children {children}")


def _minor_faults(pid: int) -> int:
    # /proc/PID/stat: the command name may hold spaces, so count fields after its closing parenthesis
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def _film_png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.normal(2000, 300, (1024, 1024)).clip(0, 4095)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_stub_keeps_its_heap_between_requests(client, server):
    import tritonclient.grpc as grpcclient

    studies = [_film_png(seed) for seed in range(3)]

    def infer(data: bytes) -> None:
        inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object))
        client.infer("cxr_detector", [inp], client_timeout=120)

    for data in studies:  # warm: the heap grows to its working set once
        infer(data)
    pid = _stub_pid(server, "preprocess")
    before = _minor_faults(pid)
    requests = 12
    for i in range(requests):
        infer(studies[i % len(studies)])
    per_request = (_minor_faults(pid) - before) / requests
    assert per_request < MAX_FAULTS_PER_REQUEST, (
        f"preprocess stub: {per_request:.0f} minor page faults per 1024x1024 study: its buffers go back to the "
        f"kernel between requests (cxr.serving.allocator.keep_heap not in effect?)")
