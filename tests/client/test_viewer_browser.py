"""What a radiologist sees: our results in OHIF 3.13.2, in a real browser.

The viewer of ``cxr viewer serve`` (:class:`ViewerServer`: Orthanc with DICOMweb + OHIF under
/ohif/, in its private network namespace) holds a synthetic DX film with our SR and GSPS,
and a bare copy of the film.  Debian's headless Chromium (tests/browser.py, software WebGL)
opens them as a user does -- the study, a double-click on the SR, "Yes" to track its
measurements -- and the test asserts what is on screen: the SR listed, each finding's name
and score as the SR file holds them, the box drawn where the SR puts it (overlay-coloured
pixels along its edges, where the bare film has none), no error in the console.

Set CXR_VIEWER_SCREENSHOTS=DIR to keep the screenshots (docs/viewer/ holds the ones the
README shows).  The SEG and the Parametric Map our writers make for a Mask R-CNN's masks and a
D-RISE map (client/dicom_out/seg.py, pmap.py) show over the film in their colours.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr.boxes import LetterboxRecord
from cxr.client.dicom_out import parametric_maps, presentation_state, segmentation, structured_report
from cxr.client.results import Detection, ExplainedResult, Mask, StudyResult
from ohif_page import (
    VIEWPORT, assert_boxes_drawn, centre, coloured, colour_at, edge_points, findings, is_grey, keep, load, on_screen,
    open_study, overlay_share, settle, store, track, track_findings,
)

DETECTIONS = (Detection("Cardiomegaly", 0.5717, (70.0, 100.0, 180.0, 200.0)),
              Detection("Effusion", 0.42, (20.0, 140.0, 64.0, 230.0)))
MASK_BOX, MAP_BOX = (70, 100, 180, 200), (20, 140, 64, 230)  # film pixels of the SEG's mask and the map's hot region


@pytest.fixture(scope="module")
def film(synth_data, tmp_path_factory) -> Path:
    """A DX film of the synthetic set (the test's own copy: its UIDs are the test's)."""
    for path in sorted((synth_data / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.Modality == "DX":
            return _copy(ds, tmp_path_factory.mktemp("viewer") / "film.dcm", "VIEWER1")
    raise AssertionError("the synthetic set has no DX film")


def _copy(ds: pydicom.Dataset, out: Path, accession: str) -> Path:
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = accession
    ds.save_as(out, enforce_file_format=True)
    return out


def _result(ds: pydicom.Dataset, detections=DETECTIONS) -> StudyResult:
    return StudyResult(detections=detections, model_name="cpu-demo", model_version="1",
                       image_size=(int(ds.Rows), int(ds.Columns)), latency_ms=1.0, sop_instance_uid=ds.SOPInstanceUID)


def test_our_sr_is_listed_named_scored_and_boxed_in_ohif(viewer, page, film, tmp_path):
    ds = pydicom.dcmread(film)
    sr, gsps = structured_report(ds, _result(ds)), presentation_state(ds, _result(ds))
    store(viewer, tmp_path, film, sr, gsps)
    seen = len(page.events)
    open_study(page, viewer.viewer_url(ds.StudyInstanceUID), sr.SeriesDescription)
    assert gsps.SeriesDescription in page.eval("document.body.innerText")  # listed (OHIF cannot draw GSPS: #4106)
    shown = findings(sr)
    png = track_findings(page, sr, shown)  # the panel lists each finding by name, with its score
    keep(png, "sr-findings.png")
    assert_boxes_drawn(page, png, shown)
    assert page.problems(seen) == []


def test_a_bare_film_shows_no_overlay_where_the_box_would_be(viewer, page, film, tmp_path):
    """The control: the same film without results, the same box positions, no overlay colour."""
    bare = pydicom.dcmread(_copy(pydicom.dcmread(film), tmp_path / "bare.dcm", "VIEWER2"))
    store(viewer, tmp_path, tmp_path / "bare.dcm")
    seen = len(page.events)
    open_study(page, viewer.viewer_url(bare.StudyInstanceUID), "DX")
    png = page.screenshot()
    keep(png, "bare-film.png")
    sr = structured_report(bare, _result(bare))  # the boxes the other test draws, read back the same way
    sampled = []
    for name, _, box in findings(sr):
        for edge, points in edge_points(page, box):
            assert overlay_share(png, points) == 0.0, f"overlay colour on the bare film along {name}'s {edge} edge"
            assert all(is_grey(colour_at(png, p)) for p in points), f"{name}'s {edge} edge: not the film's grey"
            sampled += points
    for what, box in (("mask", MASK_BOX), ("map", MAP_BOX)):  # where the other test finds the overlays' colours
        (point,) = on_screen(page, [centre(box)])
        assert is_grey(colour_at(png, point)), f"the bare film is not grey at the {what} centre"
        sampled.append(point)
    assert np.mean([max(colour_at(png, p)) for p in sampled]) > 40, "the film is not shown where the test looks"
    assert page.problems(seen) == []


def test_an_sr_without_findings_says_so_in_ohif(viewer, page, film, tmp_path):
    ds = pydicom.dcmread(_copy(pydicom.dcmread(film), tmp_path / "normal.dcm", "VIEWER3"))
    sr = structured_report(ds, _result(ds, detections=()))
    store(viewer, tmp_path, tmp_path / "normal.dcm", sr)
    seen = len(page.events)
    open_study(page, viewer.viewer_url(ds.StudyInstanceUID), sr.SeriesDescription)
    track(page, sr, 1)
    (caption,) = [i.TextValue for g in sr.ContentSequence[-1].ContentSequence for i in g.ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    page.wait(f"document.body.innerText.includes({caption!r})")  # "No finding (cpu-demo 1)", as the SR says
    settle(page)
    keep(page.screenshot(), "sr-no-finding.png")
    assert page.problems(seen) == []


def _mask_and_map_results(ds: pydicom.Dataset) -> tuple[StudyResult, ExplainedResult]:
    """A Mask R-CNN's result with one mask filling MASK_BOX, and an explained result whose one map is
    hot over MAP_BOX (on the model's resized grid, as cxr_explain returns it), for the film ``ds``."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    x1, y1, x2, y2 = MASK_BOX
    mask = Mask((x1, y1, x2, y2), np.ones((y2 - y1, x2 - x1), bool), (rows, cols))
    segmented = _result(ds, (Detection("Cardiomegaly", 0.5717, tuple(map(float, MASK_BOX)), mask=mask),))
    record = LetterboxRecord.fit(rows, cols, 128)
    h, w = record.resized_shape
    saliency = np.full((1, h, w), 0.05, np.float32)
    x1, y1, x2, y2 = (round(v * record.scale) for v in MAP_BOX)
    saliency[0, y1:y2, x1:x2] = 0.9
    explained = ExplainedResult(detections=(Detection("Effusion", 0.42, tuple(map(float, MAP_BOX))),),
                                model_name="cpu-demo", model_version="1", image_size=(rows, cols), latency_ms=1.0,
                                sop_instance_uid=ds.SOPInstanceUID, saliency=saliency, record=record, masks=200,
                                grid=8, seed=0)
    return segmented, explained


def test_our_seg_and_map_writers_show_over_the_film(viewer, page, film, tmp_path):
    """What cxr predict --seg and --saliency write (client/dicom_out/seg.py, pmap.py: add_film_plane and
    check_for_viewers inside): OHIF draws the mask in its segment colour and fuses the map in colour,
    where they are on the film (the bare film is grey there)."""
    ds = pydicom.dcmread(_copy(pydicom.dcmread(film), tmp_path / "masks.dcm", "VIEWER4"))
    segmented, explained = _mask_and_map_results(ds)
    seg = segmentation(ds, segmented)
    pmap = parametric_maps(ds, explained)[0]
    store(viewer, tmp_path, tmp_path / "masks.dcm", seg, pmap)
    seen = len(page.events)
    open_study(page, viewer.viewer_url(ds.StudyInstanceUID), seg.SeriesDescription)
    load(page, seg.SeriesDescription, "window.services.segmentationService.getSegmentations().length === 1")
    png = coloured(page, centre(MASK_BOX), "no segment colour at the mask's centre")
    keep(png, "seg-film-plane.png")
    # The map is fused over the film: the viewport then holds two volumes.
    load(page, pmap.SeriesDescription, f"(() => {{ const vp = {VIEWPORT}; return !!(vp && vp.getActors &&"
          " vp.getActors().length >= 2); })()")
    png = coloured(page, centre(MAP_BOX), "no heat-map colour at the map's hot centre")
    keep(png, "pmap-film-plane.png")
    assert page.problems(seen) == []
