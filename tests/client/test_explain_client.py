"""Saliency maps for users: DetectorClient.explain / AsyncDetectorClient.explain, `cxr predict --saliency`
and `cxr pacs --saliency`, against the live session server."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

from cxr.cli import main  # noqa: E402
from cxr.client import AsyncDetectorClient, DetectorClient, DetectorError, ExplainedResult, StudyResult  # noqa: E402
from cxr.saliency import SaliencyConfig, to_original  # noqa: E402
from cxr.boxes import LetterboxRecord  # noqa: E402

pytestmark = pytest.mark.e2e
FAST = {"timeout_s": 120.0, "retries": 0}
SETTINGS = dict(masks=16, grid=4, seed=5)


@pytest.fixture(scope="module")
def client(server):
    with DetectorClient(url=server.url, **FAST) as c:
        yield c


@pytest.fixture(scope="module")
def studies(synth_data) -> dict[str, Path]:
    dx = next(f for f in sorted((synth_data / "dicom").glob("*.dcm"))
              if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DX")
    return {"DX": dx, "PNG": sorted((synth_data / "images").glob("*.png"))[1]}


def test_explain_gives_each_detection_its_map_on_the_original_grid(client, studies, reference):
    for name, path in studies.items():
        result = client.explain(path, **SETTINGS)
        assert isinstance(result, ExplainedResult) and result.model_name == "cxr_explain"
        assert (result.masks, result.grid, result.seed, result.method) == (16, 4, 5, "D-RISE")
        dets, maps, record = reference.explain(path.read_bytes(), SaliencyConfig(**SETTINGS))
        assert len(result.detections) == len(dets) and result.saliency.shape == maps.shape, name
        np.testing.assert_allclose(result.saliency, maps, atol=2e-3)
        for i in range(len(dets)):
            heat = result.saliency_map(i)
            assert heat.shape == result.image_size, name
            np.testing.assert_allclose(heat, to_original(maps[i], LetterboxRecord.from_array(record)), atol=2e-3)
        summary = result.to_dict()["saliency"]
        assert summary["maps"] == len(dets) and summary["masks"] == 16 and json.dumps(result.to_dict())
    assert sum(len(client.predict(p).detections) for p in studies.values()) > 0


def test_async_explain_equals_sync_and_predict_is_unchanged(server, client, studies):
    async def run():
        async with AsyncDetectorClient(url=server.url, **FAST) as aclient:
            return await aclient.explain(studies["PNG"], **SETTINGS), await aclient.predict(studies["PNG"])

    explained, predicted = asyncio.run(run())
    sync = client.explain(studies["PNG"], **SETTINGS)
    assert explained.detections == sync.detections and np.array_equal(explained.saliency, sync.saliency)
    assert type(predicted) is StudyResult and predicted.detections == sync.detections


def test_server_defaults_are_reported_when_not_asked(client, studies):
    result = client.explain(studies["PNG"], score_threshold=1.0)  # no detection: no masked pass at all
    assert result.detections == () and result.saliency.shape[0] == 0
    assert (result.masks, result.grid, result.seed) == (200, 8, 0)  # the committed config's defaults


@pytest.mark.parametrize("options,message", [
    ({"masks": 0}, "saliency_masks must be an integer in [1, 5000]"),
    ({"grid": 1}, "saliency_grid must be an integer in [2, 64]"),
    ({"seed": -1}, "saliency_seed must be"),
    ({"masks": 2.5}, "saliency_masks must be"),
])
def test_bad_settings_are_refused_before_sending(client, studies, options, message):
    with pytest.raises(DetectorError) as err:
        client.explain(studies["PNG"], **options)
    assert err.value.status == "CLIENT" and message in err.value.message


def test_a_server_without_the_explainer_names_the_fix(server, studies):
    with DetectorClient(url=server.url, explain_model_name="no_such_model", **FAST) as c:
        with pytest.raises(DetectorError) as err:
            c.explain(studies["PNG"])
    assert err.value.status == "NOT_FOUND" and "no 'no_such_model' model, so no saliency maps" in err.value.message
    assert "cxr export" in err.value.message and not err.value.retryable


def test_cxr_predict_saliency_writes_one_overlay_per_study(server, studies, tmp_path, capsys):
    from PIL import Image

    out, sr = tmp_path / "saliency", tmp_path / "sr"
    rc = main(["predict", str(studies["DX"]), str(studies["PNG"]), "--url", server.url, "--saliency", str(out),
               "--saliency-masks", "16", "--min-score", "0.05", "--sr", str(sr), "--json"])
    assert rc == 0
    outcomes = json.loads(capsys.readouterr().out)
    assert [o["result"]["saliency"]["masks"] for o in outcomes] == [16, 16]
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == sorted([f"{studies['DX'].stem}_dcm.png", f"{studies['PNG'].stem}.png"])
    for outcome, png in zip(outcomes, sorted(pngs, key=lambda p: 0 if p.name.endswith("_dcm.png") else 1)):
        img = np.asarray(Image.open(png).convert("RGB")).astype(int)
        found = len(outcome["result"]["detections"])
        assert found == outcome["result"]["saliency"]["maps"]
        if found:  # a heat map is colour on a grey film: some pixels are far from grey
            assert (np.abs(img[..., 0] - img[..., 2]) > 60).mean() > 0.01
            assert img.shape[1] >= min(found, 3) * 768  # a panel per finding, three to a row
    assert len(list(sr.glob("*.sr.dcm"))) == 1  # the SR of the DICOM study, built from the explained result
    shown = min(9, sum(d["score"] >= 0.05 for d in outcomes[0]["result"]["detections"]))
    for kind in ("pm", "sc"):  # the DICOM study's Parametric Maps and Secondary Captures, none for the PNG
        assert sorted(p.name for p in out.glob(f"*.{kind}*.dcm")) == [f"{studies['DX'].stem}.{kind}{k}.dcm"
                                                                     for k in range(1, shown + 1)]
    again = tmp_path / "again"  # the summary counts overlays and DICOM maps apart
    assert main(["predict", str(studies["DX"]), str(studies["PNG"]), "--url", server.url, "--saliency", str(again),
                 "--saliency-masks", "16", "--min-score", "0.05"]) == 0
    text = capsys.readouterr().out
    assert f"saliency PNGs   2 written to {again}" in text
    assert (f"saliency DICOM  {2 * shown} written to {again}" in text) == (shown > 0)


@pytest.fixture(scope="module")
def film_with_findings(client, synth_data) -> pydicom.Dataset:
    """The first synthetic DICOM film (CR or DX) the session's model finds something on, with a new SOP Instance UID."""
    for path in sorted((synth_data / "dicom").glob("*.dcm")):
        if client.predict(path).detections:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            return ds
    raise AssertionError("the session's model finds nothing on any synthetic DICOM film")


def _carriers(orthanc, ds: pydicom.Dataset) -> dict[str, int]:
    """How many instances of each SOP class Orthanc holds that reference ``ds`` (found with QIDO-RS)."""
    from dicomnet import referenced_uids
    from peers import qido_values

    counts: dict[str, int] = {}
    for inst in orthanc.qido_instances(ds.StudyInstanceUID):
        stored = orthanc.instance(qido_values(inst, "00080018")[0])
        if ds.SOPInstanceUID in referenced_uids(stored):
            counts[pydicom.uid.UID(stored.SOPClassUID).name] = counts.get(pydicom.uid.UID(stored.SOPClassUID).name, 0) + 1
    return counts


def test_cxr_predict_saliency_stow_stores_maps_and_captures(server, film_with_findings, tmp_path, capsys):
    from peers import Orthanc

    film = tmp_path / "film.dcm"
    film_with_findings.save_as(film, enforce_file_format=True)
    with Orthanc(tmp_path / "orthanc") as orthanc:
        rc = main(["predict", str(film), "--url", server.url, "--saliency", str(tmp_path / "out"),
                   "--saliency-masks", "16", "--min-score", "0.05", "--stow", orthanc.dicomweb, "--json"])
        (outcome,) = json.loads(capsys.readouterr().out)
        assert rc == 0 and outcome.get("stow_error") is None, outcome
        found = min(9, len(outcome["result"]["detections"]))
        assert found >= 1 and _carriers(orthanc, film_with_findings) == {
            "Comprehensive 3D SR Storage": 1, "Parametric Map Storage": found, "Secondary Capture Image Storage": found}


def test_cxr_pacs_saliency_sends_maps_and_captures_to_orthanc(server, film_with_findings, tmp_path, caplog):
    from dicomnet import send
    from peers import Orthanc
    from cxr.client.pacs import PacsBridge, PacsConfig
    from cxr.client.pacs_queue import study_id
    from cxr.server.net import free_port

    caplog.set_level(logging.INFO, logger="cxr.pacs")
    ds = film_with_findings
    with Orthanc(tmp_path / "orthanc") as orthanc:
        config = PacsConfig(port=free_port(), allowed_aes=("MODALITY1",), spool=tmp_path / "spool",
                            forward=("127.0.0.1", orthanc.dicom_port, orthanc.aet), detector_url=server.url,
                            timeout_s=120.0, saliency=True)
        with PacsBridge(config) as bridge:
            assert send(bridge.address[1], [ds]) == [0x0000]
            assert bridge.wait_idle(180) and bridge.stats["delivered"] == 1, caplog.text
        found = min(9, int(caplog.text.split("explained: ")[1].split(" saliency maps")[0]))
        assert found >= 1 and _carriers(orthanc, ds) == {  # by C-STORE, each referencing the film
            "Comprehensive 3D SR Storage": 1, "Parametric Map Storage": found, "Secondary Capture Image Storage": found}
    assert f"study {study_id(ds.SOPInstanceUID)} explained:" in caplog.text
    assert "saliency maps (D-RISE, 200 masks" in caplog.text
    assert f"SR+{found} PM+{found} SC" in caplog.text if found > 1 else "SR+PM+SC" in caplog.text
