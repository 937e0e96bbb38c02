"""Reading an uploaded image from a multipart request, with the same decoding as ingest."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flask import request
from PIL import Image

from lookalike.errors import InvalidRequest
from lookalike.images import decode_image, image_format, sha256_hex

IMAGE_FIELD = "image"


@dataclass(frozen=True)
class Upload:
    data: bytes
    image: Image.Image

    @functools.cached_property
    def format(self) -> str:
        """As detected from the content, e.g. "JPEG"; only PUT needs it, so searches never pay."""
        return image_format(self.data)

    @functools.cached_property
    def sha256(self) -> str:
        """Computed once, when first asked for (PUT and hide_duplicates)."""
        return sha256_hex(self.data)


def read_upload(max_pixels: int) -> Upload:
    """The decoded ``image`` field; 400 if absent, 413/415/422 if it is not a usable image."""
    files = request.files.getlist(IMAGE_FIELD)
    if not files:
        raise InvalidRequest(f"send the image as the multipart form field {IMAGE_FIELD!r}")
    if len(files) > 1:  # which one was meant? (several examples go to /v1/recommend)
        raise InvalidRequest(f"send one image in the form field {IMAGE_FIELD!r}, not {len(files)}")
    data = files[0].read()
    image = decode_image(data, max_pixels)
    return Upload(data, image)


MAX_EXAMPLE_IMAGES = 20


def read_uploads(field: str, max_pixels: int) -> list[Upload]:
    """Every file sent under ``field`` (repeatable), decoded like a single upload."""
    files = request.files.getlist(field)
    if len(files) > MAX_EXAMPLE_IMAGES:
        raise InvalidRequest(f"at most {MAX_EXAMPLE_IMAGES} files in {field!r}")
    uploads = []
    for file in files:
        data = file.read()
        uploads.append(Upload(data, decode_image(data, max_pixels)))
    return uploads
