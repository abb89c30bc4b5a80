"""Saliency maps as DICOM (client/dicom_out/pmap.py, sc.py): one Parametric Map and one Secondary
Capture per explained finding, for a CR film (no Frame of Reference module) and a DX film (one with
a Frame of Reference module, on a grid that is not square), and pydicom's real 16x16 CR.

Each object goes through dicom3tools' dciodvfy (0 errors, no warnings beyond the listed ones), the
map's stored pixels are mapped back through its Real World Value Mapping to the result's own map,
the capture is marked derived and references its film, and both are stored in a real Orthanc by
C-STORE (the bridge's delivery, with the contexts the bridge requests) and by STOW-RS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ParametricMapStorage, SecondaryCaptureImageStorage

from cxr.boxes import LetterboxRecord
from cxr.client.dicom_out import parametric_maps, secondary_captures
from cxr.client.dicom_out.viewers import FILM_ORIENTATION, check_for_viewers, film_frame_of_reference
from cxr.client.results import Detection, ExplainedResult, StudyResult
from dicomnet import referenced_uids
from peers import assert_valid_iod, derived_object_films

DETECTIONS = (  # best first, as results come; boxes as fractions of the film (x1, y1, x2, y2)
    ("Cardiomegaly", 0.91, (0.30, 0.45, 0.75, 0.85)),
    ("Nodule", 0.55, (0.10, 0.10, 0.30, 0.30)),
    ("Effusion", 0.12, (0.60, 0.10, 0.95, 0.40)),
)


@pytest.fixture(scope="module")
def films(synth_data, tmp_path_factory) -> dict[str, pydicom.Dataset]:
    """CR without a Frame of Reference, DX with one on a 256 x 200 grid, pydicom's real CR (peers.derived_object_films)."""
    return derived_object_films(synth_data, tmp_path_factory.mktemp("films"))


def explained(film: pydicom.Dataset, *, size: int = 64) -> ExplainedResult:
    """A result for ``film``: the three DETECTIONS, each map a bump at its own box's centre, on the
    model's letterboxed grid (as ``cxr_explain`` returns them)."""
    rows, cols = int(film.Rows), int(film.Columns)
    record = LetterboxRecord.fit(rows, cols, size)
    h, w = record.resized_shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    detections, maps = [], []
    for label, score, (x1, y1, x2, y2) in DETECTIONS:
        box = (x1 * cols, y1 * rows, x2 * cols, y2 * rows)
        detections.append(Detection(label, score, box))
        cx, cy = (x1 + x2) / 2 * w, (y1 + y2) / 2 * h
        maps.append(0.1 + 0.8 * np.exp(-(((xx - cx) / (0.1 * w)) ** 2 + ((yy - cy) / (0.1 * h)) ** 2)))
    return ExplainedResult(detections=tuple(detections), model_name="cpu-demo", model_version="2026.12.1",
                           image_size=(rows, cols), latency_ms=1.0, sop_instance_uid=film.SOPInstanceUID,
                           saliency=np.stack(maps).astype(np.float32), record=record, masks=200, grid=8, seed=0)


def _round_trip(obj, path: Path) -> pydicom.Dataset:
    obj.save_as(path, enforce_file_format=True)
    assert_valid_iod(path)  # dicom3tools: 0 errors, only the listed warnings
    return pydicom.dcmread(path)


@pytest.mark.parametrize("which", ["CR", "DX", "CR16"])
def test_parametric_map_per_finding_decodes_to_the_results_map(films, which, tmp_path):
    film = films[which]
    had_frame = "FrameOfReferenceUID" in film
    result = explained(film)
    maps = parametric_maps(film, result, min_score=0.5)
    assert [m.InstanceNumber for m in maps] == [1, 2]  # Effusion 0.12 is below min_score
    assert "FrameOfReferenceUID" in film if had_frame else "FrameOfReferenceUID" not in film  # the film untouched
    for index, pm in enumerate(maps):
        ds = _round_trip(pm, tmp_path / f"{which}.pm{index}.dcm")
        assert ds.SOPClassUID == ParametricMapStorage and ds.StudyInstanceUID == film.StudyInstanceUID
        assert ds.SeriesInstanceUID != film.SeriesInstanceUID and ds.SeriesInstanceUID == maps[0].SeriesInstanceUID
        assert film.SOPInstanceUID in referenced_uids(ds)
        assert (ds.Rows, ds.Columns) == (film.Rows, film.Columns)
        assert ds.FrameOfReferenceUID == (film.FrameOfReferenceUID if had_frame else film_frame_of_reference(film))
        shared = ds.SharedFunctionalGroupsSequence[0]
        spacing = film.get("PixelSpacing") or film.ImagerPixelSpacing  # calibrated first, else at the detector
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in spacing]
        assert tuple(float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient) == FILM_ORIENTATION
        mapping = shared.RealWorldValueMappingSequence[0]
        values = ds.pixel_array.astype(np.float64) * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
        expected = result.saliency_map(index)
        np.testing.assert_allclose(values, expected, atol=1e-6)  # float pixels: the map itself
        peak = np.unravel_index(np.argmax(values), values.shape)  # the bump sits in its own finding's box
        x1, y1, x2, y2 = result.detections[index].box_xyxy_px
        assert x1 <= peak[1] <= x2 and y1 <= peak[0] <= y2, (which, index, peak)
        assert result.detections[index].label in ds.ContentDescription
        # Stored: the map's median (its baseline) at 0 and its maximum at 1, what OHIF's colour map spans
        # (it ignores the window); the window says the same for the viewers that read it.
        stored = ds.pixel_array.astype(np.float64)
        assert np.median(stored) == pytest.approx(0.0, abs=1e-6) and stored.max() == pytest.approx(1.0, abs=1e-6)
        voi = shared.FrameVOILUTSequence[0]
        assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.5, 1.0)
        check_for_viewers(ds, film)


def test_a_map_that_is_not_its_results_map_is_told_apart(films):
    """The decode check above can fail: the second finding's map is not the first one's."""
    result = explained(films["CR"])
    first, second = parametric_maps(films["CR"], result, max_maps=2)
    assert not np.allclose(first.pixel_array, second.pixel_array, atol=2 / 65535)


@pytest.mark.parametrize("which", ["CR", "DX", "CR16"])
def test_secondary_capture_per_finding_is_derived_and_references_its_film(films, which, tmp_path):
    film = films[which]
    result = explained(film)
    captures = secondary_captures(film, result, min_score=0.5)
    assert len(captures) == 2
    for index, sc in enumerate(captures):
        ds = _round_trip(sc, tmp_path / f"{which}.sc{index}.dcm")
        assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.StudyInstanceUID == film.StudyInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
        assert ds.ConversionType == "WSD" and result.detections[index].label in ds.DerivationDescription
        (source,) = ds.SourceImageSequence
        assert (source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID) == (film.SOPClassUID, film.SOPInstanceUID)
        assert ds.Modality not in ("CR", "DX")  # never routed back to the bridge as a film to read
        assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (film.Rows, film.Columns)
        check_for_viewers(ds, film)
        if which == "CR16":
            continue  # 16 x 16: no room to tell the heat map from the box and caption
        rgb = ds.pixel_array.astype(int)
        heat = np.abs(rgb[..., 0] - rgb[..., 2]) > 60  # Inferno's warm end is far from grey
        x1, y1, x2, y2 = (int(v) for v in result.detections[index].box_xyxy_px)
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        assert heat[cy - 3:cy + 4, cx - 3:cx + 4].all(), (which, index)  # the map's peak, in colour
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        assert grey.mean() > 0.3  # the film shows where the map is low


def test_what_is_not_an_explained_result_of_this_film_is_refused(films):
    film, other = films["CR"], films["DX"]
    result = explained(film)
    plain = StudyResult(detections=result.detections, model_name="m", model_version="1", image_size=result.image_size,
                        latency_ms=1.0, sop_instance_uid=film.SOPInstanceUID)
    for build in (parametric_maps, secondary_captures):
        with pytest.raises(ValueError, match="ExplainedResult"):
            build(film, plain)
        with pytest.raises(ValueError, match="source image is"):
            build(other, result)
    assert len(parametric_maps(film, result, max_maps=1)) == len(secondary_captures(film, result, max_images=1)) == 1
    with pytest.raises(ValueError, match="pass the source's own pixels"):
        secondary_captures(film, result, film=np.zeros((8, 8), np.float32))


def _stored(orthanc, study: str, film_sop: str) -> dict[str, list[pydicom.Dataset]]:
    from peers import qido_values

    found: dict[str, list[pydicom.Dataset]] = {}
    for inst in orthanc.qido_instances(study):
        ds = orthanc.instance(qido_values(inst, "00080018")[0])
        if film_sop in referenced_uids(ds):
            found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


@pytest.mark.e2e
def test_orthanc_stores_them_by_c_store_and_by_stow_rs(films, tmp_path):
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE

    from cxr.client.destinations import RESULT_SYNTAXES, CStoreDestination, StowDestination
    from cxr.client.pacs import PacsConfig
    from cxr.client.pacs_results import result_classes
    from peers import Orthanc

    config = PacsConfig(allowed_aes=("MODALITY1",), forward=("127.0.0.1", 1, "ORTHANC"), saliency=True)
    scu = AE(ae_title="CXR")
    for uid in result_classes(config):  # the contexts the bridge requests when it sends maps
        scu.add_requested_context(uid, list(RESULT_SYNTAXES))
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for which, how in (("CR", "C-STORE"), ("DX", "STOW-RS")):
            film, result = films[which], explained(films[which])
            objects = parametric_maps(film, result) + secondary_captures(film, result)
            if how == "C-STORE":
                CStoreDestination(scu, ("127.0.0.1", orthanc.dicom_port, orthanc.aet)).deliver(objects)
            else:
                StowDestination(orthanc.dicomweb).deliver(objects)
            stored = _stored(orthanc, film.StudyInstanceUID, film.SOPInstanceUID)
            assert {k: len(v) for k, v in stored.items()} == {ParametricMapStorage: 3, SecondaryCaptureImageStorage: 3}, how
            for i, ds in enumerate(stored[ParametricMapStorage] + stored[SecondaryCaptureImageStorage]):
                _round_trip(ds, tmp_path / f"stored-{which}-{i}.dcm")  # as the PACS keeps them
            first = min(stored[ParametricMapStorage], key=lambda d: int(d.InstanceNumber))
            assert np.array_equal(first.pixel_array, parametric_maps(film, result, max_maps=1)[0].pixel_array)
