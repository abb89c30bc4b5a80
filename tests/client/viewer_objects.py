"""Segmentations and Parametric Maps of a film, built with highdicom the way a writer first makes them.

The viewer checks (tests/client/test_viewer_checks.py) keep the forms that broke OHIF; the real
browser (tests/client/test_viewer_browser.py) shows what our own writers make.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr.client.dicom_out.viewers import add_film_plane

EQUIPMENT = dict(manufacturer="cxr-triton", manufacturer_model_name="cpu-demo", software_versions="1",
                 device_serial_number="1")


def _region(film: Dataset, box: tuple[int, int, int, int], value: float) -> np.ndarray:
    """One frame the film's size, ``value`` inside ``box`` (x1, y1, x2, y2 in film pixels), 0 elsewhere."""
    frame = np.zeros((1, int(film.Rows), int(film.Columns)), np.float32)
    x1, y1, x2, y2 = box
    frame[0, y1:y2, x1:x2] = value
    return frame


def seg_of(film: Dataset, box: tuple[int, int, int, int], segmentation_type: str = "BINARY", *, colour: bool = True,
           **options) -> hd.seg.Segmentation:
    """highdicom's SEG of ``box`` on ``film`` (no plane for a film: highdicom adds none without a Frame of Reference)."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Cardiomegaly", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="cpu-demo", version="1",
                                                                    family=codes.DCM.ArtificialIntelligence),
        display_color=hd.color.CIELabColor(53.2, 80.1, 67.2) if colour else None)  # red
    binary = segmentation_type == "BINARY"
    pixels = _region(film, box, 1.0 if binary else 0.8)
    seg = hd.seg.Segmentation([film], pixels.astype(bool) if binary else pixels, segmentation_type, [description],
                              series_instance_uid=hd.UID(), series_number=9903, sop_instance_uid=hd.UID(),
                              instance_number=1, **EQUIPMENT, **options)
    seg.PatientOrientation = film.PatientOrientation  # General Image 2C: what a writer copies from the film
    return seg


def parametric_map_of(film: Dataset, box: tuple[int, int, int, int], *, fix: bool) -> hd.pm.ParametricMap:
    """highdicom 0.28.2's Parametric Map of ``film`` (0.8 inside ``box``), built past the check that makes its
    constructor fail for a film; ``fix`` gives each frame its Dimension Index Value and the film's plane, as
    a writer must."""
    import highdicom.image

    mapping = hd.pm.RealWorldValueMapping(lut_label="D-RISE", lut_explanation="saliency", unit=codes.UCUM.NoUnits,
                                          value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    check = highdicom.image._Image._build_luts
    highdicom.image._Image._build_luts = lambda self: None  # the step that raises for a film
    try:
        pmap = hd.pm.ParametricMap([film], _region(film, box, 0.8), series_instance_uid=hd.UID(), series_number=9904,
                                   sop_instance_uid=hd.UID(), instance_number=1, **EQUIPMENT,
                                   contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
                                   voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)])
    finally:
        highdicom.image._Image._build_luts = check
    if fix:
        for frame in pmap.PerFrameFunctionalGroupsSequence:
            frame.FrameContentSequence[0].DimensionIndexValues = [1]
            frame.FrameContentSequence[0].FrameLabel = "saliency"
        add_film_plane(pmap, film)
        pmap.BodyPartExamined = "CHEST"  # General Series: Laterality is then not required (an unpaired part)
    return pmap
