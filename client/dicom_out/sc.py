"""Saliency maps burned into the film: Secondary Capture images, what every PACS viewer shows.

One image per explained finding, in one new series of the source's study: the film as the
model read it (after the Modality LUT, the window and MONOCHROME1 inversion, the pixels the
overlays draw), the finding's D-RISE map over it in Inferno where it rises above its median
(as ``cxr predict --saliency`` draws it, :mod:`cxr.client.saliency_png`), the box, a label,
a colour bar and a caption that says what it is.  On the source's own pixel grid, so a viewer
that links series by position shows it beside the film at the same scale.

Marked as derived: Image Type ``DERIVED\\SECONDARY``, a Derivation Description, the source in
the Source Image Sequence (purpose "Source image for image processing operation"), Burned In
Annotation ``YES`` (the caption names the model; no patient data is drawn), and Conversion
Type ``WSD`` (workstation: made by software, not scanned).  RGB, 8 bits, Explicit VR Little
Endian like every result we send (RLE Lossless saved 15 % on a synthetic film: not worth a
transfer syntax a destination must accept and the bridge would have to fall back from).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from cxr.client.dicom_out.pmap import pixel_spacing
from cxr.client.dicom_out.source import checked_source, series_body_part, shown_detections
from cxr.client.results import ExplainedResult

__all__ = ["secondary_captures", "render_capture"]


def render_capture(film: np.ndarray, result: ExplainedResult, index: int, number: int) -> np.ndarray:
    """``[H, W, 3]`` uint8: ``film`` (``[H, W]`` in [0, 1], the source's grid) with detection ``index``'s map,
    box, label ``number``, colour bar and caption burned in."""
    from PIL import Image, ImageDraw

    from cxr.client.predict import COLOURS, draw_label, label_font
    from cxr.client.saliency_png import _colour_bar, _heat

    grey = np.repeat((np.clip(film, 0.0, 1.0) * 255.0)[..., None], 3, axis=-1).astype(np.float32)
    shaded, low, high = _heat(grey, result.saliency_map(index))
    img = Image.fromarray(shaded.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = label_font(img.height)
    det, colour = result.detections[index], COLOURS[(number - 1) % len(COLOURS)]
    draw.rectangle(list(det.box_xyxy_px), outline=colour, width=max(2, round(max(img.size) / 300)))
    draw_label(draw, (det.box_xyxy_px[0], det.box_xyxy_px[1]), f"{number}. {det.label} {det.score:.2f}", colour, font,
               image_width=img.width)
    bar = _colour_bar(max(4 * font.size + 16, img.height // 3), low, high, font).astype(np.uint8)
    if bar.shape[0] < img.height and bar.shape[1] < img.width:  # a film too small for it keeps the caption only
        img.paste(Image.fromarray(bar), (img.width - bar.shape[1] - 4, 4))
    # the caption along the bottom edge: the label sits at the box's top-left, often near the top
    caption = f"AI saliency ({result.method}, {result.masks} masks), derived image: {result.model_name} {result.model_version}"
    y = img.height - font.size - 10
    left, top, right, bottom = draw.textbbox((4, y), caption, font=font)
    draw.rectangle((0, top - 4, min(img.width, right + 4), img.height), fill="black")
    draw.text((4, y), caption, fill="white", font=font)
    return np.asarray(img, np.uint8)


def secondary_captures(
    source: pydicom.Dataset,
    result: ExplainedResult,
    *,
    film: np.ndarray | None = None,
    min_score: float = 0.0,
    max_images: int = 9,
    series_number: int = 9905,
    manufacturer: str = "cxr-triton",
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per finding of ``result`` at or above ``min_score`` (the ``max_images``
    highest-scoring), all in one new series of the source's study.

    film: the source's display pixels ``[Rows, Columns]`` in [0, 1] when the caller has them
    (:meth:`cxr.client.Study.decoded`); decoded here from ``source`` otherwise.
    Raises ValueError as :func:`~cxr.client.dicom_out.parametric_maps` does."""
    if not isinstance(result, ExplainedResult):
        raise ValueError("a saliency Secondary Capture needs the maps of an ExplainedResult (client.explain), "
                         f"got a {type(result).__name__}")
    source = checked_source(source, result)
    if film is None:
        from cxr.decode.image import decode_image

        film = decode_image(source).pixels
    if film.shape != tuple(result.image_size):
        raise ValueError(f"film is {film.shape}, the source is {tuple(result.image_size)}: pass the source's own pixels")
    series = hd.UID()
    spacing, known = pixel_spacing(source)
    orientation = source.get("PatientOrientation")
    images = []
    for number, index in enumerate(shown_detections(result, min_score, max_images), start=1):
        det = result.detections[index]
        sc = hd.sc.SCImage.from_ref_dataset(
            source, render_capture(film, result, index, number), "RGB", 8, "PATIENT", series, series_number,
            hd.UID(), number, manufacturer,
            pixel_spacing=spacing if known else None,
            patient_orientation=tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=f"AI saliency overlay {result.model_name} {result.model_version}"[:64],
            manufacturer_model_name=result.model_name[:64],
            software_versions=result.model_version[:64],
        )
        if not (orientation and len(orientation) == 2):
            sc.PatientOrientation = ""  # type 2C: unknown when the source does not say (highdicom needs a value)
        _mark_derived(sc, source, det, result)
        series_body_part(sc, source)
        images.append(sc)
    return images


def _mark_derived(sc: pydicom.Dataset, source: pydicom.Dataset, det, result: ExplainedResult) -> None:
    """What says "derived from that film, with text on it": Source Image Sequence, Derivation
    Description, Burned In Annotation, Conversion Type WSD."""
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = pydicom.Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [item]
    sc.DerivationDescription = (f"{result.method} saliency map of {det.label} {det.score:.2f} "
                                f"({result.masks} masks) burned into the film")[:1024]
    derivation = hd.sr.CodedConcept.from_code(codes.DCM.ClassActivation)  # DCM 130402, CID 7203-adjacent
    sc.DerivationCodeSequence = [derivation]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
