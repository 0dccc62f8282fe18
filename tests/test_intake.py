"""Tests for pipelines.intake: every input is built in memory or under tmp_path."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines import intake
from pipelines.intake import DAMAGED, NOT_AN_IMAGE, ImageRejected, Intake, Limits, load_image

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


# --- helpers ---------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    """Save an image to bytes in the given Pillow format."""
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def refused(source, limits: Limits = Limits()) -> str:
    """Load something that must be refused; return its sentence after checking it is clean."""
    with pytest.raises(ImageRejected) as info:
        load_image(source, limits)
    msg = str(info.value)
    assert "Traceback" not in msg
    assert not re.search(r"\w*(Error|Exception|Warning)\b", msg), msg
    assert "/" not in msg and "\\" not in msg, msg  # no file-system paths
    assert "\n" not in msg and msg.endswith(".") and ". " not in msg, msg  # one sentence
    return msg


def near(pixel, expected, tol: int = 0) -> bool:
    """Whether two RGB tuples match within tol per channel."""
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def grey_png(width: int, height: int, real_rows: bool) -> bytes:
    """An 8-bit grey PNG of any size: all-zero rows really compressed, or just a header and an empty IDAT."""
    comp = zlib.compressobj(9)
    idat = b""
    if real_rows:  # a true decompression bomb: tiny file, width*height bytes once decoded
        row = bytes(width + 1)
        idat = b"".join(comp.compress(row) for _ in range(height))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def noise(size=(96, 64), mode="RGB") -> Image.Image:
    """A deterministic noisy image that compresses badly (so truncation hits pixel data)."""
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


# --- allowed formats -------------------------------------------------------

COLOUR = (204, 51, 102)  # on the web palette, so GIF keeps it exactly


@pytest.mark.parametrize(
    "fmt, tol", [("JPEG", 6), ("PNG", 0), ("WEBP", 6), ("BMP", 0), ("GIF", 0), ("TIFF", 0)]
)
def test_allowed_formats_round_trip_to_rgb(fmt, tol):
    data = encode(Image.new("RGB", (37, 23), COLOUR), fmt)
    got = load_image(data)
    assert isinstance(got, Intake)
    assert got.format == fmt
    assert got.image.mode == "RGB"
    assert got.image.size == (37, 23) and (got.width, got.height) == (37, 23)
    assert near(got.image.getpixel((18, 11)), COLOUR, tol)


def test_format_is_read_from_content_not_name(tmp_path):
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(encode(Image.new("RGB", (20, 20), COLOUR), "PNG"))
    assert load_image(png_named_jpg).format == "PNG"

    pdf_named_png = tmp_path / "picture.png"
    pdf_named_png.write_bytes(b"%PDF-1.7\n1 0 obj\n<< >>\nendobj\n")
    assert "PDF" in refused(pdf_named_png)


def test_other_pillow_decoders_are_never_tried(monkeypatch):
    Image.init()
    tried = []

    def spy(fmt):
        def factory(fp, filename=None):
            tried.append(fmt)
            raise SyntaxError("spy")

        return factory

    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in intake.ALLOWED_FORMATS:
            monkeypatch.setitem(Image.OPEN, fmt, (spy(fmt), None))  # None: accept any prefix
    pcx = encode(Image.new("RGB", (20, 20), COLOUR), "PCX")  # Pillow reads PCX, we must not
    assert refused(pcx) == NOT_AN_IMAGE
    assert tried == []


# --- refused kinds -----------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, words",
    [
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF document"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG drawing"),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg width="1"/>', "SVG drawing"),
        (b'<?xml version="1.0" encoding="UTF-8"?>\n<catalog><book/></catalog>', "XML document"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript (EPS)"),
        (b"8BPS\x00\x01" + bytes(64), "Photoshop (PSD)"),
        (encode(Image.new("RGB", (32, 32), COLOUR), "ICO"), "icon (ICO)"),
        (_zip_bytes(), "ZIP archive"),
        (b"<!DOCTYPE html>\n<html><body><img src=x></body></html>", "web page (HTML)"),
        ("Notes from the meeting: buy milk, café at 10.\n".encode(), "plain text"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC photo"),
    ],
    ids=["pdf", "svg", "svg-xml-prolog", "xml", "eps", "psd", "ico", "zip", "html", "text", "heic"],
)
def test_foreign_files_are_named(data, words):
    msg = refused(data)
    assert words in msg
    assert "JPEG, PNG, WebP, BMP, GIF or TIFF" in msg


def test_random_bytes_get_the_generic_sentence():
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert refused(data) == NOT_AN_IMAGE


@pytest.mark.parametrize("as_path", [False, True])
def test_empty_file(tmp_path, as_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert refused(str(path) if as_path else b"") == "The file is empty."


def test_missing_path_names_no_path(tmp_path):
    missing = tmp_path / "secret-folder" / "nope.jpg"
    msg = refused(missing)
    assert msg == "The file could not be found."
    assert "secret-folder" not in msg and "nope" not in msg


def test_folder_is_refused(tmp_path):
    assert "folder" in refused(tmp_path)


def test_none_and_wrong_types():
    assert refused(None) == "No image was provided."
    with pytest.raises(TypeError):
        load_image(12345)


# --- limits ------------------------------------------------------------------


def test_bytes_over_limit_refused():
    data = encode(noise(), "PNG")
    assert len(data) > 1000
    msg = refused(data, Limits(max_bytes=1000))
    assert msg == f"The image is {round(len(data) / 1000, 1):g} KB; the limit is 1 KB."


def test_default_byte_limit_sentence():
    data = b"\xff\xd8\xff\xe0" + bytes(25_300_000 - 4)
    assert refused(data) == "The image is 25.3 MB; the limit is 20 MB."


def test_just_over_the_limit_never_reads_as_equal():
    msg = refused(b"\xff\xd8\xff\xe0" + bytes(20_000_000 - 3))
    assert msg == "The image is 20.000001 MB; the limit is 20 MB."


def test_path_over_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(), "PNG"))

    def no_open(*args, **kwargs):
        raise AssertionError("file was opened before its size was checked")

    monkeypatch.setattr(intake, "open", no_open, raising=False)
    assert "the limit is 1 KB" in refused(path, Limits(max_bytes=1000))


@pytest.fixture
def decode_spy(monkeypatch):
    """Record every full decode Pillow starts."""
    calls = []
    original = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_decompression_bomb_refused_before_decode(decode_spy):
    bomb = grey_png(9000, 8000, real_rows=True)  # 72 MP of zeros in a ~70 KB file
    assert len(bomb) < 200_000
    msg = refused(bomb)
    assert msg == "The image is 9000 × 8000 pixels (72 MP); the limit is 40 MP."
    assert decode_spy == []


def test_lowered_pixel_limit_refuses_before_decode(decode_spy):
    msg = refused(encode(noise((200, 100)), "PNG"), Limits(max_pixels=10_000))
    assert msg == "The image is 200 × 100 pixels (0.02 MP); the limit is 0.01 MP."
    assert decode_spy == []


def test_pillow_decompression_bomb_error_becomes_a_sentence():
    # 2.5 gigapixels is past Pillow's own hard cap, so Pillow raises before we see the size
    assert refused(grey_png(50_000, 50_000, real_rows=False)) == "The image is 2500 MP; the limit is 40 MP."


def test_pillow_decompression_bomb_warning_as_error_becomes_a_sentence():
    header = grey_png(12_000, 8_000, real_rows=False)  # 96 MP: past Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert refused(header) == "The image is 96 MP; the limit is 40 MP."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert refused(header) == "The image is 12000 × 8000 pixels (96 MP); the limit is 40 MP."


def test_small_side_refused():
    data = encode(Image.new("RGB", (8, 300), COLOUR), "PNG")
    assert refused(data) == "The image is 8 × 300 pixels; each side must be at least 16 pixels."


def test_limits_accept_what_fits_exactly():
    data = encode(Image.new("RGB", (100, 16), COLOUR), "PNG")
    got = load_image(data, Limits(max_bytes=len(data), max_pixels=1600, min_side=16))
    assert got.image.size == (100, 16)


# --- damaged files -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF"])
@pytest.mark.parametrize("keep", [0.6, 0.02])
def test_truncated_file_refused(fmt, keep):
    data = encode(noise((128, 128)), fmt)
    assert refused(data[: int(len(data) * keep)]) == DAMAGED


def test_corrupt_pixel_data_refused():
    data = bytearray(encode(noise((128, 128)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 400] = bytes(300)  # breaks the zlib stream (and the CRC)
    assert refused(bytes(data)) == DAMAGED


# --- orientation, frames -----------------------------------------------------------


def test_exif_orientation_is_applied():
    # stored 40 wide x 20 high: left half red, right half blue
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    got = load_image(encode(im, "JPEG", exif=exif, quality=95))
    assert (got.width, got.height) == (20, 40) and got.image.size == (20, 40)
    assert near(got.image.getpixel((10, 5)), (255, 0, 0), 40)  # left edge is now the top
    assert near(got.image.getpixel((10, 34)), (0, 0, 255), 40)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    got = load_image(data)
    assert got.image.getpixel((15, 15)) == (255, 0, 0)


def test_multipage_tiff_gives_first_page():
    pages = [Image.new("RGB", (30, 20), (0, 255, 0)), Image.new("RGB", (50, 50), (255, 0, 0))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    got = load_image(data)
    assert got.image.size == (30, 20) and got.image.getpixel((5, 5)) == (0, 255, 0)


# --- modes ---------------------------------------------------------------------------


def test_rgba_transparency_is_composited_on_white():
    im = Image.new("RGBA", (20, 20), (10, 20, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    got = load_image(encode(im, "PNG")).image
    assert got.getpixel((0, 0)) == (255, 255, 255)
    assert near(got.getpixel((1, 0)), (127, 127, 127), 1)
    assert got.getpixel((5, 5)) == (10, 20, 30)


def test_la_is_composited_on_white():
    im = Image.new("LA", (20, 20), (60, 255))
    im.putpixel((0, 0), (0, 0))
    got = load_image(encode(im, "PNG")).image
    assert got.getpixel((0, 0)) == (255, 255, 255)
    assert got.getpixel((5, 5)) == (60, 60, 60)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt):
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    im.putpixel((0, 0), 0)
    got = load_image(encode(im, fmt, transparency=0)).image
    assert got.getpixel((0, 0)) == (255, 255, 255)  # palette colour 0 is black, but transparent
    assert got.getpixel((5, 5)) == (200, 30, 40)


@pytest.mark.parametrize("mode, colour", [("RGB", (1, 2, 3)), ("L", 7)])
def test_png_transparency_colour_is_composited_on_white(mode, colour):
    im = Image.new(mode, (20, 20), colour)
    im.putpixel((5, 5), (90, 90, 90) if mode == "RGB" else 90)
    got = load_image(encode(im, "PNG", transparency=colour)).image
    assert got.getpixel((0, 0)) == (255, 255, 255)
    assert got.getpixel((5, 5)) == (90, 90, 90)


@pytest.mark.parametrize("fmt, tol", [("TIFF", 0), ("JPEG", 8)])
def test_cmyk_becomes_rgb(fmt, tol):
    im = Image.new("CMYK", (20, 20), (255, 0, 0, 0))  # pure cyan
    im.paste((0, 0, 0, 255), (0, 0, 10, 20))  # left half pure black
    got = load_image(encode(im, fmt))
    assert got.image.mode == "RGB"
    assert near(got.image.getpixel((15, 10)), (0, 255, 255), tol)
    assert near(got.image.getpixel((3, 10)), (0, 0, 0), tol)


def _gradient16(dtype=np.uint16) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256), (16, 1)).round().astype(dtype)


def test_16bit_png_is_scaled_not_clipped():
    im = Image.fromarray(_gradient16())
    assert im.mode == "I;16"
    got = load_image(encode(im, "PNG")).image
    assert Image.open(io.BytesIO(encode(im, "PNG"))).mode == "I;16"
    assert got.getpixel((0, 8)) == (0, 0, 0)
    assert got.getpixel((255, 8)) == (255, 255, 255)
    assert near(got.getpixel((128, 8)), (128, 128, 128), 1)  # mid grey, not clipped to white


@pytest.mark.parametrize("dtype, mode", [(">u2", "I;16B"), (np.int32, "I")])
def test_other_16bit_and_32bit_integer_modes(dtype, mode):
    im = Image.fromarray(_gradient16(dtype))
    assert im.mode == mode
    got = load_image(im).image
    assert got.getpixel((0, 0)) == (0, 0, 0)
    assert got.getpixel((255, 0)) == (255, 255, 255)
    assert near(got.getpixel((128, 0)), (128, 128, 128), 1)


def test_float_image_in_0_1_is_scaled():
    arr = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (20, 1))
    data = encode(Image.fromarray(arr, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    got = load_image(data).image
    assert got.getpixel((0, 0)) == (0, 0, 0)
    assert got.getpixel((99, 0)) == (255, 255, 255)
    assert near(got.getpixel((50, 0)), (129, 129, 129), 2)


def test_float_image_with_unknown_range_is_stretched():
    arr = np.tile(np.linspace(-1000, 3000, 100, dtype=np.float32), (20, 1))
    got = load_image(Image.fromarray(arr, "F")).image
    assert got.getpixel((0, 0)) == (0, 0, 0)
    assert got.getpixel((99, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode, fill, expected", [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))])
def test_grey_and_bilevel_become_rgb(mode, fill, expected):
    im = Image.new(mode, (20, 20), fill)
    im.putpixel((0, 0), 0)
    got = load_image(encode(im, "PNG")).image
    assert got.mode == "RGB"
    assert got.getpixel((5, 5)) == expected
    assert got.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV"])
def test_other_colour_spaces_become_rgb(mode):
    original = Image.new("RGB", (20, 20), (200, 60, 30))
    got = load_image(original.convert(mode))
    assert got.image.mode == "RGB" and got.format == "PIL"
    assert near(got.image.getpixel((3, 3)), (200, 60, 30), 12)


# --- identity --------------------------------------------------------------------------


def test_sha256_is_of_raw_bytes_and_same_for_path_and_bytes(tmp_path):
    data = encode(noise(), "JPEG")
    path = tmp_path / "x.jpeg"
    path.write_bytes(data)
    from_bytes, from_path, from_str = load_image(data), load_image(path), load_image(str(path))
    assert from_bytes.sha256 == hashlib.sha256(data).hexdigest()
    assert from_path.sha256 == from_bytes.sha256 == from_str.sha256
    assert from_path.image.tobytes() == from_bytes.image.tobytes()


def test_pil_input_hash_and_caller_image_untouched():
    im = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    got = load_image(im)
    assert got.format == "PIL" and got.image.mode == "RGB"
    assert got.image.getpixel((0, 0)) == (255, 255, 255)
    assert im.mode == "RGBA" and im.getpixel((0, 0)) == (0, 0, 0, 0)
    assert got.sha256 == load_image(Image.new("RGB", (20, 20), (255, 255, 255))).sha256
    assert got.sha256 != load_image(Image.new("RGB", (20, 20), (255, 255, 254))).sha256
    assert load_image(Image.new("RGB", (16, 25))).sha256 != load_image(Image.new("RGB", (25, 16))).sha256


def test_pil_input_respects_limits():
    assert "each side must be at least 16" in refused(Image.new("RGB", (10, 50)))
    assert "the limit is 0.001 MP" in refused(Image.new("RGB", (50, 50)), Limits(max_pixels=1000))


# --- work size: large photos are reduced for the models, their own size is kept --------------------


def smooth(size: tuple[int, int]) -> Image.Image:
    """A photo-like picture of the given size: smooth gradients and a few hard edges, no noise."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    rgb = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 127 + 120 * np.sin(6 * x + 4 * y)], -1)
    rgb[h // 3: h // 2, w // 4: w // 2] = (250, 20, 30)  # a red block with sharp sides
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def test_a_large_jpeg_is_decoded_reduced_and_keeps_its_own_size():
    data = encode(smooth((4032, 3024)), "JPEG", quality=92)
    got = load_image(data)
    assert (got.width, got.height) == (4032, 3024)
    assert got.image.size == (2016, 1512)  # the decoder's 1/2 scale: 1/4 would leave 756 < 768
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    full = load_image(data, Limits(work_side=0))
    assert full.image.size == (full.width, full.height) == (4032, 3024)


def test_a_large_png_is_box_reduced_by_a_whole_factor():
    got = load_image(encode(smooth((3200, 2400)), "PNG"))
    assert (got.width, got.height) == (3200, 2400)
    assert got.image.size == (1067, 800) and got.image.mode == "RGB"  # 3200 / 3, rounded up


def test_a_turned_large_jpeg_reports_its_upright_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    got = load_image(encode(smooth((4032, 3024)), "JPEG", exif=exif))
    assert (got.width, got.height) == (3024, 4032)
    assert got.image.size == (1512, 2016)


def test_images_near_the_work_size_are_left_alone():
    for size in ((1000, 800), (1535, 1535), (768, 5000)):
        for fmt in ("JPEG", "PNG"):
            got = load_image(encode(smooth(size), fmt))
            assert got.image.size == (got.width, got.height) == size, (size, fmt)


def test_a_large_pil_image_is_reduced_and_hashed_whole():
    im = smooth((2400, 1800))
    got = load_image(im)
    assert (got.width, got.height) == (2400, 1800) and got.image.size == (1200, 900)
    assert got.sha256 == load_image(im, Limits(work_side=0)).sha256
    assert im.size == (2400, 1800)  # the caller's image is untouched


def test_the_models_see_the_same_picture_from_the_reduced_image():
    from transformers import BlipImageProcessorPil, ViTImageProcessorPil

    for fmt in ("JPEG", "PNG"):
        data = encode(smooth((4032, 3024)), fmt)
        reduced, full = load_image(data).image, load_image(data, Limits(work_side=0)).image
        assert reduced.size != full.size
        for processor in (ViTImageProcessorPil(), BlipImageProcessorPil()):  # ViT's 224 and BLIP's 384 inputs
            a = processor(images=reduced, return_tensors="np")["pixel_values"]
            b = processor(images=full, return_tensors="np")["pixel_values"]
            level = 1 / 255 / min(processor.image_std)  # one grey level, in the model's units
            # measured: mean 0.02-0.07 of a level, worst pixel 1 level (224) and 3 levels (384) at the red block
            assert np.abs(a - b).mean() < 0.1 * level, (fmt, type(processor).__name__)
            assert np.abs(a - b).max() <= 4 * level, (fmt, type(processor).__name__)


# --- real photos -------------------------------------------------------------------------


def test_imagenet_sample_photos_all_load_as_rgb():
    photos = sorted(SAMPLE_DIR.glob("*.JPEG"))
    if not photos:
        pytest.skip(f"no sample photos in {SAMPLE_DIR}")
    for photo in photos:
        got = load_image(photo)
        assert got.image.mode == "RGB", photo.name
        assert got.format == "JPEG", photo.name
        assert got.image.size == (got.width, got.height) and min(got.image.size) >= 16, photo.name
        assert got.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest(), photo.name
    assert len(photos) >= 50


# --- TIFF structure: what ordinary writers produce passes the checks made before Pillow opens it ---------------


@pytest.mark.parametrize("params", [{"big_tiff": True}, {"compression": "jpeg"}, {"compression": "tiff_lzw"},
                                    {"compression": "tiff_adobe_deflate", "dpi": (300, 300)}],
                         ids=["bigtiff", "jpeg", "lzw", "deflate-dpi"])
def test_ordinary_tiffs_pass_the_structure_check(params):
    data = encode(Image.new("RGB", (300, 200), COLOUR), "TIFF", **params)
    layout = intake.tiff.check_tiff(data)
    assert layout.pages == 1 and layout.pixel_bits == 24 and layout.tag_bytes < len(data)
    assert near(load_image(data).image.getpixel((150, 100)), COLOUR, 8 if params.get("compression") == "jpeg" else 0)
