"""What decoding produces, in a leaf module: the image format, the decoded film, its header, its DICOM identifiers.

Preprocessing, serving and the client need these types without the decoders
(``cxr.decode.image`` and the DICOM stack it pulls in), so they live alone here; numpy
is named only in annotations, so :mod:`cxr.decode.header` and the guards import this
module and stay free of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from cxr.vocab import ClosedVocabulary

if TYPE_CHECKING:
    import numpy as np


class ImageFormat(ClosedVocabulary, label="image format"):
    """What a study's bytes are (by magic bytes, never by file name), or raw pixels.

    One spelling for the header (:class:`ImageHeader`) and the decoded film
    (:class:`DecodedImage`).  Members compare equal to their name in either case
    (``ImageFormat.PNG == "PNG" == "png"``) because both spellings were in use;
    :attr:`display_name` is how messages write it ("PNG", "DICOM").
    """

    PNG = "png"
    JPEG = "jpeg"
    DICOM = "dicom"
    ARRAY = "array"  # pixels a caller decoded itself

    @property
    def display_name(self) -> str:
        return "pixel array" if self is ImageFormat.ARRAY else self.value.upper()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.value == other.lower()
        return NotImplemented

    def __ne__(self, other: object) -> bool:  # str's own __ne__ would compare case-sensitively
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:  # equal to its value's hash, so {"png": ...}[ImageFormat.PNG] works
        return hash(self.value)


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
    source_format: an :class:`ImageFormat` (a string is normalised to one on entry).
    spacing_mm: (row, column) pixel spacing in mm, or ``None`` when unknown.
    """

    pixels: np.ndarray
    source_format: ImageFormat
    bits_stored: int
    spacing_mm: tuple[float, float] | None = None
    dicom: DicomInfo | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_format", ImageFormat(self.source_format))

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


class ImageHeader(NamedTuple):
    """What a study's header declares: its :class:`ImageFormat` (PNG, JPEG or DICOM) and size in pixels.

    dicom: the non-PHI identifiers of a DICOM (its SOPInstanceUID for results), read
    from the same header parse; None for PNG and JPEG.
    """

    format: ImageFormat
    height: int
    width: int
    dicom: DicomInfo | None = None
