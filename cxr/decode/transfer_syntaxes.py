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

:func:`decoding_plugins` judges a film's syntax once: the plugins to decode it with, or
:class:`~cxr.errors.InvalidImageError` "cannot be decoded here" naming the syntax (name
and UID) and the package that would decode it; :func:`decode_stored` decodes the pixel
data with the plugin judged, and says "corrupt" only when an installed decoder failed
on the data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2K,
                         HTJ2KLossless, HTJ2KLosslessRPCL, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless)

from cxr.errors import InvalidImageError

NATIVE = "pydicom"  # the label of pydicom's own RLE decoder
CXR_GDCM = "cxr-gdcm"  # the label :mod:`cxr.decode.gdcm_codec` is registered under


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
        return UID(self.uid).name

    @property
    def compressed(self) -> bool:
        return bool(self.plugins)

    def plugins_for(self, bits_stored: int) -> tuple[str, ...]:
        return self.twelve_bit if self.twelve_bit is not None and bits_stored > 8 else self.plugins


_GDCM = "python-gdcm"
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg"
SYNTAXES: tuple[Syntax, ...] = (
    Syntax(ImplicitVRLittleEndian, True),
    Syntax(ExplicitVRLittleEndian, True),
    Syntax(ExplicitVRBigEndian, True),  # retired, still sent
    Syntax(DeflatedExplicitVRLittleEndian, True),
    Syntax(RLELossless, True, (NATIVE,), packages="pydicom"),
    Syntax(JPEGBaseline8Bit, False, ("pillow", "gdcm"), packages="pillow"),
    Syntax(JPEGExtended12Bit, False, ("pillow", "gdcm"), twelve_bit=(CXR_GDCM,), packages=_GDCM),
    Syntax(JPEGLossless, True, ("gdcm",), packages=_GDCM),  # Process 14
    Syntax(JPEGLosslessSV1, True, ("gdcm",), packages=_GDCM),  # Process 14, selection value 1
    Syntax(JPEGLSLossless, True, ("pyjpegls", "gdcm"), packages="pyjpegls"),
    Syntax(JPEGLSNearLossless, False, ("pyjpegls", "gdcm"), packages="pyjpegls"),
    Syntax(JPEG2000Lossless, True, ("pylibjpeg", "gdcm", "pillow"), packages=_OPENJPEG),
    Syntax(JPEG2000, False, ("pylibjpeg", "gdcm", "pillow"), packages=_OPENJPEG),
    Syntax(HTJ2KLossless, True, ("pylibjpeg",), packages=_OPENJPEG),
    Syntax(HTJ2KLosslessRPCL, True, ("pylibjpeg",), packages=_OPENJPEG),
    Syntax(HTJ2K, False, ("pylibjpeg",), packages=_OPENJPEG),
)
BY_UID = {s.uid: s for s in SYNTAXES}
UNCOMPRESSED = tuple(s.uid for s in SYNTAXES if not s.compressed)


def _decoder(uid: str):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(uid)
    if uid == JPEGExtended12Bit and CXR_GDCM not in decoder.available_plugins:
        from cxr.decode import gdcm_codec

        if gdcm_codec.is_available(uid):  # register once per process; GDCM may be absent
            decoder.add_plugin(CXR_GDCM, ("cxr.decode.gdcm_codec", "decode_frame"))
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
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def decoding_plugins(uid: str | None, bits_stored: int) -> tuple[str, ...]:
    """The judgement on a film's transfer syntax, made once per film: the plugins installed here that
    decode ``uid`` at ``bits_stored`` bits, preferred first (``()``: not compressed, or a
    dataset built in memory without file meta, whose pixels pydicom reads as it sees fit).

    Raises InvalidImageError "cannot be decoded here", naming the syntax (name and UID)
    and what would decode it, for a syntax outside :data:`SYNTAXES` or one whose
    decoder is not installed.  :mod:`cxr.decode.dicom` judges in its header checks,
    before any guard could call the film corrupt, and hands the plugins to
    :func:`decode_stored`.
    """
    if uid is None:
        return ()
    syntax = BY_UID.get(str(uid))
    if syntax is None:
        known = ", ".join(s.name for s in SYNTAXES)
        raise InvalidImageError(
            f"DICOM transfer syntax {describe(uid)} cannot be decoded here: cxr reads {known}; "
            "ask the PACS to send one of those (most can transcode to Explicit VR Little Endian)")
    plugins = available_plugins(syntax, bits_stored)
    if syntax.compressed and not plugins:
        raise InvalidImageError(
            f"DICOM transfer syntax {describe(uid)} cannot be decoded here: no decoder installed for "
            f"{bits_stored}-bit data (install {syntax.packages}: pip install 'cxr-triton[client]' or "
            "'cxr-triton[serve]' include it), or send uncompressed DICOM")
    return plugins


def decode_stored(ds, uid: str | None, bits_stored: int, *, plugins: tuple[str, ...] | None = None):
    """The stored values of ``ds``'s one frame, decoded with the syntax's preferred plugin.

    plugins: what :func:`decoding_plugins` already judged for this film (the DICOM
    pipeline passes its judgement along); None judges here.  Raises
    InvalidImageError: "cannot be decoded here" or "truncated or corrupt" when an
    installed decoder fails on the data.
    """
    if plugins is None:
        plugins = decoding_plugins(uid, bits_stored)
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
