"""Decode untrusted image bytes into an upright RGB ``PIL.Image``.

One function serves ingest, the service and fine-tuning, so every path sees the same pixels:
the format is decided by content (not file name) against an allow-list, the pixel count is
checked from the header before any decoding, EXIF orientation is applied, colours in an embedded
profile are converted to sRGB, animated images give their first frame, and alpha is composited on
white (product shots are shown on white).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import os
import stat
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

#: Formats accepted by content sniffing, with the extension a photo saved in each gets; anything
#: else (SVG, PDF, PSD, HEIC, ...) is refused.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "AVIF": ".avif",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
ALLOWED_FORMATS = tuple(FORMAT_EXTENSIONS)
WHITE = (255, 255, 255)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Longest side over shorter side accepted, for a photo and for a region of one. No product photo is
#: shaped so, and every encoder scales the shorter side to its input size: a 1x20000 PNG of 161
#: bytes became 128 x 2,560,000 pixels (2.2 GB, 2.8 s), and a sliver of a few more bytes, more.
MAX_ASPECT_RATIO = 50


def too_elongated(width: int, height: int) -> bool:
    return max(width, height) > MAX_ASPECT_RATIO * min(width, height)


#: Most scans a (progressive) JPEG may have; encoders write 1 or about 10 (libjpeg's progressive
#: script). Each scan is a pass over every coefficient of the image: a 6000x6000 JPEG whose last
#: scan was repeated 300 times (18 KB more) took 6.6 s to decode: 2 MB of repeats, over ten minutes.
MAX_JPEG_SCANS = 100


#: Decoded images keep at least this many pixels on their shorter side, no more than twice that:
#: every consumer (the encoder at 112-224 px, the colour histogram, the contact sheet) needs
#: fewer, and a 6300x6300 PNG costs ~0.5 GB decoded whole and converted at full size.
WORKING_SHORT_SIDE = 512
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBa", "CMYK", "I", "F", "I;16")
#: Images over this many pixels are decoded at most `LARGE_DECODES_AT_ONCE` at a time per
#: process, so concurrent uploads of huge images cannot add up (README: bad input).
LARGE_PIXELS = 4_000_000
LARGE_DECODES_AT_ONCE = 2
_large_decodes = threading.BoundedSemaphore(LARGE_DECODES_AT_ONCE)


def _release_freed_memory() -> None:
    """Give freed heap memory back to the system after a large decode (glibc's malloc_trim).

    glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
    which Pillow's 16 MiB image blocks come from the heap, and without a trim a worker stays at
    its peak after one huge decode. Only after large decodes: a trim costs a few milliseconds.
    No-op off glibc.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()

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
        _refuse_costly(image, data, max_pixels)
        large = image.width * image.height > LARGE_PIXELS
        try:
            with _large_decodes if large else contextlib.nullcontext():
                image.seek(0)  # animated GIF/WebP/TIFF: the first frame
                decoded = to_rgb(to_srgb(ImageOps.exif_transpose(_load_reduced(image))))
                image.close()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise InvalidImage(f"corrupt or truncated {image.format} image: {e}") from e
        finally:
            if large:
                _release_freed_memory()
        return decoded


def _refuse_costly(image: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse, from the header and markers alone, what would cost far more than a photo to decode
    or to embed."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image has {width}x{height} = {width * height:,} pixels, more than the "
            f"limit of {max_pixels:,} (MAX_IMAGE_PIXELS)"
        )
    if too_elongated(width, height):
        raise InvalidImage(f"image is {width}x{height}: sides more than {MAX_ASPECT_RATIO}:1 apart are refused")
    if image.format in ("JPEG", "MPO") and (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise InvalidImage(f"JPEG of {scans} scans, more than {MAX_JPEG_SCANS}: each is a pass over the whole image")


def jpeg_scans(data: bytes) -> int:
    """The start-of-scan markers in a JPEG (and any in its metadata, an EXIF thumbnail's say):
    entropy-coded data never holds the bytes FF DA, each FF in it being followed by 00 or a
    restart number, so no parsing is needed."""
    return data.count(b"\xff\xda")


def _load_reduced(image: Image.Image) -> Image.Image:
    """Decode at the smallest size that keeps `WORKING_SHORT_SIDE`: a JPEG straight from its DCT
    at 1/2, 1/4 or 1/8 scale (draft mode, a fraction of the memory), other formats decoded whole
    and box-reduced before any conversion copies them. EXIF travels along for the orientation."""
    factor = _reduction(*image.size)
    if factor > 1 and image.format == "JPEG":
        image.draft(image.mode, (image.width // factor, image.height // factor))
    image.load()
    factor = _reduction(*image.size)
    if factor == 1 or image.mode not in REDUCIBLE_MODES:
        return image
    reduced = image.reduce(factor)
    reduced.info = dict(image.info)
    return reduced


def _reduction(width: int, height: int) -> int:
    return max(1, min(width, height) // WORKING_SHORT_SIDE)


def image_format(data: bytes) -> str:
    """The format of image bytes that `decode_image` accepted, e.g. "JPEG" (header only)."""
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
        return image.format or "unknown"


def image_suffixes() -> frozenset[str]:
    """The file name suffixes Pillow knows for the accepted formats (".jpg", ".jpeg", ".avif", ...)."""
    return frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in ALLOWED_FORMATS)


def image_mimetypes() -> tuple[str, ...]:
    """The MIME types of every accepted format."""
    Image.init()  # registers every plugin's MIME type
    return tuple(sorted({Image.MIME[fmt] for fmt in ALLOWED_FORMATS if fmt in Image.MIME}))


def image_mimetype(path: Path) -> str | None:
    """The MIME type of an image file judged by its content (never its name), or None when it is
    not an image of an accepted format."""
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as image:
            return Image.MIME.get(image.format or "")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


#: Embedded colour profiles larger than this are not read (a press CMYK profile is 0.5-2 MB).
MAX_ICC_BYTES = 4 * 2**20


def to_srgb(image: Image.Image) -> Image.Image:
    """An RGB or CMYK image tagged with a colour profile other than sRGB (Adobe RGB from a studio,
    Display P3 from a phone, a press CMYK profile) converted to sRGB, as a browser shows it: colour
    search and the model compare what shoppers see. Untagged, sRGB, or a profile that cannot be
    read: the pixels as they are."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK") or len(icc) > MAX_ICC_BYTES:
        return image
    transform = _srgb_transform(icc, image.mode)
    if transform is None:
        return image
    converted = ImageCms.applyTransform(image, transform)
    converted.info = {key: value for key, value in image.info.items() if key != "icc_profile"}
    return converted


@functools.lru_cache(maxsize=8)  # a catalogue's photos share a few profiles; building one costs ms
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if mode == "RGB" and ImageCms.getProfileDescription(profile).strip().startswith("sRGB"):
            return None
        # NOCACHE: one transform serves request threads at once (LittleCMS's cache is per transform)
        return ImageCms.buildTransform(profile, _SRGB, mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


_SRGB = ImageCms.createProfile("sRGB")


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
