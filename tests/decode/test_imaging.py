"""Decoding: real DICOM files, 8/16-bit PNG, JPEG, and clear errors for everything else."""

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr.errors import InvalidImageError
from cxr.decode.image import decode_image, decode_pixels


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _dicom(pixels: np.ndarray, photometric="MONOCHROME2", bits_stored=12, **extra) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


RAMP = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)


# ---------------------------------------------------------------- real DICOM files


def test_real_cr_monochrome1_follows_the_dicom_pipeline(real_cr_files):
    path = real_cr_files[0]
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
    img = decode_image(path)
    assert img.source_format == "dicom" and img.pixels.shape == (ds.Rows, ds.Columns)
    assert img.spacing_mm == (0.1, 0.1)
    assert img.dicom.sop_instance_uid == ds.SOPInstanceUID
    # Independent computation: rescale -> linear window -> invert.
    v = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - np.clip((v - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_all_real_cr_files_decode_from_bytes(real_cr_files):
    for path in real_cr_files:
        img = decode_image(path.read_bytes())
        assert img.pixels.dtype == np.float32
        assert 0.0 <= img.pixels.min() <= img.pixels.max() <= 1.0


def test_real_ct_signed_with_rescale_and_no_window(pydicom_test_files):
    # CT_small: signed 16-bit, intercept -1024, no window -> the full range BitsStored allows
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    assert ds.PixelRepresentation == 1 and "WindowCenter" not in ds
    img = decode_image(pydicom_test_files / "CT_small.dcm")
    assert img.dicom.photometric_interpretation == "MONOCHROME2"
    lo, hi = -32768 - 1024, 32767 - 1024
    expected = (ds.pixel_array.astype(np.float64) - 1024 - lo) / (hi - lo)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_truncated_dicom_fails_clearly(pydicom_test_files):
    with pytest.raises(InvalidImageError, match="truncated or corrupt DICOM"):
        decode_image(pydicom_test_files / "MR_truncated.dcm")


def test_truncated_dicom_bytes(real_cr_files):
    data = real_cr_files[0].read_bytes()
    with pytest.raises(InvalidImageError, match="DICOM"):
        decode_image(data[: len(data) - 200])


def test_rgb_dicom_is_not_a_radiograph(pydicom_test_files):
    with pytest.raises(InvalidImageError, match="PhotometricInterpretation RGB is not a radiograph"):
        decode_image(pydicom_test_files / "SC_rgb_small_odd.dcm")


def test_dicom_without_pixel_data(pydicom_test_files):
    with pytest.raises(InvalidImageError, match="without pixel data"):
        decode_image(pydicom_test_files / "reportsi.dcm")


def test_compressed_dicom_without_decoder_names_the_transfer_syntax(pydicom_test_files):
    try:
        decode_image(pydicom_test_files / "JPEG2000.dcm")
    except InvalidImageError as exc:
        assert "JPEG 2000" in str(exc) or "PhotometricInterpretation" in str(exc)
    else:  # a JPEG 2000 decoder is installed: then it must decode
        pass


# -------------------------------------------------------------- DICOM semantics


def test_monochrome1_is_the_inverse_of_monochrome2():
    kw = dict(WindowCenter=2048, WindowWidth=4096)
    m2 = decode_image(_dicom_bytes(_dicom(RAMP, "MONOCHROME2", **kw)))
    m1 = decode_image(_dicom_bytes(_dicom(RAMP, "MONOCHROME1", **kw)))
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)


def test_without_window_scales_by_bits_stored():
    img = decode_image(_dicom(RAMP, bits_stored=12))
    np.testing.assert_allclose(img.pixels, RAMP / 4095.0, atol=1e-6)


def test_rescale_applied_before_window():
    # stored v -> 2v - 1000; window centred at 0 (stored 500) with width 2 -> threshold there
    ds = _dicom(RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=200)
    img = decode_image(ds)
    hu = RAMP * 2.0 - 1000
    expected = np.clip((hu + 0.5) / 199 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_voi_lut_sequence_preferred_over_window():
    ds = _dicom(RAMP, WindowCenter=100, WindowWidth=10)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "OW", ((np.arange(4096) // 16) * 257).astype("<u2").tobytes())  # LUTData
    ds.VOILUTSequence = [lut]
    img = decode_image(_dicom_bytes(ds))
    np.testing.assert_allclose(img.pixels, (RAMP // 16) / 255.0, atol=1e-6)


def test_imager_pixel_spacing_used_when_pixel_spacing_absent():
    img = decode_image(_dicom(RAMP, ImagerPixelSpacing=[0.143, 0.15]))
    assert img.spacing_mm == pytest.approx((0.143, 0.15))


def test_multiframe_rejected():
    ds = _dicom(np.concatenate([RAMP, RAMP]), NumberOfFrames=2)
    ds.Rows = RAMP.shape[0]
    with pytest.raises(InvalidImageError, match="multi-frame"):
        decode_image(ds)


# ------------------------------------------------------------------------ PNG/JPEG


def test_8bit_png():
    arr = (np.arange(100 * 80) % 256).astype(np.uint8).reshape(100, 80)
    img = decode_image(_png(arr))
    assert img.bits_stored == 8 and img.source_format == "png"
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)


def test_16bit_png_keeps_full_precision():
    arr = (np.arange(100 * 80) * 7 % 65536).astype(np.uint16).reshape(100, 80)
    img = decode_image(_png(arr))
    assert img.bits_stored == 16
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-7)
    assert len(np.unique(img.pixels)) > 256  # not squashed to 8 bits


def test_png_path(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png(np.full((20, 30), 128, np.uint8)))
    assert decode_image(p).pixels.shape == (20, 30)
    assert decode_image(str(p)).pixels.shape == (20, 30)


def test_grayscale_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(buf, format="JPEG", quality=95)
    img = decode_image(buf.getvalue())
    assert img.source_format == "jpeg" and img.pixels.shape == (64, 64)


def test_grayscale_stored_as_rgb_is_accepted():
    g = (np.arange(50 * 40) % 256).astype(np.uint8).reshape(50, 40)
    img = decode_image(_png(np.stack([g, g, g], -1)))
    np.testing.assert_allclose(img.pixels, g / 255.0, atol=1e-6)


def test_colour_png_is_rejected():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 255
    with pytest.raises(InvalidImageError, match="colour PNG"):
        decode_image(_png(rgb))


def test_colour_palette_png_is_rejected():
    img = Image.fromarray(np.zeros((40, 40, 3), np.uint8) + np.array([200, 10, 10], np.uint8)).convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with pytest.raises(InvalidImageError, match="palette"):
        decode_image(buf.getvalue())


def test_truncated_png():
    data = _png((np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("data,match", [
    (b"", "empty input"),
    (b"%PDF-1.7 not an image", "unrecognised image format"),
    (b"GIF89a" + b"\0" * 40, "unrecognised image format"),
])
def test_non_image_bytes(data, match):
    with pytest.raises(InvalidImageError, match=match):
        decode_image(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a size; no pixel data follows (a decompression-bomb probe)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_oversized_image_refused_before_decoding():
    with pytest.raises(InvalidImageError, match="20000x20000 = 400.0 Mpx, above"):
        decode_image(_png_header_only(20000, 20000))


def test_tiny_image_refused():
    with pytest.raises(InvalidImageError, match="1x1"):
        decode_image(_png(np.zeros((1, 1), np.uint8)))


# ------------------------------------------------------------------------ raw pixels


def test_uint16_pixels_scaled_by_bits_stored():
    img = decode_pixels(RAMP, bits_stored=12)
    np.testing.assert_allclose(img.pixels, RAMP / 4095.0, atol=1e-7)
    with pytest.raises(InvalidImageError, match="above the 10-bit maximum"):
        decode_pixels(RAMP, bits_stored=10)


@pytest.mark.parametrize("arr,match", [
    (np.full((16, 16), np.nan, np.float32), "NaN or Inf"),
    (np.full((16, 16), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 16, 16), np.uint8), "2-D"),
    (np.zeros((16, 16), np.int64), "dtype int64"),
])
def test_bad_pixel_arrays(arr, match):
    with pytest.raises(InvalidImageError, match=match):
        decode_image(arr)
