"""A study's bytes read once, its DICOM parsed once, its pixels decoded at most once on the client:
``cxr predict`` against the live server with the PNG and the SR/GSPS, counted in this process
(tests/counting.py); and the one Study value the request, the PNG and the SR share."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("highdicom")

from counting import counting  # noqa: E402  (tests/counting.py)
from cxr.cli import main  # noqa: E402

pytestmark = pytest.mark.e2e


def test_predict_dicom_with_png_sr_gsps_reads_once_parses_once_decodes_once(server, synth_data, tmp_path,
                                                                             monkeypatch, capsys):
    study = tmp_path / "x.dcm"
    shutil.copy(sorted((synth_data / "dicom").glob("*.dcm"))[0], study)
    with counting(monkeypatch) as costs:
        rc = main(["predict", str(study), "--url", server.url, "--json", "--min-score", "0", "--png",
                   str(tmp_path / "png"), "--sr", str(tmp_path / "sr"), "--gsps", str(tmp_path / "gsps")])
    assert rc == 0
    [out] = json.loads(capsys.readouterr().out)
    assert len(out["written"]) == 3  # the PNG, the SR and the GSPS
    # Before: read 4 times (request, DICOM sniff, PNG decode, SR parse), parsed 3 times (header probe,
    # PNG decode, SR source); the server's own parse and decode happen in tritonserver, not here.
    assert (costs.opens(study), costs["parse"], costs["dicom_decode"]) == (1, 1, 1), costs


def test_predict_png_with_png_reads_once_decodes_once(server, synth_data, tmp_path, monkeypatch, capsys):
    study = tmp_path / "x.png"
    shutil.copy(sorted((synth_data / "images").glob("*.png"))[0], study)
    with counting(monkeypatch) as costs:
        rc = main(["predict", str(study), "--url", server.url, "--json", "--png", str(tmp_path / "png")])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)[0]["written"]) == 1
    assert (costs.opens(study), costs["pil_decode"], costs["parse"]) == (1, 1, 0), costs  # before: read twice


def test_predict_without_outputs_parses_only_the_header(server, synth_data, tmp_path, monkeypatch, capsys):
    study = tmp_path / "x.dcm"
    shutil.copy(sorted((synth_data / "dicom").glob("*.dcm"))[0], study)
    with counting(monkeypatch) as costs:
        assert main(["predict", str(study), "--url", server.url, "--json"]) == 0
    assert (costs.opens(study), costs["parse"], costs["dicom_decode"]) == (1, 1, 0), costs
