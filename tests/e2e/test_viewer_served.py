"""The pipeline's own results where a radiologist looks: a film through the served models into OHIF.

A DX film is stored in the viewer's Orthanc (``cxr viewer serve``'s :class:`ViewerServer`); ``cxr
predict`` sends it to the real embedded tritonserver serving a Mask R-CNN (``seg_server``,
tests/e2e/conftest.py) twice -- ``--seg`` (cxr_segment) and ``--saliency`` (cxr_explain) -- and
stores what it writes (SR, SEG, Parametric Maps, Secondary Captures) in that Orthanc by STOW-RS,
as a user's ``--stow`` does.  Debian's headless Chromium then opens the study in OHIF 3.13.2 and
the test asserts what a reader sees, every expectation read back from the stored files: the SR,
SEG and maps listed; before anything is loaded, the film is bare where the overlays will be;
each finding's name and score in the measurements panel and its box drawn on the film; the SEG's
colour inside its largest mask; the map fused in colour at its hottest pixel; no browser error.
The tiny model is random (plumbing, not accuracy): what it finds is what the test checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr.cli import main
from ohif_page import (
    VIEWPORT, assert_boxes_drawn, coloured, colour_at, edge_points, findings, is_grey, keep, load, on_screen, open_study,
    overlay_share, track_findings,
)

pytestmark = pytest.mark.e2e
MIN_SCORE = 0.05  # the random tiny model's scores are low; tests/e2e/test_segment_client.py uses the same


@pytest.fixture(scope="module")
def film(synth_data, tmp_path_factory) -> Path:
    """A DX film of the synthetic set with the test's own UIDs."""
    path = next(f for f in sorted((synth_data / "dicom").glob("*.dcm"))
                if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DX")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = "SERVED1"
    out = tmp_path_factory.mktemp("served-viewer") / "film.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _predict(capsys, film: Path, url: str, stow: str, *options: str) -> dict:
    rc = main(["predict", str(film), "--url", url, "--min-score", str(MIN_SCORE), "--stow", stow, "--json", *options])
    (outcome,) = json.loads(capsys.readouterr().out)
    assert rc == 0 and outcome.get("stow_error") is None, outcome
    return outcome


def _inside(mask: np.ndarray) -> tuple[float, float]:
    """A film point deep inside ``mask`` (bool [rows, cols]): the last pixel to survive erosion, as (x, y)
    at the pixel's centre."""
    core = mask.copy()
    while True:
        eroded = core.copy()
        eroded[1:, :] &= core[:-1, :]
        eroded[:-1, :] &= core[1:, :]
        eroded[:, 1:] &= core[:, :-1]
        eroded[:, :-1] &= core[:, 1:]
        if not eroded.any():
            break
        core = eroded
    ys, xs = np.nonzero(core)
    return float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5


def _largest_mask(seg: pydicom.Dataset) -> np.ndarray:
    """The SEG's largest segment as bool [rows, cols] (one frame per segment of a single-frame film)."""
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(bool)
    return frames[int(np.argmax(frames.reshape(len(frames), -1).sum(1)))]


def _hottest(pmap: pydicom.Dataset, film: pydicom.Dataset) -> tuple[float, float]:
    """The film point under the map's maximum (the map may be on a coarser grid than the film)."""
    values = pmap.pixel_array.reshape(int(pmap.Rows), int(pmap.Columns))
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return ((x + 0.5) * int(film.Columns) / int(pmap.Columns), (y + 0.5) * int(film.Rows) / int(pmap.Rows))


def test_the_served_pipelines_sr_seg_and_map_show_in_ohif(seg_server, viewer, page, film, tmp_path, capsys,
                                                         sr_and_gsps_pass_dciodvfy):
    source = pydicom.dcmread(film)
    viewer.store(film)
    stow = f"{viewer.url}/dicom-web"
    segmented = _predict(capsys, film, seg_server.url, stow, "--seg", str(tmp_path / "seg"), "--sr", str(tmp_path / "sr"))
    explained = _predict(capsys, film, seg_server.url, stow, "--saliency", str(tmp_path / "saliency"),
                         "--sr", str(tmp_path / "sr-explained"))
    (sr_file,), (seg_file,) = sorted((tmp_path / "sr").glob("*.dcm")), sorted((tmp_path / "seg").glob("*.dcm"))
    sr, seg = pydicom.dcmread(sr_file), pydicom.dcmread(seg_file)
    (other_sr,) = [pydicom.dcmread(p) for p in (tmp_path / "sr-explained").glob("*.dcm")]
    shown = findings(sr)
    assert shown and findings(other_sr) == shown  # cxr_segment and cxr_explain: one detector, the same findings
    pmaps = [pydicom.dcmread(p) for p in sorted((tmp_path / "saliency").glob("*.dcm"))]
    pmaps = [d for d in pmaps if d.SOPClassUID.name == "Parametric Map Storage"] or pytest.fail("no Parametric Map")
    assert len(segmented["stored"]) == 2 and len(explained["stored"]) > 2, (segmented, explained)
    inside, hottest = _inside(_largest_mask(seg)), _hottest(pmaps[0], source)

    seen = len(page.events)
    open_study(page, viewer.viewer_url(source.StudyInstanceUID), seg.SeriesDescription)
    listed = page.eval("document.body.innerText")
    for obj in (sr, seg, pmaps[0]):
        assert obj.SeriesDescription in listed, f"{obj.SeriesDescription!r} is not listed"
    bare = page.screenshot()  # the film alone: nothing drawn yet where the overlays will be
    keep(bare, "served-bare.png")
    for name, _, box in shown:
        for edge, points in edge_points(page, box):
            assert overlay_share(bare, points) == 0.0, f"overlay colour on the bare film along {name}'s {edge} edge"
    for what, point in (("mask", inside), ("map", hottest)):
        assert is_grey(colour_at(bare, on_screen(page, [point])[0])), f"the bare film is not grey at the {what} point"

    png = track_findings(page, sr, shown)
    keep(png, "served-sr.png")
    assert_boxes_drawn(page, png, shown)

    load(page, seg.SeriesDescription, "window.services.segmentationService.getSegmentations().length === 1")
    keep(coloured(page, inside, "no segment colour inside the served mask"), "served-seg.png")
    load(page, pmaps[0].SeriesDescription, f"(() => {{ const vp = {VIEWPORT}; return !!(vp && vp.getActors &&"
         " vp.getActors().length >= 2); })()")
    keep(coloured(page, hottest, "no heat-map colour at the served map's maximum"), "served-map.png")
    assert page.problems(seen) == []
