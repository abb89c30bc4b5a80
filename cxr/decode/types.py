"""What decoding produces, in a leaf module: the decoded film, its header, its DICOM identifiers.

Preprocessing, serving and the client need these types without the decoders
(``cxr.decode.image`` and the DICOM stack it pulls in), so they live alone here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class DicomInfo:
    """Non-PHI identifiers of a DICOM source, kept for results and SR references."""

    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    photometric_interpretation: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph.

    pixels: float32 ``[H, W]`` in ``[0, 1]``, 0 = black (air), 1 = white (bone).
    spacing_mm: (row, column) pixel spacing in mm, or ``None`` when unknown.
    """

    pixels: np.ndarray
    source_format: str
    bits_stored: int
    spacing_mm: tuple[float, float] | None = None
    dicom: DicomInfo | None = field(default=None, repr=False)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


class ImageHeader(NamedTuple):
    """What a study's header declares: format ("PNG", "JPEG", "DICOM") and size in pixels.

    dicom: the non-PHI identifiers of a DICOM (its SOPInstanceUID for results), read
    from the same header parse; None for PNG and JPEG.
    """

    format: str
    height: int
    width: int
    dicom: DicomInfo | None = None
