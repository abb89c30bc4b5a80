"""Hostile inputs: every bad study gives one clear error type, never a crash or a memory blow-up.

The corpus (tests/data/hostile, rebuilt by its make_corpus.py) holds one file per
rule of the input policy in :mod:`cxr.imaging`; MANIFEST.json says what each file
must produce.  Arrays are built here.  Hypothesis then throws random and mutated
bytes, random DICOM headers and random arrays at the same decode + preprocess path:
the only allowed outcomes are a finite float32 ``[C, S, S]`` tensor or
:class:`InvalidImageError`.  Runs are derandomised (fixed examples, no database) so
CI sees the same inputs every time.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from cxr.errors import InvalidImageError
from cxr.imaging import decode_image
from cxr.preprocess import PreprocessConfig, preprocess

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST = json.loads((HOSTILE / "MANIFEST.json").read_text())
CONFIG = PreprocessConfig()  # the real defaults: 3 x 512 x 512
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY = {"inputs": 0, "rejected": 0, "decoded": 0}


def _decoder_available(uid: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def run_pipeline(source) -> np.ndarray | InvalidImageError:
    """decode_image + preprocess; any exception other than InvalidImageError propagates (a crash)."""
    TALLY["inputs"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom/numpy warnings are fine; only the outcome counts
            x, _ = preprocess(decode_image(source), CONFIG)
    except InvalidImageError as exc:
        TALLY["rejected"] += 1
        assert str(exc), "an InvalidImageError must say what is wrong"
        return exc
    TALLY["decoded"] += 1
    assert x.shape == (CONFIG.channels, CONFIG.size, CONFIG.size) and x.dtype == np.float32
    assert np.isfinite(x).all(), "a decoded study must give a finite model input"
    return x


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    print(f"\nhostile inputs tried: {TALLY['inputs']} ({TALLY['decoded']} decoded, {TALLY['rejected']} rejected "
          "with InvalidImageError, 0 crashes)")


# ------------------------------------------------------------------------ the corpus


def test_corpus_is_complete_and_small():
    files = {p.name for p in HOSTILE.iterdir()} - {"make_corpus.py", "MANIFEST.json", "__pycache__"}
    assert files == {e["file"] for e in MANIFEST}, "MANIFEST.json and the folder disagree; run make_corpus.py"
    assert sum((HOSTILE / f).stat().st_size for f in files) < 1_500_000
    assert len(MANIFEST) >= 60


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_file(entry):
    data = (HOSTILE / entry["file"]).read_bytes()
    expect = entry["expect"]
    if "decoder" in entry:  # the outcome depends on which pydicom decoders are installed
        expect = "ok" if _decoder_available(entry["decoder"]) else "cannot be decoded here"
    outcome = run_pipeline(data)
    if expect != "ok":
        assert isinstance(outcome, InvalidImageError), f"{entry['what']}: decoded, expected '{expect}'"
        assert expect in str(outcome), f"{entry['what']}: got {outcome}"
        return
    assert not isinstance(outcome, InvalidImageError), f"{entry['what']}: {outcome}"
    reference = entry.get("reference") or entry.get("reference_png")
    if reference:  # lossless encodings must give exactly the pixels of the uncompressed original
        np.testing.assert_allclose(decode_image(data).pixels, decode_image(HOSTILE / reference).pixels, atol=1e-6)


def test_policy_decodes_accepted_inputs_correctly():
    grey = decode_image(HOSTILE / "png_ok_gray8.png").pixels
    for name in ("png_ok_rgb_grey.png", "png_ok_palette_grey.png", "png_ok_rgba_opaque_grey.png"):
        np.testing.assert_allclose(decode_image(HOSTILE / name).pixels, grey, atol=1e-6, err_msg=name)
    constant = decode_image(HOSTILE / "png_ok_16bit_constant.png")
    assert constant.bits_stored == 16 and np.all(constant.pixels == np.float32(40000 / 65535))


# ------------------------------------------------------------------------ arrays

RNG = np.random.default_rng(7)
_GREY = RNG.random((32, 40))
ARRAYS = [
    ("nan", np.where(_GREY > 0.5, np.nan, _GREY).astype(np.float32), "NaN or Inf"),
    ("inf", np.where(_GREY > 0.9, np.inf, _GREY), "NaN or Inf"),
    ("minus_inf", np.where(_GREY > 0.9, -np.inf, _GREY).astype(np.float16), "NaN or Inf"),
    ("float_above_1", _GREY * 4, r"[0, 1]"),
    ("float_negative", _GREY - 0.5, r"[0, 1]"),
    ("complex", _GREY.astype(np.complex64), "dtype complex64"),
    ("object", _GREY.astype(object), "dtype object"),
    ("bool", _GREY > 0.5, "dtype bool"),
    ("str", _GREY.astype(str), "dtype <U"),
    ("int64", (_GREY * 100).astype(np.int64), "dtype int64"),
    ("int8", (_GREY * 100).astype(np.int8), "dtype int8"),
    ("scalar", np.array(0.5), "2-D"),
    ("1d", _GREY.ravel(), "2-D"),
    ("4d", _GREY[None, None], "2-D"),
    ("empty_2d", np.zeros((0, 0), np.uint8), "0x0"),
    ("empty_1d", np.zeros(0, np.float32), "2-D"),
    ("rgb_colour", (RNG.random((32, 40, 3)) * 255).astype(np.uint8), "2-D"),
    ("too_small", np.zeros((4, 40), np.uint8), "40x4; a radiograph needs"),
    ("too_large", np.broadcast_to(np.uint8(0), (8000, 8000)), "decompression bomb"),
    ("ok_uint8", (_GREY * 255).astype(np.uint8), "ok"),
    ("ok_uint16", (_GREY * 65535).astype(np.uint16), "ok"),
    ("ok_float64", _GREY, "ok"),
    ("ok_float16", _GREY.astype(np.float16), "ok"),
    ("ok_channel_last_1", (_GREY * 255).astype(np.uint8)[..., None], "ok"),
    ("ok_non_contiguous", _GREY.T, "ok"),
]


@pytest.mark.parametrize("arr,expect", [a[1:] for a in ARRAYS], ids=[a[0] for a in ARRAYS])
def test_array(arr, expect):
    outcome = run_pipeline(arr)
    if expect == "ok":
        assert not isinstance(outcome, InvalidImageError), outcome
    else:
        assert isinstance(outcome, InvalidImageError) and expect in str(outcome), outcome


# ------------------------------------------------------------------------ memory bound

_RSS_PROBE = textwrap.dedent("""
    import sys
    from cxr.errors import InvalidImageError
    from cxr.imaging import decode_image
    from cxr.preprocess import PreprocessConfig, preprocess
    import pydicom.pixels, PIL.PngImagePlugin, PIL.JpegImagePlugin, PIL.Jpeg2KImagePlugin  # warm imports

    def status(key):  # kB
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0])

    data = open(sys.argv[1], "rb").read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
    before = status("VmRSS")
    try:
        preprocess(decode_image(data), PreprocessConfig())
        outcome = "decoded"
    except InvalidImageError:
        outcome = "rejected"
    print(outcome, (status("VmHWM") - before) / 1024)
""")


def _peak_growth_mb(path: Path) -> tuple[str, float]:
    """Decode in a fresh interpreter; return the outcome and how far its peak RSS rose above
    the RSS just before decoding, in MB (the peak is reset first, so earlier import peaks
    cannot hide growth)."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    outcome, mb = out.stdout.split()
    return outcome, float(mb)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak")
def test_bombs_are_refused_before_allocating(tmp_path):
    # Control: a legitimate 6000x6000 film (36 Mpx, under the limit) does raise the peak
    # (36 Mpx of pixel buffers), so the probe sees real allocations.
    legit = tmp_path / "legit.png"
    legit.write_bytes(_zero_png(6000))
    outcome, control = _peak_growth_mb(legit)
    assert outcome == "decoded" and control > 100, f"control grew only {control:.0f} MB"
    figures = {}
    for name in ("png_bomb_20000.png", "png_bomb_8000.png", "jpeg_header_20000.jpg", "jpeg_header_8000.jpg",
                 "dicom_rows_20000.dcm", "dicom_j2k_header_bomb.dcm", "dicom_deflate_bomb.dcm", "png_ztxt_bomb.png"):
        outcome, figures[name] = _peak_growth_mb(HOSTILE / name)
        assert outcome == "rejected", name
        assert figures[name] < 50, f"{name}: peak RSS grew {figures[name]:.0f} MB"
    print("\npeak RSS growth (MB): control 6000x6000 " + f"{control:.0f}; "
          + "; ".join(f"{k} {v:.1f}" for k, v in figures.items()))


def _zero_png(side: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = zlib.compress(bytes(side + 1) * side, 1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------ fuzzing

SEEDS = [(HOSTILE / name).read_bytes() for name in (
    "png_ok_gray8.png", "png_ok_16bit.png", "png_ok_palette_grey.png", "png_ok_rgba_opaque_grey.png",
    "jpeg_ok_gray.jpg", "jpeg_ok_rgb_grey.jpg", "dicom_ok.dcm", "dicom_ok_rle.dcm", "dicom_ok_j2k.dcm",
    "dicom_ok_jpegls.dcm", "dicom_ok_deflated.dcm", "dicom_ok_jpeg_baseline.dcm",
)]
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(128) + b"DICM"]
INTERESTING = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x4e\x20", b"\x80\x00"]


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC so a mutated PNG gets past Pillow's CRC check."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        n = int.from_bytes(out[pos : pos + 4], "big")
        end = pos + 8 + n
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : end])))
        pos = end + 4
    return bytes(out)


@st.composite
def mutated(draw) -> bytes:
    """A valid study with 1-4 bit flips, truncations, insertions, splices or overwrites."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "overwrite"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:pos] + other[draw(st.integers(0, len(other))):]
        else:
            value = draw(st.sampled_from(INTERESTING))
            data[pos : pos + len(value)] = value
    data = bytes(data)
    return _fix_png_crcs(data) if draw(st.booleans()) else data


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=4096))
def test_fuzz_random_bytes(magic, payload):
    run_pipeline(magic + payload)


@settings(FUZZ, max_examples=700)
@given(mutated())
def test_fuzz_mutated_studies(data):
    run_pipeline(data)


_FLOATS = st.one_of(st.none(), st.floats(width=32), st.sampled_from([0.0, -1.0, 1e30, -1e30]))


@settings(FUZZ, max_examples=300)
@given(
    rows=st.integers(0, 48), cols=st.integers(0, 48), frames=st.sampled_from([None, 0, 1, 2]),
    allocated=st.sampled_from([None, 0, 1, 8, 12, 16, 32, 64]), stored=st.integers(0, 40),
    signed=st.integers(0, 2), samples=st.sampled_from([None, 1, 3]),
    photometric=st.sampled_from([None, "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", ""]),
    slope=_FLOATS, intercept=_FLOATS, center=_FLOATS, width=_FLOATS,
    function=st.sampled_from([None, "LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS"]),
    n_bytes=st.integers(0, 48 * 48 * 4 + 3), fill=st.integers(0, 255),
    ts=st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]),
    via_bytes=st.booleans(),
)
def test_fuzz_dicom_headers(rows, cols, frames, allocated, stored, signed, samples, photometric, slope, intercept,
                            center, width, function, n_bytes, fill, ts, via_bytes):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.77"
    ds.Rows, ds.Columns, ds.BitsStored, ds.PixelRepresentation = rows, cols, stored, signed
    for keyword, value in (("NumberOfFrames", frames), ("BitsAllocated", allocated), ("SamplesPerPixel", samples),
                           ("PhotometricInterpretation", photometric), ("RescaleSlope", slope),
                           ("RescaleIntercept", intercept), ("WindowCenter", center), ("WindowWidth", width),
                           ("VOILUTFunction", function)):
        if value is not None:
            setattr(ds, keyword, f"{value:.6g}" if isinstance(value, float) else value)
    ds.PixelData = bytes([fill]) * n_bytes
    if via_bytes:
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(buf, enforce_file_format=True)
        except Exception:  # pydicom refuses to write some nonsense; the dataset path still runs
            via_bytes = False
        else:
            run_pipeline(buf.getvalue())
    if not via_bytes:
        run_pipeline(ds)


@settings(FUZZ, max_examples=300)
@given(hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.int64, np.float16, np.float32, np.float64,
                           np.complex64, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40),
))
def test_fuzz_arrays(arr):
    run_pipeline(arr)
