"""A study as the client holds it: its bytes read once, its header probed once, its Dataset
parsed once and its pixels decoded once, each only when someone needs it.

``cxr predict x.dcm --png --sr --gsps`` used to read the file four times, parse it three
times (the header probe, the PNG's decode, the SR's source) and hand the SR a Dataset other
than the one the PNG was drawn from; the request builder, the annotated PNG, the SR/GSPS
writer and the PACS bridge now share one :class:`Study` (tests/client/test_study.py counts)::

    study = Study.read("x.dcm", keep_dataset=True)   # one read
    client.predict(study)                            # the bytes as read, the header probed once
    annotated_png(study, result, out)                # pixels decoded once, from the parsed Dataset
    structured_report(study.dataset, result)         # the same Dataset, not parsed again

Nothing is re-encoded: what is sent is exactly what was read (the bridge forwards the
spooled Part-10 bytes as they arrived).  A Study is used by one thread at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.client.errors import client_error
from cxr.decode.header import sniff_format
from cxr.decode.types import DecodedImage, ImageFormat, ImageHeader

if TYPE_CHECKING:
    from pydicom import Dataset


class Study:
    """One study's encoded bytes and what has been learnt from them, each computed at most once.

    data: the encoded study (PNG, JPEG or DICOM Part 10), exactly as read or received.
    path: where it was read from, or None for bytes that never were a file.
    keep_dataset: a caller that will need the parsed ``pydicom.Dataset`` of a DICOM
    (SR, GSPS, the annotated PNG) says so, and the header is then probed from that one
    parse instead of a header-only parse of its own.
    """

    def __init__(self, data: bytes, *, path: str | os.PathLike | None = None, keep_dataset: bool = False) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise client_error(f"a Study holds encoded bytes (PNG/JPEG/DICOM), got {type(data).__name__}")
        self.data = bytes(data)
        self.path = None if path is None else Path(path)
        self.keep_dataset = bool(keep_dataset)
        self._format: ImageFormat | None = sniff_format(self.data)  # magic bytes only: no parse
        self._header: ImageHeader | None = None
        self._dataset: Dataset | None = None
        self._decoded: DecodedImage | None = None

    @classmethod
    def read(cls, path: str | os.PathLike, *, keep_dataset: bool = False) -> Study:
        """The study in the file ``path``, read once (DetectorError "CLIENT" when there is no such file)."""
        path = Path(path)
        if not path.is_file():
            raise client_error(f"no such image file: {path}")
        return cls(path.read_bytes(), path=path, keep_dataset=keep_dataset)

    def __repr__(self) -> str:  # never the bytes, never an attribute value: studies carry PHI
        fmt = self._format.display_name if self._format is not None else "unrecognised"
        return f"Study({fmt}, {len(self.data)} bytes{f', {self.path.name}' if self.path else ''})"

    @property
    def format(self) -> ImageFormat | None:
        """PNG, JPEG or DICOM by magic bytes; None for bytes that are none of them."""
        return self._format

    @property
    def is_dicom(self) -> bool:
        return self._format is ImageFormat.DICOM

    @property
    def header(self) -> ImageHeader:
        """Format, size and DICOM identifiers from the header alone (:func:`cxr.decode.image.probe`).

        InvalidImageError for bytes that are no image or a header that cannot be read.
        """
        if self._header is None:
            from cxr.decode.image import probe

            self._header = probe(self.dataset if self.keep_dataset and self.is_dicom else self.data)
        return self._header

    @property
    def dataset(self) -> Dataset:
        """The DICOM parsed once, pixel data included but not decoded (InvalidImageError if it cannot be)."""
        if self._dataset is None:
            from cxr.decode.dicom import read_dicom
            from cxr.errors import InvalidImageError

            if not self.is_dicom:
                raise InvalidImageError(f"{self} is not DICOM (Part 10, 'DICM' after a 128-byte preamble)")
            self._dataset = read_dicom(self.data)
        return self._dataset

    def decoded(self) -> DecodedImage:
        """The film decoded once, for drawing: a DICOM from its parsed Dataset, PNG/JPEG from the bytes
        with the header already probed (InvalidImageError as :func:`cxr.decode.image.decode_image`)."""
        if self._decoded is None:
            from cxr.decode.image import decode_image

            if self.is_dicom:
                self._decoded = decode_image(self.dataset)
            else:
                self._decoded = decode_image(self.data, header=self.header)
        return self._decoded
