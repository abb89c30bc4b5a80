"""A pydicom decoding plugin: 12-bit JPEG Extended (Process 2 & 4) through GDCM.

CR and DX films are often stored as 12-bit JPEG Extended.  pydicom's GDCM and Pillow
plugins both refuse BitsStored > 8 for this syntax before looking at the data, and
the only other pydicom plugin that decodes it (pylibjpeg-libjpeg) is GPL-3.  GDCM
itself decodes 12-bit JPEG (its libjpeg is built for 8, 12 and 16 bits), so this
plugin hands the frame to GDCM directly.  :mod:`cxr.decode.transfer_syntaxes` registers it
under the label ``cxr-gdcm`` and uses it for 12-bit data only.

The plugin interface (pydicom 3, "decoder plugins"): ``is_available(uid)``,
``DECODER_DEPENDENCIES`` and a function ``(src: bytes, runner) -> bytes`` that
returns the frame's pixels in little-endian, BitsAllocated-sized samples.
"""

from __future__ import annotations

from pydicom.uid import JPEGExtended12Bit

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("gdcm>=3.0.10",)}

try:
    import gdcm

    # GDCM tries the 8-bit codec first and says so on stderr before it switches to 12 bits.
    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()
except ImportError:  # python-gdcm is not installed: the plugin is unavailable
    gdcm = None


def is_available(uid: str) -> bool:
    return gdcm is not None and uid == JPEGExtended12Bit


def decode_frame(src: bytes, runner) -> bytes:
    """One JPEG Extended frame -> 16-bit little-endian grayscale samples."""
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("cxr's GDCM plugin decodes grayscale JPEG Extended only")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    pixel_data = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    pixel_data.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(pixel_data)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(JPEGExtended12Bit)))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits, bits - 1, runner.pixel_representation))
    runner.set_option("bits_allocated", 16)  # GDCM hands back 16-bit samples for 9..16 bits
    buffer = image.GetBuffer()  # GDCM's char* arrives as str; its bytes survive surrogateescape
    frame = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
    if len(frame) != runner.rows * runner.columns * 2:
        raise ValueError(f"GDCM decoded {len(frame)} bytes; {runner.columns}x{runner.rows} 16-bit samples need "
                         f"{runner.rows * runner.columns * 2} (truncated or corrupt JPEG data)")
    return frame
