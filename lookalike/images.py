"""Decode untrusted image bytes into an upright RGB ``PIL.Image``.

One function serves ingest, the service and fine-tuning, so every path sees the same pixels:
the format is decided by content (not file name) against an allow-list, the pixel count is
checked from the header before any decoding, EXIF orientation is applied, animated images give
their first frame, and alpha is composited on white (product shots are shown on white).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

#: Formats accepted by content sniffing; anything else (SVG, PDF, PSD, ...) is refused.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
WHITE = (255, 255, 255)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Files larger than this are refused before reading (no product photo needs more).
MAX_FILE_BYTES = 100 * 1024 * 1024


def read_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a regular file, turning filesystem failures into a per-item `InvalidImage`.

    Opened without blocking and checked on the open descriptor: a FIFO or device put in the
    catalogue (or swapped in after it was listed) fails its item instead of hanging the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise InvalidImage(f"file not found: {path}") from e
    except OSError as e:
        raise InvalidImage(f"cannot read {path}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as file:
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidImage(f"not a regular file: {path}")
            if status.st_size > max_bytes:
                raise ImageTooLarge(f"file has {status.st_size:,} bytes, more than the limit of {max_bytes:,}")
            return file.read(max_bytes + 1)[:max_bytes]
        except OSError as e:
            raise InvalidImage(f"cannot read {path}: {e.strerror or e}") from e


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Return the image in ``data`` as an upright RGB image, or raise an `InvalidImage` subclass."""
    if not data:
        raise InvalidImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as e:
            raise UnsupportedImageFormat(f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})") from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageTooLarge(f"image too large: {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise InvalidImage(f"corrupt or truncated image: {e}") from e
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image has {width}x{height} = {width * height:,} pixels, more than the "
                f"limit of {max_pixels:,} (MAX_IMAGE_PIXELS)"
            )
        try:
            image.seek(0)  # animated GIF/WebP/TIFF: the first frame
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise InvalidImage(f"corrupt or truncated {image.format} image: {e}") from e


def image_format(data: bytes) -> str:
    """The format of image bytes that `decode_image` accepted, e.g. "JPEG" (header only)."""
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
        return image.format or "unknown"


def image_mimetype(path: Path) -> str | None:
    """The MIME type of an image file judged by its content (never its name), or None when it is
    not an image of an accepted format."""
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as image:
            return Image.MIME.get(image.format or "")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB: alpha over white, 16-bit scaled down, CMYK via Pillow."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit integer greyscale: scale the full range down to 8 bits.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")
