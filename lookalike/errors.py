"""Domain errors: each carries the HTTP status and a short machine-readable code.

Lower layers raise these (never return ``None`` to signal failure); the service renders them as
``{"error": {"code", "message"}}`` and ingest turns per-item ones into report lines.
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class. ``message`` is safe to show to a client: it names the problem and the fix."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CatalogueError(LookalikeError):
    """The catalogue itself cannot be read (missing folder, unreadable manifest)."""

    status = 400
    code = "catalogue_error"


class InvalidImage(LookalikeError):
    """Bytes that are not a decodable image of an allowed format."""

    status = 422
    code = "invalid_image"


class UnsupportedImageFormat(InvalidImage):
    """An image format outside the allow-list (or not an image at all)."""

    status = 415
    code = "unsupported_image"


class ImageTooLarge(InvalidImage):
    """More pixels than MAX_IMAGE_PIXELS: refused before decoding (decompression bombs)."""

    status = 413
    code = "image_too_large"


class DiskFull(LookalikeError):
    """A write was refused, or failed, for lack of disk space; what was written before stays."""

    status = 507
    code = "insufficient_storage"


class InvalidRequest(LookalikeError):
    status = 400
    code = "invalid_request"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class ItemNotFound(LookalikeError):
    status = 404
    code = "item_not_found"


class ModelLoadError(LookalikeError):
    """The encoder could not be built; the message says which setting to change."""

    code = "model_load_error"


class StoreError(LookalikeError):
    """The store is unusable as configured (dimension or model mismatch, locked directory)."""

    status = 503
    code = "store_error"


class StoreLocked(StoreError):
    code = "store_locked"


class ModelMismatch(StoreError):
    code = "model_mismatch"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class StoreOutOfSpace(StoreUnavailable):
    """The embedded store cannot be opened for lack of disk space (on tmpfs its engine writes as it
    loads); reads come back once space is freed, hence 503 and retry, not 507."""

    code = "insufficient_storage"


class CollectionMissing(StoreUnavailable):
    """The store answers, but the collection was never built (run ingest, or PUT an item)."""

    code = "collection_missing"


class StoreDamaged(StoreError):
    """The store's files cannot be read as they should (truncated, lost, or inconsistent)."""

    code = "store_damaged"


#: What every `StoreDamaged` message ends with: the way out.
DAMAGED_HINT = (
    "run `python -m ingest --verify` (with the API stopped, on the embedded store) to check every item "
    "and rebuild what is damaged, or restore a backup (README: Backup and restore)"
)
