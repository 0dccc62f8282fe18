"""TIFF structure checks with struct alone, before Pillow reads a single tag of an untrusted file."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Pillow reads every tag's value into memory when it opens a TIFF, and nothing stops many tags from naming the
# same large blob: ~200 tags over one 4 MB blob cost 1.6 GB and 8 s. A sane file stores each value once, so the
# values of all tags together fit in the file; more than that means they overlap.
MAX_IFDS = 64  # pages plus EXIF, GPS and sub-IFDs; a photo has a handful
MAX_ENTRIES = 4096  # tags in all IFDs together; a camera TIFF has a few hundred at most
# Numbers Pillow may unpack into Python ints (36 bytes each at worst): strip and tile tables, colour maps
MAX_NUMBERS = 1 << 19
_SUB_IFD_TAGS = (330, 34665, 34853, 40965)  # SubIFDs, EXIF, GPS, Interoperability
_LAYOUT_TAGS = {"bits": 258, "samples": 277, "rows": 278, "tile_width": 322, "tile_length": 323}
# bytes per value of each TIFF field type Pillow reads (others it skips without reading)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_NUMERIC_TYPES = {3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18}


class TiffRejected(ValueError):
    """A TIFF whose structure is hostile or broken; the message is one sentence."""


@dataclass(frozen=True)
class TiffLayout:
    """What decoding the first page will hold at once, read from its IFD."""

    pages: int  # IFDs in the main chain
    ifds: int  # all IFDs walked (pages, EXIF, GPS, sub-IFDs)
    tag_bytes: int  # bytes of tag values stored outside the IFDs
    chunk_rows: int  # rows one strip or tile of the first page holds (its height when unknown)
    chunk_width: int  # columns one tile holds (0: strips, a whole row)
    pixel_bits: int  # bits a stored pixel takes, all samples together

    def chunk_bytes(self, width: int, height: int) -> int:
        """Bytes libtiff's buffer for one strip or tile takes (at least 4 a pixel: its RGBA path)."""
        rows = min(self.chunk_rows or height, height)
        cols = min(self.chunk_width or width, width) if self.chunk_width else width
        return rows * cols * max(4, -(-self.pixel_bits // 8))


def is_tiff(head: bytes) -> bool:
    """Whether the bytes start like a TIFF or BigTIFF (the header Pillow would accept)."""
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"MM*\x00", b"II\x00*")


def check_tiff(data: bytes) -> TiffLayout:
    """Walk every IFD of a TIFF and refuse counts, offsets and sizes that would make Pillow read too much."""
    size = len(data)
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or size < 8:
        raise TiffRejected("The TIFF file is damaged: its header is incomplete.")
    magic = struct.unpack(order + "H", data[2:4])[0]
    if magic == 42:
        big, first = False, struct.unpack(order + "I", data[4:8])[0]
    elif magic == 43 and size >= 16 and struct.unpack(order + "HH", data[4:8]) == (8, 0):
        big, first = True, struct.unpack(order + "Q", data[8:16])[0]
    else:
        raise TiffRejected("The TIFF file is damaged: its header is not valid.")
    count_fmt, entry_fmt, entry_size, inline, offset_fmt = (
        ("Q", "HHQ8s", 20, 8, "Q") if big else ("H", "HHI4s", 12, 4, "I"))
    count_size = struct.calcsize(count_fmt)

    seen: set[int] = set()
    todo = [(first, True)]  # (IFD offset, in the main page chain)
    pages = entries = numbers = tag_bytes = 0
    chunk_rows = chunk_width = pixel_bits = 0
    while todo:
        offset, main = todo.pop(0)
        if offset == 0:
            continue
        if offset in seen:
            raise TiffRejected("The TIFF file is damaged: its directories form a loop.")
        seen.add(offset)
        if len(seen) > MAX_IFDS:
            raise TiffRejected(f"The TIFF file has more than {MAX_IFDS} pages or directories; send one image.")
        if offset + count_size > size:
            raise TiffRejected("The TIFF file is damaged: a directory lies outside the file.")
        (n,) = struct.unpack_from(order + count_fmt, data, offset)
        end = offset + count_size + n * entry_size
        if end + struct.calcsize(offset_fmt) > size:
            raise TiffRejected("The TIFF file is damaged: a directory lies outside the file.")
        entries += n
        if entries > MAX_ENTRIES:
            raise TiffRejected(f"The TIFF file has more than {MAX_ENTRIES} tags; it is not a photo we can read.")
        values: dict[int, tuple[int, ...]] = {}
        for i in range(n):
            tag, typ, count, raw = struct.unpack_from(order + entry_fmt, data, offset + count_size + i * entry_size)
            unit = _TYPE_SIZES.get(typ)
            if unit is None:
                continue  # Pillow skips a type it does not know without reading its value
            nbytes = unit * count
            if typ in _NUMERIC_TYPES:
                numbers += count
            if nbytes > inline:
                (where,) = struct.unpack(order + offset_fmt, raw)
                if where + nbytes > size:
                    raise TiffRejected("The TIFF file is damaged: a tag points outside the file.")
                tag_bytes += nbytes
                value_data = data[where:where + nbytes] if count <= 64 else b""
            else:
                value_data = raw[:nbytes]
            if tag in _SUB_IFD_TAGS or tag in _LAYOUT_TAGS.values():
                values[tag] = _numbers(order, typ, count, value_data)
        if numbers > MAX_NUMBERS:
            raise TiffRejected("The TIFF file has tag tables too large for a photo; it is not one we can read.")
        if tag_bytes > size:  # values stored more than once: tags share a blob
            raise TiffRejected("The TIFF file's tags overlap each other; it is not a photo we can read.")
        if main and pages == 0:
            chunk_rows = (values.get(_LAYOUT_TAGS["tile_length"]) or values.get(_LAYOUT_TAGS["rows"]) or (0,))[0]
            chunk_width = (values.get(_LAYOUT_TAGS["tile_width"]) or (0,))[0]
            bits = values.get(_LAYOUT_TAGS["bits"]) or (1,)  # TIFF's default: 1 bit, 1 sample
            samples = (values.get(_LAYOUT_TAGS["samples"]) or (1,))[0]
            pixel_bits = sum(bits) if len(bits) > 1 else bits[0] * samples
        for tag in _SUB_IFD_TAGS:
            todo.extend((sub, False) for sub in values.get(tag, ()))
        if main:
            pages += 1
            (after,) = struct.unpack_from(order + offset_fmt, data, end)
            todo.append((after, True))
    if pages == 0:
        raise TiffRejected("The TIFF file is damaged: it holds no image.")
    return TiffLayout(pages, len(seen), tag_bytes, chunk_rows, chunk_width, pixel_bits)


def _numbers(order: str, typ: int, count: int, raw: bytes) -> tuple[int, ...]:
    """The integer values of a short tag (SHORT, LONG, IFD, LONG8 or IFD8); other types give nothing."""
    fmt = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}.get(typ)
    if fmt is None or len(raw) != count * struct.calcsize(fmt):
        return ()
    return struct.unpack(f"{order}{count}{fmt}", raw)
