"""Guards that run before pydicom decompresses pixel data.

pydicom decodes whatever a file claims: a deflated dataset inflates without limit,
an RLE segment expands up to 64x its encoded size, a codestream may declare a size
other than Rows/Columns, and an offset table may hold frames NumberOfFrames does
not admit.  :mod:`cxr.imaging` calls these checks first, so a decompression bomb is
refused from its headers, before anything large is allocated.  All of them raise
:class:`~cxr.errors.InvalidImageError`.
"""

from __future__ import annotations

import zlib

from cxr.errors import InvalidImageError

DEFLATED_TS = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS_TS = "1.2.840.10008.1.2.5"
# PS3.5 G.2: each RLE segment decodes to exactly Rows x Columns bytes.  Some encoders
# emit a padding byte or run past that, which pydicom trims (pydicom issue #1438:
# 786433 vs 786432 bytes); one PackBits run of slack keeps such files readable and the
# expansion bounded.
RLE_SEGMENT_SLACK = 128


def has_decoder(uid) -> bool:
    """Whether pydicom has a working decoder for ``uid`` (a failure then means corrupt data)."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(uid).is_available)
    except Exception:  # unknown/unsupported syntax
        return False


def check_deflate_bomb(data: bytes, max_inflated: int) -> None:
    """Refuse a Deflated-transfer-syntax DICOM whose dataset inflates beyond ``max_inflated`` bytes.

    The File Meta group (always uncompressed) starts at byte 132 with its group
    length; the deflated dataset follows it.
    """
    if len(data) < 144 or data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        return  # pydicom will report whatever is wrong with the meta group
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if DEFLATED_TS.encode() not in data[132:meta_end]:
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


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # F7: JPEG-LS


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared by a JPEG / JPEG-LS / JPEG 2000 frame header, or None."""
    if frame[:2] == b"\xff\xd8":  # JPEG family: walk the marker segments to the SOF
        pos = 2
        while pos + 9 <= len(frame):
            if frame[pos] != 0xFF:
                return None
            marker = frame[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(frame[pos + 5 : pos + 7], "big"), int.from_bytes(frame[pos + 7 : pos + 9], "big")
            pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
        return None
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K: SOC then SIZ (a JP2 wrapper puts boxes before)
    if at < 0 or len(frame) < at + 28:
        return None
    x, y, x0, y0 = (int.from_bytes(frame[at + 8 + 4 * i : at + 12 + 4 * i], "big") for i in range(4))
    return y - y0, x - x0


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
    try:
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=1, extended_offsets=extended)
        first = next(frames, None)
        extra = next(frames, None)
    except MemoryError:  # the host is short of memory: not the study's fault
        raise
    except Exception as exc:  # malformed items, offsets past the end, ...
        raise InvalidImageError(
            f"truncated or corrupt DICOM pixel data ({ts_name}): cannot split the encapsulated fragments into "
            f"frames: {exc}"
        ) from exc
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


def first_frame(pixel_data: bytes) -> bytes | None:
    """The start of the first encapsulated frame (the item after the Basic Offset Table)."""
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(pixel_data)
        next(fragments)  # Basic Offset Table item (possibly empty)
        return next(fragments)
    except Exception:  # malformed encapsulation: the decoder reports it
        return None
