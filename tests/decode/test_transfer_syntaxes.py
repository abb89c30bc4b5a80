"""Every transfer syntax a PACS sends for chest films, made here from synthetic films with dcmtk,
GDCM and OpenJPH, decoded by cxr: bit-exact for the lossless ones, within a stated tolerance for
the lossy ones; a syntax nothing here decodes is named (UID and what would decode it), never
called corrupt; a corrupt frame still is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr.errors import InvalidImageError
from cxr.decode.image import decode_image
from cxr.decode.transfer_syntaxes import BY_UID, SYNTAXES, available_plugins, decodable, decode_stored
from peers import base_films, film_source, make_film, reference_decode

# Lossy encodings as made here (peers.ENCODERS) and how far their decoded films may be from the
# original, in the [0, 1] display range after the grayscale pipeline (max, mean |diff|); client/README.md,
# "Connect your PACS".  This bounds the encoders' loss (dcmcjpeg may also shift the stored values
# and the window with them); the decoders themselves must equal an independent decoder exactly.
LOSSY_TOLERANCE = {
    "1.2.840.10008.1.2.4.50": (0.06, 0.01),  # JPEG Baseline, dcmcjpeg's default quality 90, 8-bit film
    "1.2.840.10008.1.2.4.51": (0.01, 0.002),  # JPEG Extended 12-bit, quality 90
    "1.2.840.10008.1.2.4.81": (0.001, 0.0005),  # JPEG-LS near-lossless, NEAR = 2 of 4095
    "1.2.840.10008.1.2.4.91": (0.015, 0.003),  # JPEG 2000 irreversible, PSNR 80 dB
    "1.2.840.10008.1.2.4.203": (0.004, 0.001),  # HTJ2K irreversible, quantisation step 0.001
}
LOSSLESS = [s.uid for s in SYNTAXES if s.lossless]
LOSSY = [s.uid for s in SYNTAXES if not s.lossless]


@pytest.fixture(scope="module")
def films(synth_data, tmp_path_factory) -> dict[str, Path]:
    return base_films(synth_data, tmp_path_factory.mktemp("films"))


def _source_for(syntax: str, films: dict[str, Path], which: str) -> Path:
    return film_source(films, syntax, which)


@pytest.mark.parametrize("which", ["cr12", "dx12"])
@pytest.mark.parametrize("syntax", LOSSLESS, ids=[BY_UID[u].name for u in LOSSLESS])
def test_lossless_syntaxes_decode_bit_exact(syntax, which, films, tmp_path):
    source = films[which]
    film = make_film(source, syntax, tmp_path / "film.dcm", sv=3)
    assert pydicom.dcmread(film, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    original, decoded = decode_image(source), decode_image(film)
    assert decoded.dicom.transfer_syntax == syntax
    np.testing.assert_array_equal(decoded.pixels, original.pixels)  # bit-exact through the whole pipeline
    assert decoded.bits_stored == original.bits_stored and decoded.spacing_mm == original.spacing_mm


@pytest.mark.parametrize("selection_value", range(1, 8))
def test_jpeg_lossless_process_14_every_selection_value(selection_value, films, tmp_path):
    film = make_film(films["cr12"], "1.2.840.10008.1.2.4.57", tmp_path / "p14.dcm", sv=selection_value)
    np.testing.assert_array_equal(decode_image(film).pixels, decode_image(films["cr12"]).pixels)


def _stored(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return decode_stored(ds, ds.file_meta.TransferSyntaxUID, int(ds.BitsStored)).astype(np.int64)


@pytest.mark.parametrize("which", ["cr12", "dx12"])
@pytest.mark.parametrize("syntax", LOSSY, ids=[BY_UID[u].name for u in LOSSY])
def test_lossy_syntaxes_equal_an_independent_decoder_within_the_stated_loss(syntax, which, films, tmp_path):
    source = _source_for(syntax, films, which)
    film = make_film(source, syntax, tmp_path / "film.dcm")
    # dcmtk (JPEG, JPEG-LS) agrees exactly; implementations of the irreversible 9/7 wavelet (JPEG 2000:
    # GDCM's OpenJPEG build; HTJ2K: OpenJPH) may round a value differently by one.
    rounding = 1 if syntax in ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203") else 0
    assert np.abs(_stored(film) - reference_decode(film)).max() <= rounding
    loss = np.abs(decode_image(film).pixels.astype(np.float64) - decode_image(source).pixels)
    worst, mean = LOSSY_TOLERANCE[syntax]
    assert 0 < loss.max() <= worst and loss.mean() <= mean, f"max {loss.max():.5f}, mean {loss.mean():.6f}"


def test_twelve_bit_jpeg_extended_is_decoded_not_called_corrupt(films, tmp_path):
    """The field report: a valid 12-bit JPEG Extended film was 'truncated or corrupt'
    (pydicom's Pillow plugin claims the syntax, then refuses 12 bits)."""
    film = make_film(films["cr12"], "1.2.840.10008.1.2.4.51", tmp_path / "e12.dcm")
    assert pydicom.dcmread(film, stop_before_pixels=True).BitsStored == 12
    assert available_plugins(BY_UID["1.2.840.10008.1.2.4.51"], 12) == ("cxr-gdcm",)
    assert decode_image(film).bits_stored == 12


def test_every_listed_syntax_decodes_on_this_install():
    """The [client]/[serve] extras install a decoder for every syntax of the table."""
    assert set(decodable(8)) == set(decodable(16)) == {s.uid for s in SYNTAXES}


def test_a_syntax_nothing_here_decodes_is_named_not_called_corrupt(films, tmp_path):
    ds = pydicom.dcmread(make_film(films["cr12"], "1.2.840.10008.1.2.4.90", tmp_path / "j2k.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2 multi-component: no decoder here
    with pytest.raises(InvalidImageError) as info:
        decode_image(ds)
    text = str(info.value)
    assert "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only) (1.2.840.10008.1.2.4.92) cannot be decoded here" in text
    assert "corrupt" not in text and "Explicit VR Little Endian" in text


def test_a_missing_decoder_names_the_syntax_and_the_package(films, tmp_path):
    from pydicom.pixels import get_decoder

    film = make_film(films["cr12"], "1.2.840.10008.1.2.4.70", tmp_path / "sv1.dcm")
    decoder = get_decoder("1.2.840.10008.1.2.4.70")
    decoder.remove_plugin("gdcm")  # as on an install without python-gdcm
    try:
        with pytest.raises(InvalidImageError) as info:
            decode_image(film)
    finally:
        decoder.add_plugin("gdcm", ("pydicom.pixels.decoders.gdcm", "_decode_frame"))
    text = str(info.value)
    assert "(1.2.840.10008.1.2.4.70) cannot be decoded here: no decoder installed for 12-bit data" in text
    assert "python-gdcm" in text and "corrupt" not in text


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.51",
                                    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201"])
def test_a_corrupt_frame_of_a_decodable_syntax_is_still_corrupt(syntax, films, tmp_path):
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(make_film(films["cr12"], syntax, tmp_path / "film.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # the headers (SOF / SIZ) survive, the data is cut short
    with pytest.raises(InvalidImageError, match="truncated or corrupt DICOM pixel data"):
        decode_image(ds)


# ---------------------------------------------------------------------------- fuzzing

COMPRESSED = [s.uid for s in SYNTAXES if s.compressed and s.uid != "1.2.840.10008.1.2.5"]  # RLE: test_hostile


@pytest.fixture(scope="module")
def frames(films, tmp_path_factory) -> dict[str, tuple[pydicom.Dataset, bytes]]:
    """One valid film per compressed syntax (dcmtk, GDCM, OpenJPH) and its frame's bytes."""
    from pydicom.encaps import generate_frames

    out, made = tmp_path_factory.mktemp("fuzz"), {}
    for syntax in COMPRESSED:
        ds = pydicom.dcmread(make_film(_source_for(syntax, films, "cr12"), syntax, out / f"{syntax}.dcm"))
        made[syntax] = ds, next(generate_frames(ds.PixelData, number_of_frames=1))
    return made


def _mutate(frame: bytes, flips, cut: float | None) -> bytes:
    data = bytearray(frame)
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    return bytes(data[: max(2, int(cut * len(data)))] if cut is not None else data)


@pytest.mark.slow
def test_fuzz_mutated_frames_of_every_compressed_syntax(frames):
    """Random byte flips and cuts in the frames of every newly decodable syntax: each study decodes to
    finite pixels of the header's size or is refused with InvalidImageError; nothing else escapes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pydicom.encaps import encapsulate

    outcomes = {"decoded": 0, "refused": 0}

    @settings(deadline=None, derandomize=True, database=None, max_examples=400)
    @given(syntax=st.sampled_from(COMPRESSED),
           flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6),
           cut=st.none() | st.floats(0.05, 1.0))
    def run(syntax, flips, cut):
        ds, frame = frames[syntax]
        mutated = pydicom.Dataset(ds)
        mutated.file_meta = ds.file_meta
        mutated.PixelData = encapsulate([_mutate(frame, flips, cut)])
        try:
            image = decode_image(mutated)
        except InvalidImageError:
            outcomes["refused"] += 1
            return
        assert image.pixels.shape == (ds.Rows, ds.Columns) and np.isfinite(image.pixels).all()
        outcomes["decoded"] += 1

    run()
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0, outcomes
