"""One typed settings object, read from environment variables (12-factor).

The env names (``QDRANT_URL``, ``COLLECTION``, ``MODEL_NAME`` ...) are the product's public
contract: scripts and deployments set them, so they are never renamed. Each entry point builds
one ``Settings`` and passes it down; deeper code takes plain arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: DEVICE values (resolved by lookalike.device, which needs torch; settings must not).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"
#: Ingest's defaults per kind of device: images per forward pass and decode processes.
DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 256}

#: Where the team's demo catalogue sits, relative to the project root.
SHARED_CATALOGUE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "catalogue"


#: The weights a MODEL_NAME gets when MODEL_PRETRAINED is not set at all: real weights for the
#: default architecture. Offline, set MODEL_PRETRAINED empty (random init) or to a local file.
DEFAULT_PRETRAINED = {"ViT-B-32": "laion2b_s34b_b79k"}

#: A FILTERABLE_FIELDS entry: a metadata field name, optionally ":keyword" or ":number".
FILTERABLE_FIELD = r"^[A-Za-z0-9_-]{1,64}(:(keyword|number))?$"


def default_catalogue_dir() -> Path | None:
    """The shared demo catalogue when it exists beside the checkout, else nothing."""
    for candidate in (Path("../shared/data/catalogue"), SHARED_CATALOGUE):
        if candidate.is_dir():
            return candidate.resolve()
    return None


class Settings(BaseSettings):
    """Every knob of ingest, fine-tuning and the service. Field name = env var (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    # Qdrant: a server when QDRANT_URL is set, else the embedded store at QDRANT_PATH.
    qdrant_url: str | None = None
    qdrant_path: Path = Path("./data/qdrant")
    #: Engine of the embedded store: Qdrant Edge (Qdrant's engine in-process: HNSW, payload indexes),
    #: or qdrant-client's local mode (pure Python, a full scan per query; chosen by bench/b2 + b4).
    embedded_engine: Literal["edge", "qdrant-client"] = "edge"
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = 10.0
    # Server-only collection layout (Qdrant's cluster mode is the scale-out path).
    qdrant_shard_number: int | None = Field(None, ge=1)
    qdrant_replication_factor: int | None = Field(None, ge=1)
    qdrant_write_consistency_factor: int | None = Field(None, ge=1)
    #: int8 scalar quantisation, quantised vectors in RAM, originals on disk (4x less memory).
    qdrant_quantize_int8: bool = False
    collection: str = Field("products", pattern=r"^[A-Za-z0-9_.-]{1,200}$")
    #: Extra payload fields to index for filtering (comma-separated); `category` always is.
    #: ``name`` gets a keyword index, ``name:number`` a numeric one (range filters, boosts).
    filterable_fields: Annotated[list[Annotated[str, Field(pattern=FILTERABLE_FIELD)]], NoDecode] = []

    # Catalogue: a folder of category folders, or a CSV/JSONL manifest.
    catalogue_dir: Path | None = Field(default_factory=default_catalogue_dir)
    #: Where images added through `PUT /v1/items/<id>` are kept.
    upload_dir: Path = Path("./data/uploads")
    ingest_error_report: Path = Path("./data/ingest-errors.jsonl")

    # Encoder: an open_clip architecture + weights, or this project's own checkpoint.
    model_name: str = "ViT-B-32"
    #: open_clip pretrained tag, `hf-hub:org/repo`, or a local weights file; empty = random init;
    #: unset = the architecture's default (`DEFAULT_PRETRAINED`; random init for the others).
    model_pretrained: str | None = None
    #: This project's fine-tuned checkpoint directory; wins over MODEL_NAME/MODEL_PRETRAINED.
    model_checkpoint: Path | None = None
    #: Where the model runs: auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N.
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    #: What runs the image tower: torch (ingest, fine-tuning, any device), or onnx (ONNX Runtime on
    #: the CPU, no torch in the API process; an export of the model, made on first use).
    encoder_runtime: Literal["torch", "onnx"] = "torch"
    #: Inference precision. torch: auto (bf16 on a GPU; on a CPU whichever of fp32 and bf16 weights
    #: measures faster at start), fp32 or bf16. onnx: auto or fp32, or int8 (dynamic quantisation;
    #: its vectors are its own model's, so ingest and the service must both use it).
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    #: Keep CLIP's text tower for `text=` searches (torch runtime, pretrained models; ~250 MB for
    #: ViT-B-32): false saves the memory, and `text=` answers 400 saying so.
    text_search: bool = True
    #: Where ONNX exports of models that are not checkpoints are kept (a checkpoint keeps its own).
    onnx_dir: Path = Path("./models/onnx")
    #: Images per forward pass in ingest; unset: 32 on a CPU, 256 on a GPU.
    batch_size: int | None = Field(None, ge=1, le=1024)
    #: Processes that decode and preprocess images while the model runs (0 = in the main process);
    #: unset: 2 on a CPU, every core but one (up to 16) beside a GPU.
    decode_workers: int | None = Field(None, ge=0, le=64)
    torch_threads: int | None = Field(None, ge=1)

    #: Default weight of colour in similarity when a request gives no `colour_weight` (0 = shape only).
    colour_weight: float = Field(0.2, ge=0.0, le=1.0)
    #: Ingest reports an item as a near-duplicate of a stored one when their embeddings are at least
    #: this similar (cosine) and their colours at least NEAR_DUPLICATE_COLOUR_SIMILARITY; empty = off.
    near_duplicate_similarity: float | None = Field(0.995, gt=0.0, le=1.0)
    near_duplicate_colour_similarity: float = Field(0.95, ge=0.0, le=1.0)
    #: `category=auto` filters by the predicted category only when it is at least this probable.
    auto_category_min_probability: float = Field(0.5, ge=0.0, le=1.0)

    # Images: limits that protect the process from hostile or broken files.
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    #: A request body must arrive within this many seconds (slow clients get a 408, see
    #: service/body_deadline.py).
    request_body_timeout_s: float = Field(15.0, gt=0.0, le=3600.0)

    # Service.
    api_key: SecretStr | None = None
    #: Allow PUT/DELETE without API_KEY (local development only).
    allow_unauthenticated_writes: bool = False
    #: Require API_KEY for the read endpoints of /v1 too (health, metrics and docs stay open).
    protect_reads: bool = False
    #: Origins allowed to call the API from a browser (comma-separated); empty = no CORS headers.
    cors_origins: Annotated[list[str], NoDecode] = []
    #: Metadata fields the web page shows on each result tile (comma-separated), e.g. brand,price.
    display_fields: Annotated[list[str], NoDecode] = []
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    # gunicorn (service/gunicorn.conf.py): its address, worker processes (with a Qdrant server; one
    # with an embedded store), threads per worker, and the seconds a worker may stay silent.
    bind: str = Field("127.0.0.1:8000", min_length=1)
    web_concurrency: int = Field(2, ge=1, le=256)
    threads: int = Field(32, ge=1, le=4096)
    timeout: int = Field(120, ge=1)

    @field_validator("filterable_fields", "cors_origins", "display_fields", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "qdrant_url",
        "qdrant_api_key",
        "model_checkpoint",
        "api_key",
        "catalogue_dir",
        "near_duplicate_similarity",
        "batch_size",
        "decode_workers",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`API_KEY=` (as compose passes an unset variable) means no key, never the empty key."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_pretrained", "api_key", "qdrant_api_key", "qdrant_url", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        """A key read from a secret file keeps its trailing newline (a Kubernetes secret made with
        `echo`): kept, it is a key no client can send, and every write answers 401."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("qdrant_url")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        """``http(s)://host[:port]``, or a bare host name: ``qdrant:6333`` (a compose service and
        its port) would reach qdrant-client as the unknown scheme "qdrant", a traceback."""
        if value is None or value.startswith(("http://", "https://")) or not any(c in value for c in ":/"):
            return value
        raise ValueError(f"give the server's URL with its scheme, e.g. http://{value.split('://')[-1]}")

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment. A bad value raises `InvalidRequest` naming the
        variable and its value, which each entry point prints in one line (not a traceback)."""
        from pydantic import ValidationError

        from lookalike.errors import InvalidRequest

        try:
            return cls()
        except ValidationError as e:
            problems = "; ".join(
                f"{cls._shown(err['loc'], err['input'])}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise InvalidRequest(f"invalid setting: {problems}") from None

    @classmethod
    def _shown(cls, location: tuple, value: object) -> str:
        """``NAME=value`` of a validation error's variable (an item of a list: its index too);
        a secret's value is never shown."""
        field = cls.model_fields.get(str(location[0]))
        secret = field is not None and SecretStr in (field.annotation, *get_args(field.annotation))
        name = str(location[0]).upper() + "".join(f"[{part}]" for part in location[1:])
        return f"{name}=<hidden>" if secret else f"{name}={value!r}"

    def with_overrides(self, **values: object) -> Settings:
        """A copy with some fields replaced (command-line options), validated like the environment.

        Raises `InvalidRequest` naming the bad value, so a CLI exits 2 with a message instead of
        failing deep inside the data loader.
        """
        from pydantic import ValidationError

        from lookalike.errors import InvalidRequest

        try:
            updated = type(self).model_validate({**self.model_dump(), **values})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise InvalidRequest(f"invalid setting: {problems}") from None
        # What was set stays what the environment or the caller set (COLOUR_WEIGHT overrides only then).
        object.__setattr__(updated, "__pydantic_fields_set__", self.model_fields_set | set(values))
        return updated

    @property
    def pretrained(self) -> str:
        """The weights to load: MODEL_PRETRAINED as set (empty = random init), or when it was not
        set, MODEL_NAME's default weights."""
        if self.model_pretrained is None:
            return DEFAULT_PRETRAINED.get(self.model_name, "")
        return self.model_pretrained

    def ingest_batch_size(self, device_type: str) -> int:
        """BATCH_SIZE, or the default for this kind of device (larger batches feed a GPU)."""
        return self.batch_size or DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])

    @property
    def embedded(self) -> bool:
        """True when no server is configured and Qdrant runs in-process."""
        return not self.qdrant_url

    def catalogue_source(self) -> Path:
        """CATALOGUE_DIR (a folder or a manifest), or an error that says what to set."""
        from lookalike.errors import CatalogueError

        if self.catalogue_dir is None:
            raise CatalogueError(
                "no catalogue configured: set CATALOGUE_DIR (or pass the catalogue path on the command "
                "line) to a folder of category sub-folders or to a CSV/JSONL manifest"
            )
        return self.catalogue_dir

    def catalogue_root(self) -> Path:
        """The folder that catalogue image paths are relative to (a manifest's own folder)."""
        source = self.catalogue_source()
        return source.parent if source.is_file() else source
