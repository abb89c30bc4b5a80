"""DICOM SR (TID 1500) and GSPS outputs: written with save_as, checked after dcmread.

Sources are pydicom's real CR MONOCHROME1 images (16x16 pixels, with window and
ImagerPixelSpacing) and a synthetic 1024x1024 DX MONOCHROME2 image built here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr.client.dicom_out import PRIVATE_SCHEME, finding_code, presentation_state, structured_report
from cxr.client.results import Detection, StudyResult
from cxr.labels import NIH_FINDINGS, VINDR_CLASSES, VINDR_NO_FINDING

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

DX_DETECTIONS = (
    Detection("Cardiomegaly", 0.87, (300.0, 400.5, 720.0, 800.0), (42.9, 57.3, 103.0, 114.4)),
    Detection("Effusion", 0.42, (10.0, 700.0, 250.0, 1000.0)),
    Detection("Nodule", 0.15, (600.25, 200.75, 640.5, 240.0)),
)


def _dx_source(*, drop: tuple[str, ...] = ()) -> pydicom.Dataset:
    """A 1024x1024 DX MONOCHROME2 image as a modality would send it (12 bits in 16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID = "TEST^DX", "DX0001"
    ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
    ds.AccessionNumber, ds.StudyID = "ACC0001", "1"
    ds.StudyDate, ds.StudyTime = "20240115", "101500"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.143, 0.143]
    ds.Rows = ds.Columns = 1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.zeros((1024, 1024), dtype=np.uint16).tobytes()
    for keyword in drop:
        delattr(ds, keyword)
    return ds


@pytest.fixture
def dx_source() -> pydicom.Dataset:
    return _dx_source()


@pytest.fixture
def cr_source(real_cr_files) -> pydicom.Dataset:
    ds = pydicom.dcmread(real_cr_files[0])
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    return ds


def _result(source: pydicom.Dataset, detections=DX_DETECTIONS) -> StudyResult:
    return StudyResult(
        detections=tuple(detections),
        model_name="frcnn-r50-fpn",
        model_version="2024.01.1",
        image_size=(int(source.Rows), int(source.Columns)),
        latency_ms=37.5,
        sop_instance_uid=source.SOPInstanceUID,
    )


def _rectangle(box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])


def _texts(group, concept_value: str) -> list[str]:
    """TEXT values of a measurement group's direct children with the given concept."""
    items = group[0].ContentSequence
    return [item.TextValue for item in items if item.ConceptNameCodeSequence[0].CodeValue == concept_value]


def _write_read(obj, path: Path) -> pydicom.Dataset:
    obj.save_as(path)
    return pydicom.dcmread(path)


# --- finding codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Cardiomegaly", ("CARDIOMEGALY", PRIVATE_SCHEME)),  # SCT code ambiguous in DICOM
        ("Effusion", ("60046008", "SCT")),
        ("Pleural effusion", ("60046008", "SCT")),
        ("Pneumothorax", ("36118008", "SCT")),
        ("Mass", ("4147007", "SCT")),
        ("Nodule", ("27925004", "SCT")),
        ("Infiltrate", ("112121", "DCM")),
        ("infiltration", ("112121", "DCM")),
        ("Lung Opacity", ("112001", "DCM")),
        ("No finding", ("111286", "DCM")),
        ("Atelectasis", ("ATELECTASIS", PRIVATE_SCHEME)),
        ("Pleural_Thickening", ("PLEURAL_THICK", PRIVATE_SCHEME)),
        ("pleural  thickening", ("PLEURAL_THICK", PRIVATE_SCHEME)),
        ("Nodule/Mass", ("NODULE_MASS", PRIVATE_SCHEME)),
    ],
)
def test_finding_code_known_names(label, expected):
    code = finding_code(label)
    assert (code.value, code.scheme_designator) == expected


def test_finding_code_standard_codes_match_pydicom_dictionary():
    """Every SCT/DCM code we emit has, everywhere in DICOM's own dictionary, our meaning.

    (That is how SCT 287272002 was caught: "Cardiomegaly" in one CID, "Enlarged septal
    foramen of heart" in another.)
    """
    from pydicom.sr._concepts_dict import concepts  # the content mapping resource pydicom ships

    meanings: dict[tuple[str, str], set[str]] = {}
    for scheme in ("SCT", "DCM"):
        for entry in concepts[scheme].values():
            for value, (meaning, _cids) in entry.items():
                meanings.setdefault((value, scheme), set()).add(meaning)
    emitted = 0
    for label in (*NIH_FINDINGS, *VINDR_CLASSES, VINDR_NO_FINDING, "Infiltrate"):
        code = finding_code(label)
        if code.scheme_designator != PRIVATE_SCHEME:
            emitted += 1
            assert meanings[(code.value, code.scheme_designator)] == {code.meaning}, label
    assert emitted >= 10


@pytest.mark.parametrize("label", ["Totally new finding", "", "x" * 200, "back\\slash", "Ünïcode ∆"])
def test_finding_code_unknown_label_is_private_and_valid(label):
    code = finding_code(label)
    assert code.scheme_designator == PRIVATE_SCHEME
    assert 0 < len(code.value) <= 16 and 0 < len(code.meaning) <= 64 and "\\" not in code.meaning
    assert finding_code(label) == code  # stable across calls


# --- structured report -----------------------------------------------------------------


def test_sr_round_trip_one_roi_group_per_detection(dx_source, tmp_path):
    result = _result(dx_source)
    ds = _write_read(structured_report(dx_source, result), tmp_path / "sr.dcm")

    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR
    assert ds.StudyInstanceUID == dx_source.StudyInstanceUID
    assert ds.SeriesInstanceUID != dx_source.SeriesInstanceUID
    assert ds.SOPInstanceUID != dx_source.SOPInstanceUID
    assert (ds.SeriesNumber, ds.InstanceNumber) == (9901, 1)
    assert (ds.PatientID, ds.PatientName, ds.AccessionNumber) == ("DX0001", "TEST^DX", "ACC0001")
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == dx_source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        dx_source.SOPInstanceUID
    )

    report = hd.sr.srread(tmp_path / "sr.dcm").content
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(DX_DETECTIONS)
    assert report.get_image_measurement_groups() == []
    tracking_uids = set()
    for group, det in zip(groups, DX_DETECTIONS, strict=True):
        assert group.finding_type == finding_code(det.label)
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, _rectangle(det.box_xyxy_px), atol=1e-3)  # SCOORD is float32
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dx_source.SOPInstanceUID
        (score,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert score.unit == codes.UCUM.Percent
        assert score.value == pytest.approx(det.score * 100)
        assert _texts(group, "111001") == ["frcnn-r50-fpn"]  # Algorithm Name
        assert _texts(group, "111003") == ["2024.01.1"]  # Algorithm Version
        tracking_uids.add(group.tracking_uid)
    assert len(tracking_uids) == len(DX_DETECTIONS)


def test_sr_empty_result_says_no_finding(dx_source, tmp_path):
    ds = _write_read(structured_report(dx_source, _result(dx_source, ())), tmp_path / "empty.dcm")
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR
    report = hd.sr.srread(tmp_path / "empty.dcm").content
    # A region over the whole film, not an image-level group: OHIF 3.13.2 fails on groups without coordinates.
    assert report.get_image_measurement_groups() == []
    (group,) = report.get_planar_roi_measurement_groups()
    assert group.finding_type == codes.DCM.NoAbnormality
    assert group.roi.value.tolist() == _rectangle((0, 0, 1024, 1024)).tolist()
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dx_source.SOPInstanceUID
    assert _texts(group, "111001") == ["frcnn-r50-fpn"]
    assert _texts(group, "121106") == ["No finding (frcnn-r50-fpn 2024.01.1)"]


def test_sr_on_real_cr_monochrome1(cr_source, tmp_path):
    dets = (Detection("Pneumothorax", 0.91, (1.0, 2.0, 9.5, 14.0)), Detection("Hernia", 0.3, (0.0, 0.0, 16.0, 16.0)))
    ds = _write_read(structured_report(cr_source, _result(cr_source, dets), series_number=77), tmp_path / "cr.dcm")
    assert ds.StudyInstanceUID == cr_source.StudyInstanceUID and ds.SeriesNumber == 77
    assert ds.PatientID == cr_source.PatientID
    groups = hd.sr.srread(tmp_path / "cr.dcm").content.get_planar_roi_measurement_groups()
    assert [g.finding_type.value for g in groups] == ["36118008", "HERNIA"]
    np.testing.assert_allclose(groups[1].roi.value, _rectangle((0, 0, 16, 16)))


def test_sr_unknown_label_and_out_of_image_box_do_not_crash(dx_source, tmp_path):
    dets = (Detection("Something the model learned later", 0.5, (-20.0, 1000.0, 50.0, 1300.0)),)
    _write_read(structured_report(dx_source, _result(dx_source, dets)), tmp_path / "u.dcm")
    (group,) = hd.sr.srread(tmp_path / "u.dcm").content.get_planar_roi_measurement_groups()
    assert group.finding_type.scheme_designator == PRIVATE_SCHEME
    assert group.finding_type.meaning == "Something the model learned later"
    np.testing.assert_allclose(group.roi.value, _rectangle((0, 1000, 50, 1024)))  # clipped to the image


def test_missing_type2_patient_attributes_are_written_empty(tmp_path):
    source = _dx_source(drop=("PatientSex", "AccessionNumber", "ReferringPhysicianName"))
    ds = _write_read(structured_report(source, _result(source)), tmp_path / "sr.dcm")
    assert ds.PatientSex == "" and ds.AccessionNumber == ""
    _write_read(presentation_state(source, _result(source)), tmp_path / "ps.dcm")
    assert "PatientSex" not in source  # the caller's dataset is untouched


@pytest.mark.parametrize("build", [structured_report, presentation_state])
def test_result_from_another_image_is_refused(dx_source, build):
    wrong_size = StudyResult(DX_DETECTIONS, "m", "1", (512, 512), 1.0)
    with pytest.raises(ValueError, match="512"):
        build(dx_source, wrong_size)
    wrong_uid = StudyResult(DX_DETECTIONS, "m", "1", (1024, 1024), 1.0, sop_instance_uid="1.2.3")
    with pytest.raises(ValueError, match="1.2.3"):
        build(dx_source, wrong_uid)
    nan_box = StudyResult((Detection("Mass", 0.5, (float("nan"), 0, 1, 1)),), "m", "1", (1024, 1024), 1.0)
    with pytest.raises(ValueError, match="finite"):
        build(dx_source, nan_box)


# --- presentation state ----------------------------------------------------------------


def test_gsps_draws_boxes_above_min_score(dx_source, tmp_path):
    result = _result(dx_source)
    ds = _write_read(presentation_state(dx_source, result, min_score=0.4), tmp_path / "ps.dcm")

    assert ds.SOPClassUID == GSPS
    assert ds.Modality == "PR"
    assert ds.StudyInstanceUID == dx_source.StudyInstanceUID
    assert ds.SeriesInstanceUID != dx_source.SeriesInstanceUID
    assert (ds.SeriesNumber, ds.InstanceNumber) == (9902, 1)
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == dx_source.SeriesInstanceUID
    assert ref.ReferencedImageSequence[0].ReferencedSOPInstanceUID == dx_source.SOPInstanceUID
    assert [layer.GraphicLayer for layer in ds.GraphicLayerSequence] == ["CXR_AI"]

    (annotation,) = ds.GraphicAnnotationSequence
    assert annotation.GraphicLayer == "CXR_AI"
    kept = [d for d in DX_DETECTIONS if d.score >= 0.4]
    assert len(kept) == 2
    assert len(annotation.GraphicObjectSequence) == len(annotation.TextObjectSequence) == len(kept)
    for graphic, text, det in zip(annotation.GraphicObjectSequence, annotation.TextObjectSequence, kept, strict=True):
        assert (graphic.GraphicType, graphic.GraphicAnnotationUnits, graphic.NumberOfGraphicPoints) == (
            "POLYLINE", "PIXEL", 5,
        )  # fmt: skip
        np.testing.assert_allclose(np.reshape(graphic.GraphicData, (-1, 2)), _rectangle(det.box_xyxy_px), atol=1e-3)
        assert text.UnformattedTextValue == f"{det.label} {det.score:.2f}"
        np.testing.assert_allclose(text.AnchorPoint, det.box_xyxy_px[:2], atol=1e-3)
        assert text.AnchorPointAnnotationUnits == "PIXEL"
    assert ds.PresentationLUTShape == "IDENTITY"  # MONOCHROME2


def test_gsps_and_sr_share_tracking_uids(dx_source, tmp_path):
    result = _result(dx_source)
    structured_report(dx_source, result).save_as(tmp_path / "sr.dcm")
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_planar_roi_measurement_groups()
    gsps = presentation_state(dx_source, result)
    graphics = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence
    assert [g.TrackingUID for g in graphics] == [str(g.tracking_uid) for g in groups]


def test_every_sr_and_gsps_built_here_goes_to_dciodvfy(dx_source, sr_and_gsps_pass_dciodvfy):
    """tests/conftest.py's guard sees the builders this module imported by name before the
    test began, not only those looked up on cxr.client.dicom_out when called."""
    result = _result(dx_source)
    sr, gsps = structured_report(dx_source, result), presentation_state(dx_source, result)
    assert [id(o) for o in sr_and_gsps_pass_dciodvfy] == [id(sr), id(gsps)]


def test_gsps_real_cr_monochrome1_keeps_window_and_inverts(cr_source, tmp_path):
    dets = (Detection("Cardiomegaly", 0.8, (2.0, 3.0, 10.0, 12.0)),)
    ds = _write_read(presentation_state(cr_source, _result(cr_source, dets)), tmp_path / "cr_ps.dcm")
    assert ds.PresentationLUTShape == "INVERSE"  # else a MONOCHROME1 image shows inverted
    voi = ds.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == float(cr_source.WindowCenter)
    assert float(voi.WindowWidth) == float(cr_source.WindowWidth)
    assert ds.PatientID == cr_source.PatientID


def test_gsps_nothing_above_threshold_says_no_finding(dx_source, tmp_path):
    ds = _write_read(presentation_state(dx_source, _result(dx_source), min_score=0.99), tmp_path / "none.dcm")
    (annotation,) = ds.GraphicAnnotationSequence
    assert "GraphicObjectSequence" not in annotation
    (text,) = annotation.TextObjectSequence
    assert text.UnformattedTextValue.startswith("No finding >= 0.99")
    assert text.BoundingBoxAnnotationUnits == "DISPLAY"


def test_gsps_unknown_label_and_empty_result(dx_source, tmp_path):
    dets = (Detection("brand-new label", 0.7, (1000.0, 1000.0, 1100.0, 1100.0)),)
    ds = _write_read(presentation_state(dx_source, _result(dx_source, dets)), tmp_path / "u.dcm")
    graphic = ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert max(graphic.GraphicData) == 1024.0  # clipped: GSPS PIXEL data must lie in the image
    _write_read(presentation_state(dx_source, _result(dx_source, ())), tmp_path / "empty.dcm")


def test_module_imports_without_torch():
    code = "import sys, cxr.client.dicom_out; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


OPTIONAL = ("Laterality", "ImageLaterality", "ViewPosition", "PixelSpacing", "ImagerPixelSpacing", "PatientOrientation",
            "BodyPartExamined")


def _synthetic_sources(synth_data) -> dict[str, pydicom.Dataset]:
    """cxr synth's CR (both photometric interpretations) and DX, the CR without every optional
    attribute, and the CR wrapped as Secondary Capture (as some gateways send films)."""
    sources = {}
    for f in sorted((synth_data / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        sources.setdefault(f"{ds.Modality} {ds.PhotometricInterpretation}", ds)
    cr = sources["CR MONOCHROME1"]
    stripped = pydicom.dcmread(synth_data / "dicom" / Path(cr.filename).name)
    for keyword in OPTIONAL:
        if keyword in stripped:
            delattr(stripped, keyword)
    sources["CR without optional attributes"] = stripped
    sc = pydicom.dcmread(synth_data / "dicom" / Path(cr.filename).name)
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.ConversionType = "DI"
    sources["Secondary Capture"] = sc
    return sources


@pytest.mark.parametrize("detections", [(), DX_DETECTIONS[:2]], ids=["no finding", "two findings"])
def test_sr_and_gsps_pass_dciodvfy_for_every_kind_of_source(synth_data, detections, tmp_path):
    """dicom3tools' dciodvfy, an independent IOD validator: 0 errors on every source, also those
    without laterality, view, spacing or patient orientation (client/README.md lists the warnings that stay)."""
    from peers import assert_valid_iod

    for name, source in _synthetic_sources(synth_data).items():
        size = (int(source.Rows), int(source.Columns))
        dets = tuple(Detection(d.label, d.score, tuple(min(v, size[1] - 1) for v in d.box_xyxy_px)) for d in detections)
        result = StudyResult(dets, "cxr-test", "1.0", size, 1.0, str(source.SOPInstanceUID))
        for kind, obj in (("sr", structured_report(source, result)), ("gsps", presentation_state(source, result))):
            path = tmp_path / f"{name.replace(' ', '_')}.{kind}.dcm"
            obj.save_as(path, enforce_file_format=True)
            assert_valid_iod(path)


def test_each_writer_puts_its_objects_in_a_series_number_of_its_own():
    """SR, GSPS, Parametric Maps, SEG and Secondary Captures of one study: five series, five numbers
    (the SEG and the saliency captures once shared 9904)."""
    import inspect

    from cxr.client.dicom_out import (
        parametric_maps, presentation_state, secondary_captures, segmentation, structured_report,
    )

    writers = (structured_report, presentation_state, parametric_maps, segmentation, secondary_captures)
    numbers = [inspect.signature(w).parameters["series_number"].default for w in writers]
    assert len(set(numbers)) == len(numbers), dict(zip([w.__name__ for w in writers], numbers))
