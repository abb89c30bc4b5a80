"""Guards that run before pydicom decompresses pixel data.

pydicom decodes whatever a file claims: a deflated dataset inflates without limit,
an RLE segment expands up to 64x its encoded size, a codestream may declare a size
other than Rows/Columns, and an offset table may hold frames NumberOfFrames does
not admit.  :mod:`cxr.decode.dicom` calls :func:`check_before_decode` once its header
checks have passed (and :func:`check_deflate_bomb` before reading the file at all),
so a decompression bomb is refused from its headers, before anything large is
allocated.  Everything here raises :class:`~cxr.errors.InvalidImageError`, and
nothing here calls back into the decoders.

Per transfer syntax: native pixel data must be exactly Rows x Columns x BitsAllocated;
encapsulated pixel data must hold one frame, which then goes through its syntax's
entry in :data:`FRAME_GUARDS` (a decoder added for a new syntax adds its check there).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from cxr.errors import InvalidImageError
from cxr.decode.header import MAX_PIXELS, check_size, invalid_image, jpeg_frame_size

if TYPE_CHECKING:
    from pydicom.uid import UID

# Cap on an inflated (Deflated Explicit VR Little Endian) DICOM: MAX_PIXELS at
# 16 bits plus generous room for the header.  pydicom would inflate without limit.
MAX_INFLATED_DICOM_BYTES = 2 * MAX_PIXELS + 16 * 1024 * 1024
# PS3.5 G.2: each RLE segment decodes to exactly Rows x Columns bytes.  Some encoders
# emit a padding byte or run past that, which pydicom trims (pydicom issue #1438:
# 786433 vs 786432 bytes); one PackBits run of slack keeps such files readable and the
# expansion bounded.
RLE_SEGMENT_SLACK = 128


@dataclass(frozen=True)
class FrameSpec:
    """What a DICOM header promises about its one frame (already checked by :mod:`cxr.decode.dicom`).

    transfer_syntax: the file meta's TransferSyntaxUID, or None when the dataset has none.
    """

    rows: int
    cols: int
    bits_allocated: int
    transfer_syntax: UID | None = None

    @property
    def syntax_name(self) -> str:
        ts = self.transfer_syntax
        return f"{ts.name} ({ts})" if ts is not None else "unknown"

    @property
    def encapsulated(self) -> bool:
        """Compressed pixel data in fragments (Deflated compresses the dataset, not the pixels)."""
        ts = self.transfer_syntax
        return ts is not None and ts.is_encapsulated


def check_deflate_bomb(data: bytes, max_inflated: int = MAX_INFLATED_DICOM_BYTES) -> None:
    """Refuse a Deflated-transfer-syntax DICOM whose dataset inflates beyond ``max_inflated`` bytes.

    The File Meta group (always uncompressed) starts at byte 132 with its group
    length; the deflated dataset follows it.
    """
    if len(data) < 144 or data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        return  # pydicom will report whatever is wrong with the meta group
    from pydicom.uid import DeflatedExplicitVRLittleEndian  # here: this leaf imports no pydicom at import time

    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if DeflatedExplicitVRLittleEndian.encode() not in data[132:meta_end]:
        return
    # Count the inflated size in 1 MB pieces; nothing is kept, so the check itself is cheap.
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[meta_end:], 0
    try:
        while total <= max_inflated:
            piece = inflater.decompress(pending, 1 << 20)
            total += len(piece)
            pending = inflater.unconsumed_tail
            if inflater.eof or not (pending or piece):
                break
    except zlib.error as exc:
        raise InvalidImageError(f"corrupt deflated DICOM: {exc}") from exc
    if total > max_inflated:
        raise InvalidImageError(
            f"deflated DICOM ({len(data)} bytes) inflates to more than {max_inflated / 1e6:.0f} MB; "
            "refusing a possible decompression bomb"
        )


# ------------------------------------------------------------------ the one entry point


def check_before_decode(ds, frame: FrameSpec, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse pixel data of ``ds`` that would make pydicom allocate more than ``frame`` promises."""
    if not frame.encapsulated:
        check_native_length(len(ds.PixelData), frame)
        return
    guard = FRAME_GUARDS.get(frame.transfer_syntax.keyword, CODESTREAM_GUARD)
    guard.check(single_frame(ds, frame.syntax_name, guard.what), frame, max_pixels)


def check_native_length(have: int, frame: FrameSpec) -> None:
    rows, cols, allocated = frame.rows, frame.cols, frame.bits_allocated
    need = rows * cols * allocated // 8
    if have not in (need, need + 1):  # one pad byte makes an odd length even
        raise InvalidImageError(
            f"truncated or corrupt DICOM pixel data: {have} bytes, but Columns x Rows x BitsAllocated = "
            f"{cols}x{rows}x{allocated} bits need {need} (cut short, or wrong Rows/Columns)"
        )


def single_frame(ds, ts_name: str, what: str) -> tuple[bytes, ...]:
    """The fragments of the one frame pydicom's decoder will be handed.

    Uses pydicom's own frame splitting (Basic or Extended Offset Table, else all
    fragments joined), so the checks see exactly what gets decoded.  More than one
    frame is refused: with NumberOfFrames 1 pydicom still decodes every extra frame
    an offset table describes, and none of them would be checked.
    """
    from pydicom.encaps import generate_fragmented_frames

    extended = None
    if "ExtendedOffsetTable" in ds:
        extended = (ds.ExtendedOffsetTable, ds.get("ExtendedOffsetTableLengths") or b"")
    # malformed items, offsets past the end, ...
    with invalid_image(lambda exc: f"truncated or corrupt DICOM pixel data ({ts_name}): cannot split the "
                                   f"encapsulated fragments into frames: {exc}"):
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=1, extended_offsets=extended)
        first = next(frames, None)
        extra = next(frames, None)
    if first is None:
        raise InvalidImageError(
            f"truncated or corrupt DICOM pixel data ({ts_name}): the encapsulated data holds no frame"
        )
    if extra is not None:
        raise InvalidImageError(
            f"{what} ({ts_name}) holds more than one frame (its offset table splits the pixel data) "
            "although NumberOfFrames is 1"
        )
    return first


# ------------------------------------------------------------------ per transfer syntax


class FrameGuard(NamedTuple):
    """What to check in the one encapsulated frame of a transfer syntax, before decoding it."""

    what: str  # names the pixel data in messages
    check: Callable[[tuple[bytes, ...], FrameSpec, int], None]  # (fragments, frame, max_pixels)


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared by a JPEG / JPEG-LS / JPEG 2000 (HTJ2K) frame header, or None."""
    if frame[:2] == b"\xff\xd8":  # JPEG family
        return jpeg_frame_size(frame)
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K: SOC then SIZ (a JP2 wrapper puts boxes before)
    if at < 0 or len(frame) < at + 28:
        return None
    x, y, x0, y0 = (int.from_bytes(frame[at + 8 + 4 * i : at + 12 + 4 * i], "big") for i in range(4))
    return y - y0, x - x0


def check_codestream(fragments: tuple[bytes, ...], frame: FrameSpec, max_pixels: int) -> None:
    """The decoders allocate what the codestream header says, not what Rows/Columns say."""
    declared = codestream_size(fragments[0])
    if declared is None:
        return  # no header this walk knows: the decoder reports what is wrong
    check_size(declared[0], declared[1], f"compressed DICOM frame ({frame.syntax_name})", max_pixels)
    if declared != (frame.rows, frame.cols):
        raise InvalidImageError(
            f"compressed DICOM frame is {declared[1]}x{declared[0]} but Rows/Columns say {frame.cols}x{frame.rows}"
        )


def check_rle(fragments: tuple[bytes, ...], frame: FrameSpec, max_pixels: int) -> None:
    """pydicom's RLE decoder expands each segment fully before checking its length."""
    check_rle_frame(b"".join(fragments), frame.rows, frame.cols, frame.bits_allocated)


# The codestream-header check suits every syntax whose frame starts with a JPEG, JPEG-LS
# or JPEG 2000 header (the JPEG family, JPEG-LS, JPEG 2000, HTJ2K); others get an entry,
# keyed by the syntax's name in pydicom.uid (its ``UID.keyword``): a leaf that imported
# pydicom for the UID itself would pull numpy and Pillow in with it.
CODESTREAM_GUARD = FrameGuard("compressed pixel data", check_codestream)
FRAME_GUARDS: dict[str, FrameGuard] = {
    "RLELossless": FrameGuard("RLE pixel data", check_rle),
}


# PackBits run header n -> bytes the run occupies and bytes it decodes to: n < 128 is a
# literal run (the next n + 1 bytes are copied), n > 128 a replicate run (the next byte
# 257 - n times), 128 a no-op.
_RLE_STEP = [n + 2 for n in range(128)] + [1] + [2] * 127
_RLE_GAIN = [n + 1 for n in range(128)] + [0] + [257 - n for n in range(129, 256)]


def rle_segment_length(frame: bytes, start: int, end: int, limit: int) -> int:
    """Bytes the PackBits segment ``frame[start:end]`` decodes to, counted the way
    pydicom decodes it but without decoding; the walk stops once the count passes ``limit``.

    One table look-up per run: a literal run is skipped in one step.
    """
    pos, out = start, 0
    step, gain = _RLE_STEP, _RLE_GAIN
    safe = end - 129  # no run starting before this can reach past the end (the longest is 129 bytes)
    while pos < safe and out <= limit:
        n = frame[pos]
        out += gain[n]
        pos += step[n]
    while pos < end and out <= limit:  # the last runs may be cut short; pydicom copies what is there
        n = frame[pos]
        left = end - pos - 1
        out += min(n + 1, left) if n < 128 else (257 - n if n > 128 and left > 0 else 0)
        pos += step[n]
    return out


def check_rle_frame(frame: bytes, rows: int, cols: int, allocated: int) -> None:
    """Refuse an RLE Lossless frame (PS3.5 Annex G) that pydicom would expand beyond
    Rows x Columns per segment (a decompression bomb), or that decodes short.

    Costs one pass over the run headers (a literal run of up to 128 bytes is skipped in
    one step); nothing is allocated.
    """
    if len(frame) < 64:
        raise InvalidImageError(f"RLE frame is {len(frame)} bytes, shorter than its 64-byte header")
    count = int.from_bytes(frame[:4], "little")
    want = allocated // 8  # SamplesPerPixel is 1 here
    if count != want:
        raise InvalidImageError(
            f"RLE header lists {count} segments; BitsAllocated {allocated} x SamplesPerPixel 1 needs {want}"
        )
    offsets = [int.from_bytes(frame[4 + 4 * i : 8 + 4 * i], "little") for i in range(count)]
    ends = offsets[1:] + [len(frame)]
    if offsets[0] < 64 or any(b <= a for a, b in zip(offsets, ends)):
        raise InvalidImageError(
            f"RLE header segment offsets {offsets} are invalid for a {len(frame)}-byte frame "
            "(they must start at 64 or later, increase, and lie inside the frame)"
        )
    need = rows * cols
    for i, (start, end) in enumerate(zip(offsets, ends), start=1):
        # No PackBits encoding needs more than 2 bytes per output byte (one-byte literal
        # runs); anything longer is padding with no-op headers, which would cost the walk
        # below seconds for a small image: refuse it without walking.
        if end - start > 2 * (need + RLE_SEGMENT_SLACK) + 2:
            raise InvalidImageError(
                f"RLE segment {i} is {end - start} bytes, more than any encoding of Rows×Columns = "
                f"{cols}x{rows} = {need} bytes needs (at most 2 bytes per pixel byte)"
            )
        got = rle_segment_length(frame, start, end, need + RLE_SEGMENT_SLACK)
        if got > need + RLE_SEGMENT_SLACK:
            raise InvalidImageError(
                f"RLE segment {i} expands past Rows×Columns = {cols}x{rows} = {need} bytes (stopped counting at "
                f"{got} decoded bytes; its {end - start} encoded bytes can decode to up to {64 * (end - start)}); "
                "refusing a possible decompression bomb"
            )
        if got < need:
            raise InvalidImageError(
                f"RLE segment {i} decodes to only {got} bytes, but Rows×Columns = {cols}x{rows} need {need} "
                "(truncated or corrupt RLE pixel data)"
            )

