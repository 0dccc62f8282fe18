"""Image intake: bytes, a path or a PIL image in; a checked, fully loaded RGB image out."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import re
import stat
import tempfile
import urllib.parse
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from pipelines import tiff

# Pillow inflates a PNG's text chunks when it opens the file, up to 64 MB by default: a 74 KB file of zTXt cost
# 66 MB before it was refused. A photo's text (XMP included) is a few KB; 4 MB is plenty and bounds the rest.
PngImagePlugin.MAX_TEXT_MEMORY = 4_000_000

# Pillow's names for the formats we accept; the list is passed to Image.open so
# that no other decoder (PSD, EPS, ICO, ...) ever sees untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
UPLOAD_HINT = "upload a JPEG, PNG, WebP, BMP, GIF or TIFF image"
NOT_AN_IMAGE = f"This file is not an image we can read; {UPLOAD_HINT}."
DAMAGED = "The image file is damaged or incomplete and could not be read."

# Signatures of the allowed formats: a file that starts like one of these but
# will not open is a damaged image, not a foreign file.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
# "BM" alone is too weak (plain text can start with it); the DIB header size that follows is not.
_BMP_HEADER_SIZES = {n.to_bytes(4, "little") for n in (12, 40, 52, 56, 64, 108, 124)}

# Foreign files people commonly upload by mistake, named so the refusal says what they sent.
_FOREIGN_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript (EPS) file"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript (EPS) file"),
    (b"8BPS", "a Photoshop (PSD) document"),
    (b"\x00\x00\x01\x00", "an icon (ICO) file"),
    (b"PK\x03\x04", "a ZIP archive or Office document"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}


class ImageRejected(ValueError):
    """An input refused, with one sentence a person understands as its message (str(exc))."""


@dataclass(frozen=True)
class Limits:
    """Caps on what we agree to decode."""

    max_bytes: int = 20_000_000  # 20 MB
    max_pixels: int = 40_000_000  # 40 MP
    min_side: int = 16
    # Larger photos are decoded (JPEG: at a reduced DCT scale, Image.draft) and box-reduced by a whole factor,
    # never below this on either side: twice BLIP base's 384 input, so the models see the same picture (one grey
    # level apart at most) while a 12 MP phone photo costs a third of the decode and a fifth of the resizing.
    # 0 keeps every image at full size.
    work_side: int = 768
    # Memory one image may take while it is decoded and converted, computed from its header before any pixel is
    # allocated: the decoded picture at the decoder's own bytes per pixel, the decoder's buffers, the RGB image
    # handed to the models and the strips converted on the way (see decoded_bytes).
    max_decoded_bytes: int = 512_000_000  # 512 MB: a 40 MP PNG or TIFF of any shape, a 30 MP WebP


@dataclass(frozen=True)
class Intake:
    """A validated image and the facts about it."""

    image: Image.Image  # mode "RGB", fully loaded, EXIF orientation applied, reduced to about Limits.work_side
    sha256: str  # hex sha256 of the raw file bytes (PIL input: of its RGB pixels plus size)
    width: int  # the photo's own size, after orientation (not the reduced image's)
    height: int
    format: str  # "JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", or "PIL" for an image passed in


def load_image(source: bytes | str | os.PathLike | Image.Image, limits: Limits = Limits()) -> Intake:
    """Turn bytes, a file path or a PIL image into a validated RGB Intake, or raise ImageRejected."""
    if source is None:
        raise ImageRejected("No image was provided.")
    if isinstance(source, Image.Image):
        return _from_pil(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_bytes(len(data), limits)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(source, limits)
    else:
        raise TypeError(f"load_image takes bytes, a path or a PIL image, not {type(source).__name__}")
    return _from_bytes(data, limits)


def data_url_bytes(url: str, limits: Limits = Limits()) -> bytes:
    """The bytes of a data: URL, its length checked against the byte limit before anything is decoded."""
    header, comma, body = url.partition(",")
    if not header.startswith("data:") or not comma:
        raise ImageRejected("The image data URL is malformed; send the image file itself.")
    if header.endswith(";base64"):
        # 4 characters carry 3 bytes: a longer body cannot hold an image under the byte limit
        _check_bytes(len(body) // 4 * 3, limits)
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected("The image data URL is not valid base64; send the image file itself.") from None
    else:
        _check_bytes(len(body) - 2 * body.count("%"), limits)  # each %XX is one byte
        data = urllib.parse.unquote_to_bytes(body)
    _check_bytes(len(data), limits)
    return data


def save_upload(data: bytes, folder: str | os.PathLike) -> str:
    """Write received image bytes to a new, uniquely named private file in folder (for intake to read later)."""
    os.makedirs(folder, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="upload-", dir=folder)  # mode 0600, a name nobody else has
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _read_file(path: str | os.PathLike, limits: Limits) -> bytes:
    """Read a file only after its size on disk has passed the byte limit."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte in the name
        raise ImageRejected("The file could not be found.") from None
    except OSError:  # permissions, name too long, ...
        raise ImageRejected("The file could not be opened.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageRejected("That is a folder, not an image file.")
    _check_bytes(info.st_size, limits)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)  # the file may have grown since stat
    except OSError:  # permissions, or gone since stat
        raise ImageRejected("The file could not be opened.") from None
    _check_bytes(len(data), limits)
    return data


def check_size(size: int, limits: Limits = Limits()) -> None:
    """Refuse, before reading it, a file of this many bytes that is empty or over the byte limit."""
    _check_bytes(size, limits)


def _check_bytes(size: int, limits: Limits) -> None:
    """Refuse empty files and files over the byte limit."""
    if size == 0:
        raise ImageRejected("The file is empty.")
    if size > limits.max_bytes:
        # the unit follows the limit, so a small test limit does not read "0.001 MB"
        if limits.max_bytes >= 1_000_000:
            scale, unit = 1e6, "MB"
        elif limits.max_bytes >= 1_000:
            scale, unit = 1e3, "KB"
        else:
            scale, unit = 1, "bytes"
        got, cap = _pair(size / scale, limits.max_bytes / scale)
        raise ImageRejected(f"The image is {got} {unit}; the limit is {cap} {unit}.")


def _from_bytes(data: bytes, limits: Limits) -> Intake:
    """Decode checked raw bytes: sniff, check structure, open header only, check limits, then decode."""
    im, fmt, own = _open(data, limits)
    with im:
        rgb, turned = _decode(im, limits)
    width, height = own[::-1] if turned else own
    return Intake(rgb, hashlib.sha256(data).hexdigest(), width, height, fmt)


def decoded_cost(data: bytes, limits: Limits = Limits()) -> int:
    """Bytes load_image(data) would hold at once while decoding, from the header alone; refusals raise as there."""
    _check_bytes(len(data), limits)
    im, _, own = _open(data, limits)
    with im:
        return _cost(im, data, own, limits, tiff.check_tiff(data) if im.format == "TIFF" else None)


def _open(data: bytes, limits: Limits) -> tuple[Image.Image, str, tuple[int, int]]:
    """Sniff, check TIFF structure, open the header, check size and decoded memory: (image, format, own size)."""
    kind = _foreign_kind(data[:1024])
    if kind:
        raise ImageRejected(kind)
    layout = None
    if tiff.is_tiff(data[:4]):  # Pillow reads every TIFF tag at open: the structure is checked first
        try:
            layout = tiff.check_tiff(data)
        except tiff.TiffRejected as exc:
            raise ImageRejected(str(exc)) from None
    try:
        im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(_bomb_message(exc, limits)) from exc
    except Exception as exc:  # Pillow reports bad headers with many exception types
        raise ImageRejected(DAMAGED if _has_image_signature(data) else NOT_AN_IMAGE) from exc
    try:
        _check_size(*im.size, limits)
        fmt = "JPEG" if im.format == "MPO" else im.format  # MPO is a JPEG with extra frames
        own = im.size  # the photo's own size: a JPEG draft below makes im.size the decoded one
        if limits.work_side and fmt == "JPEG":
            _draft(im, limits.work_side)
        _check_memory(_cost(im, data, own, limits, layout), limits)
    except BaseException:
        im.close()
        raise
    return im, fmt, own


def _cost(im: Image.Image, data: bytes, own: tuple[int, int], limits: Limits,
          layout: tiff.TiffLayout | None) -> int:
    """decoded_bytes for an image opened from data."""
    return decoded_bytes(im, limits, len(data), own[0] * own[1], layout)


def _from_pil(im: Image.Image, limits: Limits) -> Intake:
    """Validate an already opened PIL image; the caller's object is never modified."""
    _check_size(*im.size, limits)
    _check_memory(decoded_bytes(im, limits), limits)
    hasher = hashlib.sha256()
    try:
        if _orientation(im) != 1:  # the hash is of the upright picture, so turn the whole image first
            im = ImageOps.exif_transpose(im)
        hasher.update(f"{im.width}x{im.height}:".encode())
    except Exception as exc:
        raise ImageRejected(DAMAGED) from exc
    rgb, _ = _decode(im, limits, hasher)
    return Intake(rgb, hasher.hexdigest(), im.width, im.height, "PIL")


# Pillow keeps 1 byte a pixel for these modes, 2 for 16-bit grey and 4 for every other mode (RGB included).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Conversion works on strips of about this many pixels, so its temporary copies (a float64 strip for 16-bit and
# float images, RGBA and white for transparency, the converted RGB) stay small whatever the image's size.
STRIP_PIXELS = 1 << 18
_STRIP_BYTES = STRIP_PIXELS * 40  # the copies one strip holds at most at once, float64 included


def decoded_bytes(im: Image.Image, limits: Limits, file_bytes: int = 0, full_pixels: int = 0,
                  layout: tiff.TiffLayout | None = None) -> int:
    """Bytes decoding and converting im will hold at once, from its header alone (after any JPEG draft)."""
    width, height = im.size
    factor = _factor(im.size, limits.work_side)
    total = width * height * _PIXEL_BYTES.get(im.mode, 4)  # the decoded picture
    total += -(-width // factor) * -(-height // factor) * 4  # the RGB image for the models
    total += _STRIP_BYTES + file_bytes  # strips being converted; the file's bytes, held while it is decoded
    if im.format == "WEBP":
        # libwebp's animation decoder (Pillow's path for every WebP) keeps two RGBA canvases and hands Pillow a
        # copy as bytes: measured 3.9 times the RGBA picture at 40 MP
        total += 3 * width * height * 4
    elif im.format in ("JPEG", "MPO") and (im.info.get("progressive") or im.info.get("progression")):
        total += full_pixels * 3  # libjpeg keeps a progressive file's coefficients at full size
    elif layout is not None:
        # libtiff's buffer for one strip or tile, and the second copy of the file Pillow hands it
        total += layout.chunk_bytes(width, height) + file_bytes
    return total


def _check_memory(need: int, limits: Limits) -> None:
    """Refuse an image whose decoding would take more memory than the limit allows."""
    if need > limits.max_decoded_bytes:
        got, cap = _pair(need / 1e6, limits.max_decoded_bytes / 1e6)
        raise ImageRejected(f"Decoding this image would take {got} MB of memory; the limit is {cap} MB.")


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 when there is none or it cannot be read."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: show the picture as stored
        return 1


def _draft(im: Image.Image, side: int) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while both sides stay at least `side`."""
    try:
        im.draft(None, (side, side))
    except Exception:  # a decoder that cannot scale decodes at full size
        pass


def _factor(size: tuple[int, int], side: int) -> int:
    """The largest whole reduction that keeps both sides at least `side` (1: none)."""
    return max(1, min(size) // side) if side else 1


def _check_size(width: int, height: int, limits: Limits) -> None:
    """Refuse by header dimensions, before any pixel memory is allocated."""
    if width * height > limits.max_pixels:
        got, cap = _pair(width * height / 1e6, limits.max_pixels / 1e6)
        raise ImageRejected(f"The image is {width} × {height} pixels ({got} MP); the limit is {cap} MP.")
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            f"The image is {width} × {height} pixels; each side must be at least {limits.min_side} pixels."
        )


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _decode(im: Image.Image, limits: Limits, hasher=None) -> tuple[Image.Image, bool]:
    """Decode the first frame, convert and reduce it in strips, turn it upright; say whether it was turned a quarter."""
    try:
        im.load()  # decodes the first frame only: animated GIF / APNG / multi-page TIFF stay on frame 0
        orientation = _orientation(im)
        # turning commutes with a whole-factor reduction, so only the small result is turned, never the photo
        rgb = _convert_reduced(im, _factor(im.size, limits.work_side), hasher)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(_bomb_message(exc, limits)) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes means the file is unreadable
        raise ImageRejected(DAMAGED) from exc
    return rgb, orientation in (5, 6, 7, 8)


def _convert_reduced(im: Image.Image, factor: int, hasher=None) -> Image.Image:
    """im as RGB box-reduced by factor, converted in strips so no full-size copy is made (hasher: fed RGB rows)."""
    width, height = im.size
    grey = _grey_mapping(im)
    rows = max(1, STRIP_PIXELS // width // factor) * factor  # a whole number of boxes, so strips reduce alike
    out = None
    for top in range(0, height, rows):
        strip = im if rows >= height else im.crop((0, top, width, min(height, top + rows)))
        rgb = _to_rgb(strip, grey)
        if hasher is not None:
            hasher.update(rgb.tobytes())
        if factor > 1:
            rgb = rgb.reduce(factor)
        if rows >= height:
            return rgb
        if out is None:
            out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
        out.paste(rgb, (0, top // factor))
    return out


def _to_rgb(im: Image.Image, grey=None) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white (grey: the 16/32-bit mapping)."""
    if grey is not None:
        im = grey(im)
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    if im.has_transparency_data:  # alpha bands, palette alpha, or a PNG tRNS colour
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _grey_mapping(im: Image.Image):
    """For a 16/32-bit integer or float image, a function scaling a strip of it to 8-bit grey (Pillow clips)."""
    if im.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return None
    if im.mode.startswith("I;16"):
        scale, offset = 1 / 257, 0.0  # the container's full range, 0..65535, is the picture's range
    else:
        lo, hi = _finite_extrema(im)
        scale, offset = 1.0, 0.0
        if im.mode == "F" and lo >= 0 and hi <= 1:
            scale = 255.0  # floats normalised to 0..1
        elif im.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255:
            scale = 1 / 257  # 16-bit data held in a 32-bit image
        elif (lo < 0 or hi > 255) and hi > lo:
            scale, offset = 255 / (hi - lo), lo  # no known range: stretch what is there

    def to_8bit(strip: Image.Image) -> Image.Image:
        a = np.asarray(strip).astype(np.float64)  # one strip at a time
        a[~np.isfinite(a)] = 0
        a = (a - offset) * scale if offset else a * scale
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")

    return to_8bit


def _finite_extrema(im: Image.Image) -> tuple[float, float]:
    """Smallest and largest value, non-finite ones counted as 0 (as they are drawn), strip by strip."""
    if im.mode == "I":
        lo, hi = im.getextrema()  # integers are all finite: Pillow's own pass, no copy
        return float(lo), float(hi)
    width, height = im.size
    rows = max(1, STRIP_PIXELS // width)
    lo, hi = math.inf, -math.inf
    for top in range(0, height, rows):
        a = np.asarray(im.crop((0, top, width, min(height, top + rows))))
        finite = np.isfinite(a)
        if not finite.all():
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if finite.any():
            lo, hi = min(lo, float(a[finite].min())), max(hi, float(a[finite].max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _foreign_kind(head: bytes) -> str | None:
    """Name a common non-image file from its first bytes, as a refusal sentence."""
    for magic, name in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return f"This file is {name}, not a photo; {UPLOAD_HINT}."
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return f"This file is a HEIC photo, a format we cannot read; {UPLOAD_HINT}."
        if brand in (b"avif", b"avis"):
            return f"This file is an AVIF image, a format we cannot read; {UPLOAD_HINT}."
        return f"This file is a video, not a photo; {UPLOAD_HINT}."
    if _has_image_signature(head):
        return None  # a BMP header can also read as text; the image signature wins
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # only a multi-byte character cut at the end is forgiven
            return None
        text = head[: exc.start].decode("utf-8")
    lower = text.lstrip("\ufeff \t\r\n").lower()
    if lower.startswith("<svg") or (lower.startswith(("<?xml", "<!doctype svg")) and "<svg" in lower):
        return f"This file is an SVG drawing, not a photo; {UPLOAD_HINT}."
    if lower.startswith(("<!doctype html", "<html")):
        return f"This file is a web page (HTML), not a photo; {UPLOAD_HINT}."
    if lower.startswith("<?xml"):
        return f"This file is an XML document, not a photo; {UPLOAD_HINT}."
    if text and all(c.isprintable() or c in "\t\r\n\f\v" for c in text):
        return f"This file is plain text, not a photo; {UPLOAD_HINT}."
    return None


def _has_image_signature(head: bytes) -> bool:
    """Whether the bytes start like one of the allowed formats."""
    bmp = head[:2] == b"BM" and head[14:18] in _BMP_HEADER_SIZES
    return head.startswith(_IMAGE_MAGIC) or bmp or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _bomb_message(exc: Exception, limits: Limits) -> str:
    """Word Pillow's decompression-bomb refusal; its text carries the pixel count."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match and int(match.group(1)) > limits.max_pixels:
        got, cap = _pair(int(match.group(1)) / 1e6, limits.max_pixels / 1e6)
        return f"The image is {got} MP; the limit is {cap} MP."
    return "The image has too many pixels to open safely."


def _pair(value: float, limit: float) -> tuple[str, str]:
    """Format a value and its limit with enough decimals that the value is not 0 and not the limit."""
    cap = _num(limit, 6)
    got = _num(value, 1)
    for digits in range(2, 7):
        if got not in (cap, "0"):
            break
        got = _num(value, digits)
    return got, cap


def _num(x: float, digits: int) -> str:
    """A number with at most `digits` decimals and no trailing zeros."""
    return f"{x:.{digits}f}".rstrip("0").rstrip(".")
