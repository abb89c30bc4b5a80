"""What a viewer needs from our objects beyond their IOD, checked before an object leaves.

dciodvfy proves an object is valid DICOM; it does not prove a radiologist sees it.  Each
rule here is a form that was seen to fail in OHIF 3.13.2 (served by Orthanc 1.10's DICOMweb,
in Chromium; ``tests/client/test_viewer_checks.py`` keeps those objects), with the message it
gave, so a writer learns the fix from the error:

* SR (TID 1500): a planar ROI group whose first NUM carries no SCOORD hydrates into no
  measurement ("No spatial coordinates group found"); a group without any coordinates (an
  image-level TID 1501 group) makes the SR viewport fail ("reading 'ReferencedSOPSequence'").
* Segmentation of a film: without Pixel Measures the page crashes ("Cannot destructure
  property 'SpacingBetweenSlices' of 'PixelMeasures'"); without a Plane Orientation the SEG
  fails to load ("reading 'ImageOrientationPatient'"); an orientation other than the plane
  OHIF assumes for a film without one, (1, 0, 0, 0, 1, 0), is refused ("orthogonal to the
  acquisition plane"); FRACTIONAL is refused ("Fractional segmentations are not yet
  supported"); a segment without a colour gets a warning and a colour of OHIF's choosing.
* Parametric Map of a film: the same plane rules ("oblique to the acquisition plane"); and
  highdicom 0.28.2 leaves Dimension Index Values empty for a film (its own constructor then
  fails; dciodvfy reports the mismatch).

Where the standard and OHIF pull apart, :func:`add_film_plane` takes the form both accept.
CR films have no Frame of Reference, DX films at most the module, neither an image plane;
PS3.3 (Table A.51-2) allows a SEG's Pixel Measures and Plane Orientation only when "the
Frame of Reference is defined in the patient-relative Reference Coordinate System"; a SEG of
a film "may" carry a Frame of Reference module (Table A.51-1) and a Parametric Map must
(A.75).  So the object gets the film's Frame of Reference or one of its own (one per film,
derived from its SOPInstanceUID, so the SEG and the map of one film share it), the film's
pixel spacing, the identity orientation and a zero position: the plane of the film, which
is what viewers assume for a projection image.  The film's Patient Orientation, copied into
the object, keeps saying where the patient's left and feet are; the identity orientation
says nothing about them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import (Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage, ParametricMapStorage,
                         SegmentationStorage, generate_uid)

__all__ = ["FILM_ORIENTATION", "add_film_plane", "check_for_viewers", "film_frame_of_reference", "viewer_problems"]

VIEWER = "OHIF 3.13.2"
# The plane a viewer assumes for an image without Image Orientation (Patient): rows along +x,
# columns along +y.  Cornerstone3D compares a SEG's or map's orientation with it.
FILM_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SEGMENTATION = SegmentationStorage
PARAMETRIC_MAP = ParametricMapStorage
_SR_CLASSES = {EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage}
_MEASUREMENT_GROUP = "125007"  # (125007, DCM, "Measurement Group")
_IMAGING_MEASUREMENTS = "126010"  # (126010, DCM, "Imaging Measurements")
_TRACKING_IDENTIFIER = "112039"


def film_frame_of_reference(film: Dataset) -> str:
    """The Frame of Reference UID our SEG and maps of ``film`` share: the film's own when it has one."""
    if film.get("FrameOfReferenceUID"):
        return str(film.FrameOfReferenceUID)
    return generate_uid(entropy_srcs=["cxr-triton-film-plane", str(film.SOPInstanceUID)])


def _film_spacing(film: Dataset) -> list[float]:
    # Pixel Spacing when the modality calibrated it, else the detector's: what the film's own
    # measurements use.  A film with neither gets 1 mm, the unit viewers assume without one.
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = film.get(keyword)
        if value and len(value) == 2:
            return [float(v) for v in value]
    return [1.0, 1.0]


def add_film_plane(obj: Dataset, film: Dataset) -> None:
    """Give a SEG or Parametric Map built on a film without an image plane the plane geometry
    viewers need (see the module docstring for why this form), in place.

    Adds a Frame of Reference module (:func:`film_frame_of_reference`: the film's own when it
    has one, as a DX may without an Image Plane; empty Position Reference Indicator), shared
    Pixel Measures (the film's spacing; Slice Thickness 1 mm, a nominal value for a
    projection, type 1C there), the shared Plane Orientation :data:`FILM_ORIENTATION` and a
    zero Plane Position per frame.  A film with an Image Position and Orientation (Patient)
    is left to highdicom, which copies its plane: nothing is changed then.
    """
    if film.get("ImageOrientationPatient") and film.get("ImagePositionPatient"):
        return
    obj.FrameOfReferenceUID = film_frame_of_reference(film)
    obj.PositionReferenceIndicator = str(film.get("PositionReferenceIndicator") or "")
    if "SharedFunctionalGroupsSequence" not in obj or not obj.SharedFunctionalGroupsSequence:
        obj.SharedFunctionalGroupsSequence = [Dataset()]
    shared = obj.SharedFunctionalGroupsSequence[0]
    measures = Dataset()
    measures.PixelSpacing = _film_spacing(film)
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(FILM_ORIENTATION)
    shared.PlaneOrientationSequence = [orientation]
    for frame in obj.get("PerFrameFunctionalGroupsSequence", []):
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 0.0]
        frame.PlanePositionSequence = [position]


def check_for_viewers(obj: Dataset, film: Dataset | None = None) -> None:
    """Raise ValueError naming every problem of :func:`viewer_problems`; return None when there is none."""
    problems = viewer_problems(obj, film)
    if problems:
        name = getattr(obj.get("SOPClassUID"), "name", obj.get("SOPClassUID"))
        raise ValueError(f"this {name} would not display in {VIEWER}:\n- " + "\n- ".join(problems))


def viewer_problems(obj: Dataset, film: Dataset | None = None) -> list[str]:
    """What in ``obj`` is known to break a viewer, one sentence each naming the fix ([] when nothing).

    ``film``, the image the object was made from, adds the checks that compare the two
    (same pixel grid, the plane the viewer assumes for it).  Classes without known rules
    (GSPS, Secondary Capture) give [].
    """
    sop_class = str(obj.get("SOPClassUID", ""))
    if sop_class in _SR_CLASSES:
        return _sr_problems(obj)
    if sop_class == SEGMENTATION:
        problems = []
        if str(obj.get("SegmentationType", "")) != "BINARY":
            problems.append(
                f"Segmentation Type is {obj.get('SegmentationType')!r}: {VIEWER} refuses anything but BINARY "
                "(\"Fractional segmentations are not yet supported\"); threshold the probabilities and write BINARY")
        for segment in obj.get("SegmentSequence") or []:
            if not segment.get("RecommendedDisplayCIELabValue"):
                problems.append(
                    f"segment {segment.get('SegmentNumber')} ({segment.get('SegmentLabel')}) has no Recommended "
                    f"Display CIELab Value: {VIEWER} warns (\"RecommendedDisplayCIELabValue not found\") and picks a "
                    "colour of its own; give each segment its colour (highdicom: SegmentDescription(display_color=))")
        return problems + _plane_problems(obj, film)
    if sop_class == PARAMETRIC_MAP:
        problems = _dimension_index_problems(obj)
        if not obj.get("FrameOfReferenceUID"):
            problems.append("no Frame of Reference UID: the Parametric Map IOD requires one; add_film_plane(obj, film) "
                            "adds the film's")
        if not _functional_group(obj, "RealWorldValueMappingSequence"):
            problems.append("no Real World Value Mapping: a map's values mean nothing without it")
        if "FloatPixelData" not in obj:
            problems.append(f"integer pixels (Bits Allocated {obj.get('BitsAllocated')}): {VIEWER} fuses only 32-bit float "
                            "maps (\"Only works with 32 bit data, not 16\"); write the map as float32 (Float Pixel Data)")
        return problems + _plane_problems(obj, film)
    return []


def _functional_group(obj: Dataset, keyword: str) -> list[Dataset]:
    """The ``keyword`` sequence's first item for every frame (shared, else per frame); [] if any frame lacks it."""
    shared = obj.get("SharedFunctionalGroupsSequence") or [Dataset()]
    if shared[0].get(keyword):
        return [shared[0].get(keyword)[0]] * max(int(obj.get("NumberOfFrames", 1) or 1), 1)
    frames = obj.get("PerFrameFunctionalGroupsSequence") or []
    found = [frame.get(keyword)[0] for frame in frames if frame.get(keyword)]
    return found if frames and len(found) == len(frames) else []


def _plane_problems(obj: Dataset, film: Dataset | None) -> list[str]:
    fix = "add_film_plane(obj, film) adds it" if film is None or not film.get("FrameOfReferenceUID") else \
        "copy it from the film"
    problems = []
    measures = _functional_group(obj, "PixelMeasuresSequence")
    if not measures or not all(m.get("PixelSpacing") for m in measures):
        problems.append(f"no Pixel Measures (Pixel Spacing): the whole {VIEWER} page crashes (\"Cannot destructure "
                        f"property 'SpacingBetweenSlices' of 'PixelMeasures'\"); {fix}")
    orientations = _functional_group(obj, "PlaneOrientationSequence")
    if not orientations or not all(o.get("ImageOrientationPatient") for o in orientations):
        problems.append(f"no Plane Orientation: {VIEWER} cannot load it (\"reading 'ImageOrientationPatient'\"); {fix}")
    elif film is not None:
        expected = tuple(float(v) for v in film.get("ImageOrientationPatient") or FILM_ORIENTATION)
        for o in orientations[:1]:
            got = tuple(float(v) for v in o.ImageOrientationPatient)
            if not all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got, expected)):
                problems.append(f"Plane Orientation {list(got)} is not the film's plane {list(expected)}: {VIEWER} "
                                "refuses it as orthogonal or oblique to the acquisition plane; "
                                "add_film_plane(obj, film) writes the film's")
    if (measures or orientations) and not obj.get("FrameOfReferenceUID"):
        problems.append("Pixel Measures or Plane Orientation without a Frame of Reference: PS3.3 (Table A.51-2) allows "
                        "them only with one; add_film_plane(obj, film) adds the film's")
    if film is not None and (obj.get("Rows"), obj.get("Columns")) != (film.get("Rows"), film.get("Columns")):
        problems.append(f"{obj.get('Rows')}x{obj.get('Columns')} pixels on a {film.get('Rows')}x{film.get('Columns')} "
                        "film: without a patient frame each pixel must be the film's pixel (Derivation Image); "
                        "write it on the film's grid")
    return problems


def _dimension_index_problems(obj: Dataset) -> list[str]:
    expected = len(obj.get("DimensionIndexSequence") or [])
    for number, frame in enumerate(obj.get("PerFrameFunctionalGroupsSequence") or [], 1):
        content = (frame.get("FrameContentSequence") or [Dataset()])[0]
        values = content.get("DimensionIndexValues")
        got = 0 if values is None or values == "" else len(values) if isinstance(values, Iterable) else 1
        if got != expected:
            return [f"frame {number} has {got} Dimension Index Values for {expected} dimensions (highdicom 0.28.2 "
                    "leaves them empty for a film without a Frame of Reference): give every frame one value per "
                    "dimension"]
    return []


def _sr_problems(sr: Dataset) -> list[str]:
    problems = []
    for group in _measurement_groups(sr):
        items = group.get("ContentSequence") or []
        name = next((str(i.TextValue) for i in items if _code(i) == _TRACKING_IDENTIFIER), "?")
        first_num = next((item for item in items if item.ValueType == "NUM"), None)
        if not any(item.ValueType in ("SCOORD", "SCOORD3D") for item in items):
            children = (first_num.get("ContentSequence") or []) if first_num is not None else []
            if not any(c.ValueType in ("SCOORD", "SCOORD3D") for c in children):
                problems.append(f"measurement group {name!r} has no coordinates (an image-level group): {VIEWER}'s SR "
                                "viewport fails on it (\"Cannot read properties of undefined (reading "
                                "'ReferencedSOPSequence')\"); give it an image region (the whole image if need be)")
            continue
        if first_num is None:
            continue  # the region alone: hydrated from the group's SCOORD
        children = first_num.get("ContentSequence") or []
        if not any(c.ValueType in ("SCOORD", "SCOORD3D") and c.RelationshipType == "INFERRED FROM" for c in children):
            problems.append(f"measurement group {name!r}: its first NUM ({first_num.ConceptNameCodeSequence[0].CodeMeaning}) "
                            f"has no INFERRED FROM SCOORD, so {VIEWER} hydrates no measurement from it (\"No spatial "
                            "coordinates group found\"); give that NUM the region as its child")
    return problems


def _measurement_groups(sr: Dataset) -> list[Dataset]:
    for container in sr.get("ContentSequence") or []:
        if _code(container) == _IMAGING_MEASUREMENTS:
            return [g for g in container.get("ContentSequence") or [] if _code(g) == _MEASUREMENT_GROUP]
    return []


def _code(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence") or []
    return str(names[0].CodeValue) if names else ""

