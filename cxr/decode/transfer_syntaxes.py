"""The DICOM transfer syntaxes cxr reads, and which pydicom decoding plugin reads each.

A PACS sends a chest film in the syntax it stored the film in; most cannot transcode
every syntax (Orthanc without its GDCM plugin cannot turn JPEG 2000 into anything
else), so reading a radiograph means decoding all of them.  :data:`SYNTAXES` lists
what CR/DX archives hold, with the plugin(s) that decode each here, chosen
explicitly (pydicom would otherwise try every installed plugin in turn and log a
traceback for each one that declines):

===========================  ========================================  =====================
syntax                       plugin (package)                          licence
===========================  ========================================  =====================
uncompressed, Deflated       pydicom itself                            MIT
RLE Lossless                 pydicom's own (after cxr's RLE walk)       MIT
JPEG Baseline, 8-bit         Pillow (libjpeg-turbo)                     MIT-CMU / BSD
JPEG Extended, 8-bit         Pillow                                     MIT-CMU / BSD
JPEG Extended, 12-bit        GDCM, called by :mod:`cxr.decode.gdcm_codec`      Apache-2.0 (BSD GDCM)
JPEG Lossless (P14, SV1-7)   GDCM (python-gdcm)                         Apache-2.0
JPEG-LS (near-)lossless      pyjpegls (CharLS)                          MIT / BSD-3
JPEG 2000, HTJ2K             pylibjpeg-openjpeg (OpenJPEG)              MIT / BSD-2
===========================  ========================================  =====================

``pylibjpeg-libjpeg`` (GPL-3) is deliberately not used, nor is ``pylibjpeg-rle``: it
panics (a Rust panic, which is not even an ``Exception``) on segments padded past
Rows x Columns, which real encoders write and pydicom's own decoder trims.  pydicom's own GDCM plugin
refuses 12-bit JPEG Extended although GDCM decodes it; :mod:`cxr.decode.gdcm_codec` is a
plugin that lets GDCM do so.

:func:`decode_stored` decodes a dataset's pixel data with the right plugin and turns
failures into :class:`~cxr.errors.InvalidImageError`: "cannot be decoded here"
naming the syntax (name and UID) and the package that would decode it when no
plugin is installed, "corrupt" only when an installed decoder failed on the data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cxr.errors import InvalidImageError

NATIVE = "pydicom"  # the label of pydicom's own RLE decoder


@dataclass(frozen=True)
class Syntax:
    """One transfer syntax: its UID, whether it is lossless, and who decodes it here.

    plugins: pydicom decoding plugin labels, preferred first (``()``: not compressed);
    twelve_bit: the same for BitsStored > 8 where that differs (JPEG Extended);
    packages: what to install when none of the plugins is available.
    """

    uid: str
    lossless: bool
    plugins: tuple[str, ...] = ()
    twelve_bit: tuple[str, ...] | None = None
    packages: str = ""

    @property
    def name(self) -> str:
        from pydicom.uid import UID

        return UID(self.uid).name

    @property
    def compressed(self) -> bool:
        return bool(self.plugins)

    def plugins_for(self, bits_stored: int) -> tuple[str, ...]:
        return self.twelve_bit if self.twelve_bit is not None and bits_stored > 8 else self.plugins


_GDCM = "python-gdcm"
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg"
SYNTAXES: tuple[Syntax, ...] = (
    Syntax("1.2.840.10008.1.2", True),  # Implicit VR Little Endian
    Syntax("1.2.840.10008.1.2.1", True),  # Explicit VR Little Endian
    Syntax("1.2.840.10008.1.2.2", True),  # Explicit VR Big Endian (retired, still sent)
    Syntax("1.2.840.10008.1.2.1.99", True),  # Deflated Explicit VR Little Endian
    Syntax("1.2.840.10008.1.2.5", True, (NATIVE,), packages="pydicom"),
    Syntax("1.2.840.10008.1.2.4.50", False, ("pillow", "gdcm"), packages="pillow"),
    Syntax("1.2.840.10008.1.2.4.51", False, ("pillow", "gdcm"), twelve_bit=("cxr-gdcm",), packages=_GDCM),
    Syntax("1.2.840.10008.1.2.4.57", True, ("gdcm",), packages=_GDCM),
    Syntax("1.2.840.10008.1.2.4.70", True, ("gdcm",), packages=_GDCM),
    Syntax("1.2.840.10008.1.2.4.80", True, ("pyjpegls", "gdcm"), packages="pyjpegls"),
    Syntax("1.2.840.10008.1.2.4.81", False, ("pyjpegls", "gdcm"), packages="pyjpegls"),
    Syntax("1.2.840.10008.1.2.4.90", True, ("pylibjpeg", "gdcm", "pillow"), packages=_OPENJPEG),
    Syntax("1.2.840.10008.1.2.4.91", False, ("pylibjpeg", "gdcm", "pillow"), packages=_OPENJPEG),
    Syntax("1.2.840.10008.1.2.4.201", True, ("pylibjpeg",), packages=_OPENJPEG),
    Syntax("1.2.840.10008.1.2.4.202", True, ("pylibjpeg",), packages=_OPENJPEG),
    Syntax("1.2.840.10008.1.2.4.203", False, ("pylibjpeg",), packages=_OPENJPEG),
)
BY_UID = {s.uid: s for s in SYNTAXES}
UNCOMPRESSED = tuple(s.uid for s in SYNTAXES if not s.compressed)


def _decoder(uid: str):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(uid)
    if uid == "1.2.840.10008.1.2.4.51" and "cxr-gdcm" not in decoder.available_plugins:
        from cxr.decode import gdcm_codec

        if gdcm_codec.is_available(uid):  # register once per process; GDCM may be absent
            decoder.add_plugin("cxr-gdcm", ("cxr.decode.gdcm_codec", "decode_frame"))
    return decoder


def available_plugins(syntax: Syntax, bits_stored: int = 16) -> tuple[str, ...]:
    """The syntax's plugins, in preference order, that are installed and working here."""
    wanted = syntax.plugins_for(bits_stored)
    if not wanted:
        return ()
    try:
        installed = set(_decoder(syntax.uid).available_plugins)
    except (NotImplementedError, ValueError):  # pydicom knows no decoder for it at all
        return ()
    return tuple(p for p in wanted if p in installed)


def decodable(bits_stored: int = 16) -> tuple[str, ...]:
    """UIDs of :data:`SYNTAXES` this install decodes for films of ``bits_stored`` bits
    (the PACS bridge offers exactly these at association)."""
    return tuple(s.uid for s in SYNTAXES if not s.compressed or available_plugins(s, bits_stored))


def describe(uid: str | None) -> str:
    """``Name (UID)`` of a transfer syntax, for messages."""
    if uid is None:
        return "unknown transfer syntax"
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def cannot_decode(uid: str | None, bits_stored: int) -> str | None:
    """Why ``uid`` cannot be decoded on this install (None when it can)."""
    syntax = BY_UID.get(str(uid)) if uid is not None else None
    if syntax is None:
        known = ", ".join(s.name for s in SYNTAXES)
        return (f"DICOM transfer syntax {describe(uid)} cannot be decoded here: cxr reads {known}; "
                "ask the PACS to send one of those (most can transcode to Explicit VR Little Endian)")
    if syntax.compressed and not available_plugins(syntax, bits_stored):
        return (f"DICOM transfer syntax {describe(uid)} cannot be decoded here: no decoder installed for "
                f"{bits_stored}-bit data (install {syntax.packages}: pip install 'cxr-triton[client]' or "
                "'cxr-triton[serve]' include it), or send uncompressed DICOM")
    return None


def decode_stored(ds, uid: str | None, bits_stored: int):
    """The stored values of ``ds``'s one frame, decoded with the syntax's preferred plugin.

    Raises InvalidImageError: "cannot be decoded here" (see :func:`cannot_decode`) or
    "truncated or corrupt" when an installed decoder fails on the data.
    """
    reason = None if uid is None else cannot_decode(uid, bits_stored)
    if reason is not None:
        raise InvalidImageError(reason)
    syntax = BY_UID.get(str(uid))  # None: a dataset built in memory, without file meta; pydicom decides
    plugins = () if syntax is None else available_plugins(syntax, bits_stored)
    if plugins:  # explicitly: pydicom would otherwise try (and log) every installed plugin in turn
        ds.pixel_array_options(decoding_plugin=plugins[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns, then guesses, on inconsistent headers
            return ds.pixel_array
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:
        rows, cols = ds.get("Rows", "?"), ds.get("Columns", "?")
        plugin = f", {plugins[0]} decoder" if plugins else ""
        raise InvalidImageError(
            f"truncated or corrupt DICOM pixel data ({cols}x{rows}, {describe(uid)}{plugin}): {exc}") from exc
