"""Decoding untrusted bytes: every odd-but-valid image gives the right RGB, every bad one a clear error."""

from __future__ import annotations

import io
import struct
import threading
import time

import pytest
from PIL import Image

from lookalike.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from lookalike.images import MAX_JPEG_SCANS, WORKING_SHORT_SIDE, decode_image, image_format, jpeg_scans
from tests.conftest import image_bytes

LIMIT = 10_000_000


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    decoded = decode_image(image_bytes(image, "PNG"), LIMIT)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    decoded = decode_image(image_bytes(image, "PNG", transparency=0), LIMIT)
    assert decoded.getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    red, green, blue = decode_image(image_bytes(image, "JPEG"), LIMIT).getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_png_keeps_its_brightness():
    image = Image.new("I;16", (4, 4), 40000)  # ~61 % of the 16-bit range
    decoded = decode_image(image_bytes(image, "PNG"), LIMIT)
    assert decoded.mode == "RGB"
    assert 150 <= decoded.getpixel((0, 0))[0] <= 160


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    decoded = decode_image(image_bytes(image, "JPEG", exif=exif), LIMIT)
    assert decoded.size == (20, 40)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    red, _, blue = decode_image(buffer.getvalue(), LIMIT).getpixel((2, 2))
    assert red > 200 and blue < 50


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"just some text, named .jpg", UnsupportedImageFormat),
        (b"<html><body>hi</body></html>", UnsupportedImageFormat),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', UnsupportedImageFormat),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", UnsupportedImageFormat),
    ],
    ids=["empty", "text", "html", "svg", "pdf"],
)
def test_non_images_are_refused(data: bytes, error: type[Exception]):
    with pytest.raises(error):
        decode_image(data, LIMIT)


def test_truncated_jpeg_is_invalid():
    data = image_bytes(Image.new("RGB", (64, 64), (10, 200, 10)), "JPEG")
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_pixel_limit_is_checked_before_decoding():
    data = image_bytes(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageTooLarge, match="4,000,000 pixels"):
        decode_image(data, max_pixels=1_000_000)


def test_decompression_bomb_is_refused():
    data = image_bytes(Image.new("1", (20000, 20000)), "PNG")  # 400 Mpx in ~50 kB
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge):
        decode_image(data, LIMIT)


def test_format_is_decided_by_content():
    png = image_bytes(Image.new("RGB", (4, 4)), "PNG")
    assert image_format(png) == "PNG"


def test_avif_is_decoded_to_its_colours():
    data = image_bytes(Image.new("RGB", (32, 24), (200, 30, 40)), "AVIF", quality=95)
    assert image_format(data) == "AVIF"
    image = decode_image(data, LIMIT)
    red, green, blue = image.getpixel((10, 10))
    assert image.size == (32, 24) and red > 170 and green < 60 and blue < 70


def test_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    red, green, _ = decode_image(buffer.getvalue(), LIMIT).getpixel((2, 2))
    assert green > 150 and red < 50


def test_a_20000_square_image_is_too_large():
    data = image_bytes(Image.new("L", (20000, 20000)), "PNG")
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(data, max_pixels=40_000_000)


def test_a_sliver_is_refused_before_decoding_and_fifty_to_one_is_not():
    """Encoders scale the shorter side to their input size: a 1x20000 PNG became 2.2 GB for the model."""
    with pytest.raises(InvalidImage, match="1x20000: sides more than 50:1"):
        decode_image(image_bytes(Image.new("RGB", (1, 20000)), "PNG"), LIMIT)
    with pytest.raises(InvalidImage, match="510x10"):
        decode_image(image_bytes(Image.new("RGB", (510, 10)), "PNG"), LIMIT)
    assert decode_image(image_bytes(Image.new("RGB", (500, 10)), "PNG"), LIMIT).size == (500, 10)


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding_and_a_progressive_one_is_not():
    """Each scan is a pass over the whole image: repeating the last one 300 times (18 KB) made a
    6000x6000 JPEG take 6.6 s to decode, and a few MB of them would pin a core for many minutes."""
    progressive = image_bytes(Image.new("RGB", (64, 64), (120, 30, 200)), "JPEG", progressive=True)
    assert jpeg_scans(progressive) == 10
    assert decode_image(progressive, LIMIT).size == (64, 64)
    body = progressive[:-2]  # without the end-of-image marker
    last_scan = body[body.rindex(b"\xff\xda") :]
    repeated = body + last_scan * (MAX_JPEG_SCANS - 9) + b"\xff\xd9"
    with pytest.raises(InvalidImage, match=f"JPEG of {MAX_JPEG_SCANS + 1} scans"):
        decode_image(repeated, LIMIT)


def test_polyglot_is_judged_by_its_content():
    # A GIF header followed by HTML/JS: decodes as the GIF it starts with, or is refused; never trusted as HTML.
    gif = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(gif, "GIF")
    polyglot = gif.getvalue() + b"<script>alert(1)</script>"
    assert decode_image(polyglot, LIMIT).size == (4, 4)
    html_first = b"<html>" + gif.getvalue()
    with pytest.raises(UnsupportedImageFormat):
        decode_image(html_first, LIMIT)


def test_html_named_png_is_refused():
    with pytest.raises(UnsupportedImageFormat):
        decode_image(b"<!doctype html><title>x</title>", LIMIT)


def test_files_over_the_byte_limit_are_refused_before_reading(tmp_path):
    from lookalike.images import read_bytes

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageTooLarge, match="2,048 bytes"):
        read_bytes(big, max_bytes=1024)


# -- huge images cost bounded memory (issue 12, defect 12) ----------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_huge_image_is_decoded_at_a_working_size(fmt):
    huge = Image.new("RGB", (6000, 4500), (200, 30, 30))
    image = decode_image(image_bytes(huge, fmt), 40_000_000)
    assert image.mode == "RGB"
    assert WORKING_SHORT_SIDE <= min(image.size) < 2 * WORKING_SHORT_SIDE
    assert image.size[0] > image.size[1]  # aspect kept
    assert image.getpixel((10, 10)) == pytest.approx((200, 30, 30), abs=3)


def test_a_huge_exif_rotated_jpeg_is_reduced_and_upright():
    wide = Image.new("RGB", (6000, 3000), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 600, 3000))  # a black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(image_bytes(wide, "JPEG", exif=exif), 40_000_000)
    assert image.size[1] > image.size[0]  # upright: portrait
    assert sum(image.getpixel((image.width // 2, 5))) < 60  # the band is now at the top


def test_small_images_are_decoded_at_full_size():
    assert decode_image(image_bytes(Image.new("RGB", (900, 700))), 40_000_000).size == (900, 700)


def test_at_most_two_huge_decodes_run_at_once(monkeypatch):
    import lookalike.images as images

    running, most = [0], [0]
    lock = threading.Lock()
    original = images._load_reduced

    def counting(image):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return original(image)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_load_reduced", counting)
    huge = image_bytes(Image.new("RGB", (2500, 2000)), "PNG")
    threads = [threading.Thread(target=decode_image, args=(huge, 40_000_000)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == images.LARGE_DECODES_AT_ONCE


# -- colour profiles ----------------------------------------------------------------------------

#: Adobe RGB (1998)'s primaries adapted to D50, as its ICC profile holds them.
WIDE_PRIMARIES = {
    b"rXYZ": (0.60974, 0.31111, 0.01947),
    b"gXYZ": (0.20528, 0.62567, 0.06087),
    b"bXYZ": (0.14919, 0.06322, 0.74457),
}


def wide_gamut_profile() -> bytes:
    """LittleCMS's sRGB profile with Adobe RGB's primaries and another name: a wide-gamut profile
    built here (none can be downloaded), as a studio's or a phone's photos embed one."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[84:100] = bytes(16)  # the profile id (an MD5 of the rest): "not computed"
    for index in range(struct.unpack(">I", data[128:132])[0]):
        signature, offset, _ = struct.unpack(">4sII", data[132 + 12 * index : 144 + 12 * index])
        if signature in WIDE_PRIMARIES:
            fixed = [round(value * 65536) for value in WIDE_PRIMARIES[signature]]
            data[offset + 8 : offset + 20] = struct.pack(">3i", *fixed)
        elif signature == b"desc":
            data[offset : offset + 200] = data[offset : offset + 200].replace(
                "sRGB".encode("utf-16-be"), "WIDE".encode("utf-16-be")
            )
    return bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_colours_in_a_wide_gamut_profile_are_converted_to_srgb(fmt):
    """An Adobe RGB or Display P3 photo read as if it were sRGB: duller, shifted colours than a
    browser shows, in colour search and in the model's input."""
    from PIL import ImageCms

    wide = wide_gamut_profile()
    image = Image.new("RGB", (16, 16), (60, 150, 90))  # a mid green: where Adobe RGB and sRGB differ most
    decoded = decode_image(image_bytes(image, fmt, icc_profile=wide, quality=100), LIMIT)
    source = ImageCms.ImageCmsProfile(io.BytesIO(wide))
    expected = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    red, green, blue = decoded.getpixel((8, 8))
    assert red < 30  # a more saturated green in sRGB's terms than the numbers read as sRGB
    assert max(abs(a - b) for a, b in zip((red, green, blue), expected.getpixel((8, 8)), strict=True)) <= 2
    assert "icc_profile" not in decoded.info  # the pixels are sRGB now


def test_srgb_untagged_and_unreadable_profiles_leave_the_pixels_as_they_are():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (8, 8), (60, 150, 90))
    for profile in (srgb, b"not a profile", b""):
        decoded = decode_image(image_bytes(image, "PNG", icc_profile=profile), LIMIT)
        assert decoded.getpixel((4, 4)) == (60, 150, 90)
