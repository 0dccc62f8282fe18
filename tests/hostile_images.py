"""Hostile images, built in memory: what an attacker sends to make decoding cost far more than the upload."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

# Just under the default pixel limit (40 MP), with both sides well over the 768 px work side.
BIG = (8000, 5000)


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    """Save an image to bytes in the given Pillow format."""
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0) -> bytes:
    """A little-endian classic TIFF IFD: entries are (tag, type, count, 4-byte value or offset)."""
    body = b"".join(struct.pack("<HHI4s", tag, typ, count, value) for tag, typ, count, value in sorted(entries))
    return struct.pack("<H", len(entries)) + body + struct.pack("<I", next_ifd)


def _grey_page(pixels_at: int, side: int = 16) -> list[tuple[int, int, int, bytes]]:
    """The tags of an uncompressed 8-bit grey page of side x side pixels stored at pixels_at."""
    long = lambda v: struct.pack("<I", v)  # noqa: E731
    short = lambda v: struct.pack("<HH", v, 0)  # noqa: E731
    return [(256, 3, 1, short(side)), (257, 3, 1, short(side)), (258, 3, 1, short(8)), (259, 3, 1, short(1)),
            (262, 3, 1, short(1)), (273, 4, 1, long(pixels_at)), (277, 3, 1, short(1)),
            (278, 3, 1, short(side)), (279, 4, 1, long(side * side))]


@functools.cache  # built once a test run: a few take a second
def tiff_tag_bomb(tags: int = 200, blob: int = 4_000_000) -> bytes:
    """A 16x16 TIFF whose `tags` private tags all point at one blob of `blob` bytes (Pillow reads each at open)."""
    ifd_at = 8
    n = 9 + tags
    pixels_at = ifd_at + 2 + 12 * n + 4
    blob_at = pixels_at + 256
    entries = _grey_page(pixels_at) + [(65000 + i, 7, blob, struct.pack("<I", blob_at)) for i in range(tags)]
    return b"II*\x00" + struct.pack("<I", ifd_at) + _tiff_ifd(entries) + bytes(range(256)) + bytes(blob)


@functools.cache  # built once a test run: a few take a second
def tiff_many_pages(pages: int = 5000) -> bytes:
    """A TIFF of `pages` 16x16 pages in one IFD chain, all sharing one strip of pixels."""
    pixels_at = 8
    first = pixels_at + 256
    size = 2 + 12 * 9 + 4
    ifds = b"".join(_tiff_ifd(_grey_page(pixels_at), first + (i + 1) * size if i + 1 < pages else 0)
                    for i in range(pages))
    return b"II*\x00" + struct.pack("<I", first) + bytes(range(256)) + ifds


def tiff_ifd_loop() -> bytes:
    """A TIFF whose only IFD names itself as the next one."""
    pixels_at, ifd_at = 8, 8 + 256
    return b"II*\x00" + struct.pack("<I", ifd_at) + bytes(range(256)) + _tiff_ifd(_grey_page(pixels_at), ifd_at)


def tiff_tag_outside() -> bytes:
    """A 16x16 TIFF with one tag whose value lies past the end of the file."""
    ifd_at, pixels_at = 8, 8 + 2 + 12 * 10 + 4
    entries = _grey_page(pixels_at) + [(65000, 7, 1_000_000, struct.pack("<I", pixels_at))]
    return b"II*\x00" + struct.pack("<I", ifd_at) + _tiff_ifd(entries) + bytes(range(256))


@functools.cache  # built once a test run: a few take a second
def wide_tiff(mode: str, value, size=BIG) -> bytes:
    """A deflate-compressed 16-bit or float TIFF of one value (small file, `size` pixels decoded)."""
    dtype = {"I;16": np.uint16, "F": np.float32}[mode]
    return encode(Image.fromarray(np.full(size[::-1], value, dtype=dtype), mode), "TIFF",
                  compression="tiff_adobe_deflate")


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _zeros_idat(row_bytes: int, rows: int) -> bytes:
    comp = zlib.compressobj(9)
    row = bytes(row_bytes + 1)  # filter byte 0, then the row
    return b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()


@functools.cache  # built once a test run: a few take a second
def png16(size=BIG, value: int = 0) -> bytes:
    """A 16-bit grey PNG of one value: ~80 KB of file, `size` pixels of 16-bit samples decoded."""
    width, height = size
    comp = zlib.compressobj(9)
    row = b"\x00" + struct.pack(">H", value) * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@functools.cache  # built once a test run: a few take a second
def grey_png(size) -> bytes:
    """An 8-bit grey PNG of zeros: a true decompression bomb at a large size."""
    width, height = size
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", _zeros_idat(width, height))
            + png_chunk(b"IEND", b""))


@functools.cache  # built once a test run: a few take a second
def palette_bomb(size=BIG) -> bytes:
    """A 1-bit palette PNG with a transparent colour: 1 bit a pixel stored, RGBA working copies if converted whole."""
    width, height = size
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    chunks = (png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", bytes([200, 30, 40, 0, 0, 0]))
              + png_chunk(b"tRNS", b"\xff\x00") + png_chunk(b"IDAT", _zeros_idat(-(-width // 8), height)))
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


@functools.cache  # built once a test run: a few take a second
def apng_many_frames(size=(6000, 6000), frames: int = 20_000) -> bytes:
    """An animated PNG: a large first frame of zeros, then `frames` tiny 1x1 frames."""
    width, height = size

    def fctl(seq: int, w: int, h: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 100, 0, 0))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    out = [b"\x89PNG\r\n\x1a\n", png_chunk(b"IHDR", ihdr), png_chunk(b"acTL", struct.pack(">II", frames + 1, 0)),
           fctl(0, width, height), png_chunk(b"IDAT", _zeros_idat(width, height))]
    tiny = zlib.compress(b"\x00\xff")  # one row: filter 0, one white pixel
    seq = 1
    for _ in range(frames):
        out.append(fctl(seq, 1, 1))
        out.append(png_chunk(b"fdAT", struct.pack(">I", seq + 1) + tiny))
        seq += 2
    out.append(png_chunk(b"IEND", b""))
    return b"".join(out)


@functools.cache  # built once a test run: a few take a second
def gif_many_frames(size=(6000, 6000), frames: int = 20_000) -> bytes:
    """An animated GIF: a large first frame, then `frames` tiny 1x1 frames (its frame 0 is all colour 1)."""
    first = encode(Image.new("P", size, 1), "GIF")  # header, palette, one full frame, trailer
    assert first.endswith(b";")
    # graphic control (disposal none, 1/100 s) + a 1x1 image at (0, 0) of colour 0, LZW minimum code size 2
    tiny = (b"\x21\xf9\x04\x04\x01\x00\x00\x00" + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00"
            + b"\x02\x02\x44\x01\x00")
    return first[:-1] + tiny * frames + b";"


@functools.cache  # built once a test run: a few take a second
def foreign_images() -> dict[str, bytes]:  # callers must not change the dict
    """A small photo in each format Pillow can read but intake must not: built with Pillow's own writers."""
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return {
        "ICO": encode(photo, "ICO"), "PCX": encode(photo, "PCX"), "TGA": encode(photo, "TGA"),
        "PPM": encode(photo, "PPM"), "SGI": encode(photo, "SGI"), "JPEG2000": encode(photo, "JPEG2000"),
        "QOI": encode(photo, "QOI"), "DDS": encode(photo.convert("RGBA"), "DDS"),
    }


def bmp_of_bytes(nbytes: int) -> bytes:
    """An uncompressed 24-bit BMP of about nbytes."""
    side = int((nbytes / 3) ** 0.5)
    return encode(Image.new("RGB", (side, side), (90, 120, 30)), "BMP")


def png_text_bomb(chunks: int = 70) -> bytes:
    """A 64x64 PNG with `chunks` zTXt chunks of 1 MB of text each, about 1 KB each compressed."""
    base = encode(Image.new("RGB", (64, 64)), "PNG")
    text = zlib.compress(b"a" * ((1 << 20) - 16), 9)
    extra = b"".join(png_chunk(b"zTXt", f"k{i}".encode() + b"\x00\x00" + text) for i in range(chunks))
    at = base.index(b"IDAT") - 4
    return base[:at] + extra + base[at:]
