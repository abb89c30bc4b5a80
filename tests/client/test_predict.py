"""`cxr predict` against a real server: table/JSON, annotated PNG, SR and GSPS files."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("highdicom")

from cxr.cli import main  # noqa: E402

pytestmark = pytest.mark.e2e


def test_predict_folder_writes_png_sr_and_gsps(server, synth_data, tmp_path, capsys):
    studies = tmp_path / "in"
    studies.mkdir()
    for p in sorted((synth_data / "dicom").glob("*.dcm"))[:2] + sorted((synth_data / "images").glob("*.png"))[:1]:
        shutil.copy(p, studies / p.name)
    rc = main(["predict", str(studies), "--url", server.url, "--json", "--min-score", "0",
               "--png", str(tmp_path / "png"), "--sr", str(tmp_path / "sr"), "--gsps", str(tmp_path / "gsps")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 3 and all("result" in o for o in out)
    assert len(list((tmp_path / "png").glob("*.png"))) == 3
    srs = sorted((tmp_path / "sr").glob("*.sr.dcm"))
    assert len(srs) == 2 and len(list((tmp_path / "gsps").glob("*.dcm"))) == 2  # DICOM inputs only
    sr = pydicom.dcmread(srs[0])
    src = pydicom.dcmread(studies / srs[0].name.replace(".sr.dcm", ".dcm"))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
    refs = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence for item in study.ReferencedSeriesSequence]
    assert src.SOPInstanceUID in refs


def test_predict_table_and_failures(server, synth_data, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    good = sorted((synth_data / "images").glob("*.png"))[0]
    bad.write_bytes(good.read_bytes()[:2000])
    rc = main(["predict", str(good), str(bad), "--url", server.url, "--min-score", "0"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "FAILED  INVALID_ARGUMENT" in captured.out and "truncated" in captured.out
    assert good.name in captured.out
    assert "1 of 2 studies failed" in captured.err


def test_predict_unreachable_server_is_one_line(tmp_path, synth_data, capsys):
    from cxr.server.net import free_port

    good = sorted((synth_data / "images").glob("*.png"))[0]
    rc = main(["predict", str(good), "--url", f"127.0.0.1:{free_port()}", "--timeout", "2"])
    captured = capsys.readouterr()
    assert rc == 1 and "UNAVAILABLE" in captured.out


def test_predict_serve_starts_and_stops_its_own_server(repository, synth_data, tmp_path, capsys):
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("tritonserver.log"))
    good = sorted((synth_data / "images").glob("*.png"))[0]
    rc = main(["predict", str(good), "--serve", str(repo), "--json", "--min-score", "0"])
    assert rc == 0
    [out] = json.loads(capsys.readouterr().out)
    assert "result" in out
    log = (repo / "tritonserver.log").read_text()
    assert "Started GRPCInferenceService" in log  # the run's own server, logging into the repository
