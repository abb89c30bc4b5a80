"""Masks as DICOM Segmentation (client/dicom_out/seg.py): BINARY, one segment per finding class,
for a CR film (no Frame of Reference module), a DX film (one with a Frame of Reference module, on a
grid that is not square) and pydicom's real 16 x 16 CR.

Each SEG goes through dicom3tools' dciodvfy (0 errors, no warnings beyond the listed ones) and the
viewer rules, its segments read back (highdicom) as the union of each class's masks, it references
its film, and it is stored in a real Orthanc by C-STORE and by STOW-RS.
"""

from __future__ import annotations


import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from cxr.client.dicom_out.seg import segmentation
from cxr.client.results import Detection, Mask, StudyResult
from dicomnet import referenced_uids
from peers import assert_valid_iod, derived_object_films

DETECTIONS = (  # best first; ellipses inside boxes given as fractions of the film (x1, y1, x2, y2)
    ("Effusion", 0.91, (0.55, 0.50, 0.95, 0.90)),
    ("Nodule", 0.62, (0.10, 0.10, 0.35, 0.35)),
    ("Effusion", 0.40, (0.05, 0.55, 0.40, 0.95)),
    ("Cardiomegaly", 0.08, (0.30, 0.40, 0.70, 0.80)),
)


@pytest.fixture(scope="module")
def films(synth_data, tmp_path_factory) -> dict[str, pydicom.Dataset]:
    """CR without a Frame of Reference, DX with one on a 256 x 200 grid, pydicom's real CR (peers.derived_object_films)."""
    return derived_object_films(synth_data, tmp_path_factory.mktemp("segfilms"))


def segmented(film: pydicom.Dataset, detections=DETECTIONS) -> StudyResult:
    """A result for ``film`` whose detections carry elliptic masks inside their boxes."""
    rows, cols = int(film.Rows), int(film.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    out = []
    for label, score, (x1, y1, x2, y2) in detections:
        box = (x1 * cols, y1 * rows, x2 * cols, y2 * rows)
        cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        full = ((xx - cx) / max(rx, 1)) ** 2 + ((yy - cy) / max(ry, 1)) ** 2 <= 1
        ys, xs = np.nonzero(full)
        rect = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        out.append(Detection(label, score, box, mask=Mask(rect, full[rect[1]:rect[3], rect[0]:rect[2]], (rows, cols))))
    return StudyResult(tuple(out), "cpu-demo-seg", "2026.12.04+test", (rows, cols), 12.0, str(film.SOPInstanceUID))


@pytest.mark.parametrize("which", ["CR", "DX", "CR16"])
def test_the_seg_passes_dciodvfy_and_reads_back_as_each_class_union(films, which, tmp_path):
    film = films[which]
    result = segmented(film)
    seg = segmentation(film, result, min_score=0.1)
    path = tmp_path / f"{which}.seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert_valid_iod(path)
    back = hd.seg.segread(path)
    assert back.SegmentationType == "BINARY" and str(back.SOPClassUID) == SegmentationStorage
    labels = [s.SegmentLabel for s in back.SegmentSequence]
    assert labels == ["Effusion", "Nodule"]  # Cardiomegaly is below min_score; the two effusions are one segment
    effusion = back.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (effusion.CodeValue, effusion.CodingSchemeDesignator) == ("60046008", "SCT")  # the SR's finding code
    assert all(s.get("RecommendedDisplayCIELabValue") for s in back.SegmentSequence)
    pixels = back.get_pixels_by_source_instance([film.SOPInstanceUID], segment_numbers=[1, 2])[0]
    dets = result.detections
    np.testing.assert_array_equal(pixels[..., 0], dets[0].mask.full() | dets[2].mask.full())
    np.testing.assert_array_equal(pixels[..., 1], dets[1].mask.full())
    assert film.SOPInstanceUID in referenced_uids(back) and back.StudyInstanceUID == film.StudyInstanceUID
    assert back.FrameOfReferenceUID  # the film's own (DX) or one of its own (CR): the plane viewers need
    if which == "DX":
        assert back.FrameOfReferenceUID == film.FrameOfReferenceUID


def test_what_cannot_be_a_segmentation_is_refused(films):
    film = films["CR"]
    plain = StudyResult((Detection("Effusion", 0.9, (1.0, 1.0, 20.0, 20.0)),), "m", "1", (int(film.Rows), int(film.Columns)),
                        1.0, str(film.SOPInstanceUID))
    with pytest.raises(ValueError, match="has no mask: a Segmentation needs a segmentation model's result"):
        segmentation(film, plain)
    with pytest.raises(ValueError, match="no detection scores >= 0.95: nothing to segment"):
        segmentation(film, segmented(film), min_score=0.95)
    with pytest.raises(ValueError, match="boxes must be in the source's pixel grid"):
        segmentation(films["DX"], segmented(film))


@pytest.mark.e2e
def test_orthanc_stores_the_seg_by_c_store_and_by_stow_rs(films, tmp_path):
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE

    from cxr.client.destinations import RESULT_SYNTAXES, CStoreDestination, StowDestination
    from peers import Orthanc, qido_values

    scu = AE(ae_title="CXR")
    scu.add_requested_context(SegmentationStorage, list(RESULT_SYNTAXES))
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for which, how in (("CR", "C-STORE"), ("DX", "STOW-RS")):
            film = films[which]
            seg = segmentation(film, segmented(film))
            if how == "C-STORE":
                CStoreDestination(scu, ("127.0.0.1", orthanc.dicom_port, orthanc.aet)).deliver([seg])
            else:
                StowDestination(orthanc.dicomweb).deliver([seg])
            stored = [orthanc.instance(qido_values(i, "00080018")[0]) for i in orthanc.qido_instances(film.StudyInstanceUID)]
            segs = [ds for ds in stored if str(ds.SOPClassUID) == SegmentationStorage]
            assert [str(ds.SOPInstanceUID) for ds in segs] == [str(seg.SOPInstanceUID)], how
            kept = tmp_path / f"stored-{which}.dcm"
            segs[0].save_as(kept, enforce_file_format=True)
            assert_valid_iod(kept)  # as the PACS keeps it
            assert film.SOPInstanceUID in referenced_uids(segs[0])
