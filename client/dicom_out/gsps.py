"""The overlay for viewers that do not render SR: a Grayscale Softcopy Presentation State."""

from __future__ import annotations

import highdicom as hd
import pydicom

from cxr.client.dicom_out.source import checked_source, closed_rectangle, tracking_id, tracking_uid
from cxr.client.results import StudyResult

__all__ = ["GRAPHIC_LAYER", "presentation_state"]

GRAPHIC_LAYER = "CXR_AI"  # a DICOM Code String: capitals, digits, underscore, <= 16 chars


def presentation_state(
    source: pydicom.Dataset,
    result: StudyResult,
    *,
    min_score: float = 0.0,
    series_number: int = 9902,
    instance_number: int = 1,
    manufacturer: str = "cxr-triton",
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS drawing each detection with ``score >= min_score`` over ``source``.

    On graphic layer ``CXR_AI``: one closed POLYLINE (5 points, PIXEL units) per box and
    one text object "Label 0.87" anchored at the box's top-left corner.  When no box
    passes ``min_score`` a single caption "No finding >= 0.50 (model version)" is
    placed in the top-left of the display, so an empty overlay is never mistaken for
    "the AI did not run".

    The source's Modality LUT and window (VOI) are copied by highdicom; MONOCHROME1
    sources get Presentation LUT Shape INVERSE, because a presentation state replaces
    the image's photometric interpretation and IDENTITY would show them inverted
    (dcmtk's dcmpstat does the same).

    Raises ValueError as :func:`~cxr.client.dicom_out.structured_report` does.
    """
    source = checked_source(source, result)
    layer = hd.pr.GraphicLayer(layer_name=GRAPHIC_LAYER, order=1, description="cxr-triton AI detections")
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        device_serial_number="",
        content_label=GRAPHIC_LAYER,
        content_description=f"AI detections, score >= {min_score:.2f}"[:64],
        graphic_annotations=[_annotation(source, result, layer, min_score)],
        graphic_layers=[layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=(
                hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
            )
        ),
        series_description=f"AI overlay {result.model_name} {result.model_version}"[:64],
    )
    # General Series: Laterality is type 2C, required unless BodyPartExamined names an unpaired
    # part (PS3.3 C.7.3.1); highdicom writes neither.  A chest film's body part is CHEST
    # (unpaired); a paired one keeps the source's Laterality.
    gsps.BodyPartExamined = str(source.get("BodyPartExamined") or "").strip().upper() or "CHEST"
    if gsps.BodyPartExamined != "CHEST" and str(source.get("Laterality") or "") in ("L", "R"):
        gsps.Laterality = source.Laterality
    return gsps


def _annotation(
    source: pydicom.Dataset, result: StudyResult, layer: hd.pr.GraphicLayer, min_score: float
) -> hd.pr.GraphicAnnotation:
    """The boxes and captions of the detections that pass ``min_score`` (or the "No finding" caption)."""
    kept = [(i, d) for i, d in enumerate(result.detections) if d.score >= min_score]
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for index, det in kept:
        polygon = closed_rectangle(det.box_xyxy_px, result.image_size)
        tracking = {"tracking_id": tracking_id(det, index), "tracking_uid": tracking_uid(source, result, index)}
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=polygon,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                **tracking,
            )
        )
        texts.append(
            hd.pr.TextObject(
                text_value=f"{det.label} {det.score:.2f}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(polygon[0, 0]), float(polygon[0, 1])),
                anchor_point_visible=False,  # the caption sits on the corner it names
                **tracking,
            )
        )
    if not kept:
        texts.append(
            hd.pr.TextObject(
                text_value=f"No finding >= {min_score:.2f} ({result.model_name} {result.model_version})"[:1024],
                units=hd.pr.AnnotationUnitsValues.DISPLAY,
                bounding_box=(0.01, 0.01, 0.6, 0.05),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    return hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
