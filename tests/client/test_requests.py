"""The request builder without a server: a study whose header cannot be trusted fails as
DetectorError(status="CLIENT"), never as another library's exception and never after
the client has done the work (inflating, decoding) the header was checked to avoid."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr.client.errors import DetectorError
from cxr.client.requests import build_request

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST = json.loads((HOSTILE / "MANIFEST.json").read_text())


def _client_error(image) -> DetectorError:
    with pytest.raises(DetectorError) as err:
        build_request(image)
    assert err.value.status == "CLIENT" and not err.value.retryable
    return err.value


def test_jpeg_header_above_pillows_own_limit_is_a_client_error():
    # 20000 x 20000 is past Pillow's DecompressionBombError threshold (179 Mpx), which
    # used to escape build_request as a PIL exception
    assert "decompression bomb" in _client_error(HOSTILE / "jpeg_header_20000.jpg").message


def test_dicom_with_a_damaged_rows_element_is_a_client_error():
    # Rows (US) one byte long: pydicom raises when the value is first read
    data = bytearray((HOSTILE / "dicom_ok.dcm").read_bytes())
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows, explicit VR, length 2
    data[at + 6 : at + 8] = b"\x01\x00"
    del data[at + 9]
    assert "DICOM" in _client_error(bytes(data)).message
    dataset = pydicom.dcmread(io.BytesIO(bytes(data)))  # values still unread: the same failure, later
    assert "DICOM" in _client_error(dataset).message


def test_deflated_dicom_bomb_is_refused_before_inflating():
    # The corpus bomb inflates to 100 MB; the client used to inflate it all, then send it
    assert "inflates to more than" in _client_error(HOSTILE / "dicom_deflate_bomb.dcm").message


def test_header_only_checks_leave_damaged_pixels_to_the_server():
    # truncated pixel data behind an intact header: only the decoder can tell, so it is sent
    for name, size in (("png_truncated.png", (128, 128)), ("jpeg_truncated.jpg", (128, 128)),
                       ("dicom_truncated.dcm", (64, 64))):
        assert build_request(HOSTILE / name).image_size == size, name


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["expect"] == "ok"], ids=lambda e: e["file"])
def test_accepted_corpus_files_get_the_decoded_size_and_uid(entry):
    from cxr.decode.image import decode_image

    request = build_request(HOSTILE / entry["file"])
    if "decoder" not in entry:  # the decoded size only where this host can decode the syntax
        assert request.image_size == decode_image(HOSTILE / entry["file"]).pixels.shape
    if entry["file"].endswith(".dcm"):
        assert request.sop_instance_uid == pydicom.dcmread(HOSTILE / entry["file"]).SOPInstanceUID
        assert request.source.startswith("DICOM ")
    else:
        assert request.sop_instance_uid is None


def test_jpeg_size_comes_from_the_frame_header_not_an_embedded_thumbnail():
    def jpeg(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="JPEG")
        return buf.getvalue()

    main, thumb = jpeg(96, 64), jpeg(16, 12)
    app1 = b"Exif\x00\x00" + thumb  # a thumbnail (with its own SOF) inside an APP1 segment
    data = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    assert Image.open(io.BytesIO(data)).size == (96, 64)
    assert build_request(data).image_size == (64, 96)


# ------------------------------------------------------------------ request parameters


def test_every_postprocess_override_of_the_contract_can_be_sent():
    # iou_threshold could not be sent at all (the SDK knew score_threshold and top_k only)
    from cxr.contract import POSTPROCESS_OVERRIDES

    for parameter in POSTPROCESS_OVERRIDES:
        value = parameter.kind(1)  # 1.0 is a valid threshold, 1 a valid top_k
        request = build_request(HOSTILE / "png_ok_gray8.png", **{parameter.name: value})
        assert request.parameters == {parameter.name: value}, parameter.name
        assert type(request.parameters[parameter.name]) is parameter.kind


def test_an_out_of_range_iou_threshold_is_refused_before_sending():
    for value in (0.0, 1.5, float("nan"), "0.5", True):
        with pytest.raises(DetectorError) as err:
            build_request(HOSTILE / "png_ok_gray8.png", iou_threshold=value)
        assert err.value.status == "CLIENT" and "iou_threshold must be" in err.value.message, value


# ------------------------------------------------------------------ a study read once


def test_a_study_is_sent_as_read_and_gives_the_request_a_path_gives():
    from cxr.client.study import Study

    for name in ("dicom_ok.dcm", "png_ok_gray8.png", "jpeg_ok_gray.jpg", "dicom_ok_rle.dcm"):
        path = HOSTILE / name
        for study in (Study.read(path), Study.read(path, keep_dataset=True)):
            request, expected = build_request(study), build_request(path)
            assert request.inputs[0].data[0] == path.read_bytes()  # the bytes as read, never re-encoded
            assert (request.image_size, request.sop_instance_uid, request.source) == (
                expected.image_size, expected.sop_instance_uid, expected.source), name


def test_a_study_parses_its_dicom_once_and_decodes_it_once(monkeypatch):
    from counting import counting

    from cxr.client.study import Study

    path = HOSTILE / "dicom_ok.dcm"
    with counting(monkeypatch) as costs:
        study = Study.read(path, keep_dataset=True)
        build_request(study)
        assert study.dataset.SOPInstanceUID == study.header.dicom.sop_instance_uid
        assert study.decoded() is study.decoded()
    assert (costs.opens(path), costs["parse"], costs["dicom_decode"]) == (1, 1, 1), costs


# ------------------------------------------------------------------ pixel arrays


@pytest.mark.parametrize("array,bits", [
    (np.zeros((64, 64, 3), np.uint8), None),
    (np.zeros((4, 64), np.uint16), None),
    (np.full((64, 64), 4096, np.uint16), 12),
    (np.zeros((64, 64), np.uint16), 17),
    (np.zeros((64, 64), np.uint8), 12),
], ids=["3-channel", "too-small", "above-bits", "bits-17", "uint8-with-12-bits"])
def test_the_client_refuses_pixels_with_the_servers_own_rules_and_words(array, bits):
    from cxr.client.requests import Pixels
    from cxr.decode.image import decode_pixels
    from cxr.errors import InvalidImageError

    with pytest.raises(InvalidImageError) as server:
        decode_pixels(array, bits_stored=bits)
    assert _client_error(Pixels(array, bits_stored=bits)).message == str(server.value)
