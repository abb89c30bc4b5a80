"""The server decodes a study once (cxr.serving.steps.decode_request_image, what the preprocess
model runs for every request): its format sniffed once, a DICOM parsed once and its transfer
syntax judged once, its pixels decoded once.  Counted in process (tests/counting.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counting import counting
from cxr.decode.transfer_syntaxes import decodable
from cxr.serving.steps import decode_request_image

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
ACCEPTED = [e for e in json.loads((HOSTILE / "MANIFEST.json").read_text()) if e["expect"] == "ok"]


@pytest.mark.parametrize("entry", ACCEPTED, ids=lambda e: e["file"])
def test_a_request_study_is_sniffed_parsed_judged_and_decoded_once(entry, monkeypatch):
    if "decoder" in entry and entry["decoder"] not in decodable():
        pytest.skip(f"no decoder for {entry['decoder']} on this install")
    data = (HOSTILE / entry["file"]).read_bytes()
    with counting(monkeypatch) as costs:
        image = decode_request_image(data, None, {})
    assert costs["sniff"] == 1, costs  # PNG/JPEG were sniffed a second time inside probe()
    if image.dicom is not None:
        # the syntax was judged in the header checks and again (twice) in decode_stored; pil_decode is
        # not asked: pydicom's Pillow plugin decodes JPEG Baseline frames inside the one DICOM decode
        assert (costs["parse"], costs["judge"], costs["dicom_decode"]) == (1, 1, 1), costs
    else:
        assert (costs["parse"], costs["judge"], costs["dicom_decode"], costs["pil_decode"]) == (0, 0, 0, 1), costs
