"""Masks for users, through the real embedded tritonserver serving a Mask R-CNN (``seg_server``,
tests/e2e/conftest.py): ``cxr predict --seg`` writes a DICOM Segmentation per DICOM study (its
segments the union of each class's served masks, 0 dciodvfy errors), draws the mask outlines in the
annotated PNG and stores the SEG with the SR by STOW-RS; asked of a server without ``cxr_segment``
it (and ``cxr pacs --seg``) stops with one line; the PACS bridge with ``seg`` sends the SEG with the SR to a real Orthanc
by C-STORE.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from cxr import contract
from cxr.cli import main

pytestmark = pytest.mark.e2e
MIN_SCORE = 0.05


@pytest.fixture(scope="module")
def studies(synth_data, real_cr_files) -> list[Path]:
    """A synthetic DX film, pydicom's real CR and a PNG."""
    dx = next(f for f in sorted((synth_data / "dicom").glob("*.dcm"))
              if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DX")
    return [dx, real_cr_files[0], sorted((synth_data / "images").glob("*.png"))[0]]


@pytest.fixture(scope="module")
def served(seg_server, studies):
    """Each study's result from cxr_segment, as the SDK returns it."""
    from cxr.client import DetectorClient

    with DetectorClient(url=seg_server.url, model_name=contract.SEGMENT) as client:
        return [client.predict(p) for p in studies]


def _segments(path: Path) -> dict[str, np.ndarray]:
    """A SEG file's segments by label, as bool [rows, cols]."""
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns)).astype(bool)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]  # one segment: its identification may be shared by every frame
    return {labels[int(f.get("SegmentIdentificationSequence", shared.get("SegmentIdentificationSequence"))[0]
                       .ReferencedSegmentNumber)]: frames[i]
            for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)}


def test_predict_seg_writes_each_dicom_studys_segmentation(seg_server, studies, served, tmp_path, capsys,
                                                          sr_and_gsps_pass_dciodvfy):
    from peers import assert_valid_iod

    seg, sr = tmp_path / "seg", tmp_path / "sr"
    rc = main(["predict", *map(str, studies), "--url", seg_server.url, "--seg", str(seg), "--sr", str(sr),
               "--min-score", str(MIN_SCORE), "--json"])
    outcomes = json.loads(capsys.readouterr().out)
    assert rc == 0 and [o["result"]["model_name"] for o in outcomes] == [contract.SEGMENT] * 3
    dicoms = [(p, r) for p, r in zip(studies[:2], served[:2])]
    assert any(d.mask.area for _, r in dicoms for d in r.detections if d.score >= MIN_SCORE), "no mask to write"
    assert sorted(f.name for f in seg.iterdir()) == sorted(f"{p.stem}.seg.dcm" for p, _ in dicoms)  # none for the PNG
    for path, result in dicoms:
        shown = [d for d in result.detections if d.score >= MIN_SCORE]
        assert shown, f"the tiny model finds nothing on {path.name}"
        expected: dict[str, np.ndarray] = {}
        for d in shown:
            expected[d.label] = expected.get(d.label, np.zeros(result.image_size, bool)) | d.mask.full()
        written = seg / f"{path.stem}.seg.dcm"
        got = _segments(written)
        assert got.keys() == expected.keys()
        for label, pixels in expected.items():
            np.testing.assert_array_equal(got[label], pixels, err_msg=label)
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert pydicom.dcmread(written).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
            .ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert_valid_iod(written)
    assert len(list(sr.glob("*.sr.dcm"))) == 2


def test_annotated_png_draws_each_masks_outline(served, studies, tmp_path):
    from PIL import Image

    from cxr.client.predict import annotated_png, mask_outline

    ring = mask_outline(np.ones((5, 6), bool))
    assert ring.sum() == 5 * 6 - 3 * 4 and not ring[1:-1, 1:-1].any()  # the edge, width 1
    assert mask_outline(np.ones((5, 6), bool), 2).sum() == 5 * 6 - 1 * 2
    study, result = next((p, r) for p, r in zip(studies, served)
                         if any(d.mask.area for d in r.detections if d.score >= MIN_SCORE))
    bare = dataclasses.replace(result, detections=tuple(dataclasses.replace(d, mask=None) for d in result.detections))
    with_masks = np.asarray(Image.open(annotated_png(study, result, tmp_path / "m.png", min_score=MIN_SCORE)))
    boxes_only = np.asarray(Image.open(annotated_png(study, bare, tmp_path / "b.png", min_score=MIN_SCORE)))
    changed = (with_masks != boxes_only).any(-1)
    width = max(1, max(2, round(max(result.image_size) / 300)) // 2)
    outlines = np.zeros(result.image_size, bool)
    for d in result.detections:
        if d.score >= MIN_SCORE:
            x0, y0, x1, y1 = d.mask.rect
            outlines[y0:y1, x0:x1] |= mask_outline(d.mask.crop, width)
    assert changed.any() and not (changed & ~outlines).any()  # only outline pixels, and some of them


def test_predict_seg_stow_stores_the_segmentation_with_the_sr(seg_server, studies, tmp_path, capsys,
                                                             sr_and_gsps_pass_dciodvfy):
    from dicomnet import referenced_uids
    from peers import Orthanc

    film = pydicom.dcmread(studies[0])
    with Orthanc(tmp_path / "orthanc") as orthanc:
        rc = main(["predict", str(studies[0]), "--url", seg_server.url, "--seg", str(tmp_path / "seg"),
                   "--min-score", str(MIN_SCORE), "--stow", orthanc.dicomweb, "--json"])
        (outcome,) = json.loads(capsys.readouterr().out)
        assert rc == 0 and outcome.get("stow_error") is None and len(outcome["stored"]) == 2, outcome
        classes = {}
        for uid in outcome["stored"]:
            stored = orthanc.instance(uid)
            assert film.SOPInstanceUID in referenced_uids(stored)
            classes[pydicom.uid.UID(stored.SOPClassUID).name] = stored
    assert set(classes) == {"Comprehensive 3D SR Storage", "Segmentation Storage"}


def test_seg_without_cxr_segment_stops_with_one_line(server, studies, tmp_path, capsys):
    rc = main(["predict", str(studies[0]), "--url", server.url, "--seg", str(tmp_path / "seg")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not (tmp_path / "seg").exists()
    assert f"--seg needs a server that serves {contract.SEGMENT}" in err and "cxr export" in err
    rc = main(["pacs", "--seg", "--url", server.url, "--port", "0", "--allow-ae", "MODALITY1", "--forward",
               "127.0.0.1:11113:PACS", "--spool", str(tmp_path / "spool")])  # the bridge: before it listens
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"--seg needs a server that serves {contract.SEGMENT}" in err


def test_seg_and_saliency_are_refused_together(seg_server, studies, tmp_path, capsys):
    from cxr.client.pacs import PacsConfig
    from cxr.errors import InvalidOptionError

    rc = main(["predict", str(studies[0]), "--url", seg_server.url, "--seg", str(tmp_path), "--saliency", str(tmp_path)])
    assert rc == 2 and "two different models" in capsys.readouterr().err
    with pytest.raises(InvalidOptionError, match="two different models"):
        PacsConfig(allow_any=True, seg=True, saliency=True)


def test_pacs_bridge_with_seg_sends_the_segmentation_with_the_sr(seg_server, synth_data, tmp_path, caplog,
                                                                 sr_and_gsps_pass_dciodvfy):
    from dicomnet import referenced_uids, send
    from peers import Orthanc, qido_values

    from cxr.client.pacs import PacsBridge, PacsConfig
    from cxr.server.net import free_port

    caplog.set_level(logging.INFO, logger="cxr.pacs")
    ds = pydicom.dcmread(sorted((synth_data / "dicom").glob("*.dcm"))[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    with Orthanc(tmp_path / "orthanc") as orthanc:
        config = PacsConfig(port=free_port(), allowed_aes=("MODALITY1",), spool=tmp_path / "spool", seg=True,
                            forward=("127.0.0.1", orthanc.dicom_port, orthanc.aet), detector_url=seg_server.url,
                            timeout_s=60.0)
        with PacsBridge(config) as bridge:
            assert send(bridge.address[1], [ds]) == [0x0000]
            assert bridge.wait_idle(120) and bridge.stats["delivered"] == 1, caplog.text
        stored = [orthanc.instance(qido_values(i, "00080018")[0]) for i in orthanc.qido_instances(ds.StudyInstanceUID)]
        mine = [s for s in stored if ds.SOPInstanceUID in referenced_uids(s)]
        assert sorted(pydicom.uid.UID(s.SOPClassUID).name for s in mine) == ["Comprehensive 3D SR Storage",
                                                                             "Segmentation Storage"]
    assert "segmented:" in caplog.text and "SR+SEG" in caplog.text
