"""Every hostile corpus file sent to the live server fails alone, as INVALID_ARGUMENT naming
the problem; the server stays up and keeps answering valid studies, also concurrently."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e
HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST = json.loads((HOSTILE / "MANIFEST.json").read_text())


def _expected(entry: dict) -> str:
    """The manifest's outcome; for DICOM syntaxes it depends on the installed decoders (the
    server's Python backend runs in this same environment)."""
    if "decoder" not in entry:
        return entry["expect"]
    from pydicom.pixels import get_decoder

    try:
        return "ok" if get_decoder(entry["decoder"]).is_available else "cannot be decoded here"
    except NotImplementedError:
        return "cannot be decoded here"


BAD = [dict(e, expect=_expected(e)) for e in MANIFEST if _expected(e) != "ok"]


def _infer(client, data: bytes):
    inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return client.infer("cxr_detector", [inp], outputs=[grpcclient.InferRequestedOutput("SCORES")],
                        client_timeout=120)


@pytest.fixture(scope="module")
def valid(synth_data) -> bytes:
    return sorted((synth_data / "images").glob("*.png"))[0].read_bytes()


def _assert_rejected(client, entry) -> None:
    with pytest.raises(InferenceServerException) as err:
        _infer(client, (HOSTILE / entry["file"]).read_bytes())
    status = str(err.value.status())
    assert status == "StatusCode.INVALID_ARGUMENT", f"{entry['file']}: {status} {err.value.message()}"
    assert entry["expect"] in err.value.message(), f"{entry['file']}: {err.value.message()}"


def test_every_bad_file_is_invalid_argument_and_the_server_survives(client, server, valid):
    assert len(BAD) >= 40
    baseline = _infer(client, valid).as_numpy("SCORES")
    for i, entry in enumerate(BAD):
        _assert_rejected(client, entry)
        if i % 10 == 9:  # a valid study still gets the same answer in between
            np.testing.assert_array_equal(_infer(client, valid).as_numpy("SCORES"), baseline)
    np.testing.assert_array_equal(_infer(client, valid).as_numpy("SCORES"), baseline)
    assert server.process.poll() is None, "tritonserver exited"
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cxr_detector")


def test_accepted_files_are_served(client):
    for entry in MANIFEST:
        if _expected(entry) == "ok":
            assert _infer(client, (HOSTILE / entry["file"]).read_bytes()).as_numpy("SCORES").ndim == 2, entry["file"]


def test_bad_files_mixed_with_valid_ones_concurrently(client, server, valid):
    baseline = _infer(client, valid).as_numpy("SCORES")
    bombs = [e for e in BAD if "bomb" in e["file"] or "20000" in e["file"]]
    mixed = [e for e in BAD if e not in bombs][::4]
    with cf.ThreadPoolExecutor(8) as pool:
        good = [pool.submit(_infer, client, valid) for _ in range(12)]
        bad = [pool.submit(_assert_rejected, client, e) for e in bombs + mixed]
        for f in bad:
            f.result()
        for f in good:
            np.testing.assert_array_equal(f.result().as_numpy("SCORES"), baseline)
    assert server.process.poll() is None and client.is_server_ready()
