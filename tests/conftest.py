"""Fixtures: a generated catalogue, settings on a temporary embedded store, a tiny real encoder."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from werkzeug.serving import make_server

from bench.server import running_service
from lookalike.encoder import ImageEncoder
from lookalike.images import sha256_hex
from lookalike.looks import looks_of
from lookalike.points import StoredItem
from lookalike.settings import Settings
from lookalike.store import VectorStore
from service import create_app

# Offline: the settings default to downloading real weights; the suite (and every process it
# starts) uses random init unless a test sets MODEL_PRETRAINED itself.
os.environ.setdefault("MODEL_PRETRAINED", "")
# Deterministic vectors: PRECISION=auto picks fp32 or bf16 weights by timing, so on a busy machine a
# test would compare bf16 vectors with fp32 ones. The tests of that choice set it themselves.
os.environ.setdefault("PRECISION", "fp32")

ROOT = Path(__file__).resolve().parent.parent
#: A random-init open_clip ViT small enough to run in milliseconds (lookalike/model_configs).
TEST_MODEL = "lookalike-tiny"
CATEGORIES = {"red_round": (220, 30, 30), "green_square": (30, 200, 60), "blue_bar": (40, 60, 220)}
API_KEY = "test-key"


def draw_item(category: str, index: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A product-ish picture: a coloured shape per category, shifted a little per index."""
    colour = CATEGORIES.get(category, (120, 120, 120))
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x, y = 8 + index * 3, 6 + index * 2
    if "round" in category:
        draw.ellipse((x, y, x + 30, y + 30), fill=colour)
    elif "square" in category:
        draw.rectangle((x, y, x + 28, y + 28), fill=colour)
    else:
        draw.rectangle((x, y, x + 40, y + 10), fill=colour)
    return image


def image_bytes(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture
def catalogue_dir(tmp_path: Path) -> Path:
    """3 categories x 4 images, plus one corrupt file in the first category."""
    root = tmp_path / "catalogue"
    for category in CATEGORIES:
        (root / category).mkdir(parents=True)
        for index in range(4):
            draw_item(category, index).save(root / category / f"item{index}.jpg", quality=95)
    (root / "red_round" / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


def write_manifest(root: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = root / name
    if name.endswith(".csv"):
        columns = sorted({key for row in rows for key in row}, key=lambda c: (c not in ("id", "image", "category"), c))
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def engine() -> str:
    """The embedded engine (the default one); modules that test the store run with both (ENGINES)."""
    return "edge"


ENGINES = ["edge", "qdrant-client"]


@pytest.fixture
def settings(tmp_path: Path, catalogue_dir: Path, engine: str) -> Settings:
    return Settings(
        embedded_engine=engine,
        _env_file=None,
        qdrant_url=None,
        qdrant_path=tmp_path / "qdrant",
        collection="products",
        catalogue_dir=catalogue_dir,
        upload_dir=tmp_path / "uploads",
        ingest_error_report=tmp_path / "errors.jsonl",
        model_name=TEST_MODEL,
        model_pretrained="",
        model_checkpoint=None,
        batch_size=4,
        decode_workers=0,
        api_key=API_KEY,
        filterable_fields=["colour"],
        display_fields=["colour"],
    )


@pytest.fixture(scope="session")
def encoder() -> ImageEncoder:
    return ImageEncoder.from_settings(Settings(model_name=TEST_MODEL, model_pretrained="", model_checkpoint=None))


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory) -> Path:
    """The test model exported to ONNX (both variants), as `python -m finetune.export` writes it."""
    from lookalike.model_source import ModelSource
    from lookalike.onnx_export import export_encoder

    directory = tmp_path_factory.mktemp("onnx")
    export_encoder(ModelSource("random-init", TEST_MODEL), directory)
    return directory


@pytest.fixture
def cli_env(settings: Settings, monkeypatch) -> Settings:
    """The environment a command-line run (`ingest.__main__.main`) reads, pointing at `settings`."""
    for name, value in {
        "QDRANT_PATH": str(settings.qdrant_path),
        "CATALOGUE_DIR": str(settings.catalogue_dir),
        "UPLOAD_DIR": str(settings.upload_dir),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "INGEST_ERROR_REPORT": str(settings.ingest_error_report),
        "DECODE_WORKERS": "0",
        "EMBEDDED_ENGINE": settings.embedded_engine,
    }.items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def store(settings: Settings) -> Iterator[VectorStore]:
    store = VectorStore.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def app(settings: Settings, encoder: ImageEncoder, store: VectorStore):
    app = create_app(settings, encoder=encoder, store=store)
    app.config["TESTING"] = True
    yield app
    app.extensions["lookalike"].inference.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def ingested(encoder, store, catalogue_dir):
    """The generated catalogue stored directly (no ingest run: the HTTP tests do not depend on
    ingest), with a `colour` metadata field."""
    items, images = [], []
    for category, colour in (("red_round", "red"), ("green_square", "green"), ("blue_bar", "blue")):
        for i in range(4):
            data = (catalogue_dir / category / f"item{i}.jpg").read_bytes()
            metadata = {"colour": "crimson" if not items else colour}
            image = f"{category}/item{i}.jpg"
            items.append(
                StoredItem(f"{category}-{i}", category, image, sha256_hex(data), encoder.identity, metadata=metadata)
            )
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
    store.ensure_collection(encoder.dim, encoder.identity, ["colour"])
    store.upsert(items, looks_of(encoder, images))
    return store


@pytest.fixture
def live_url(app, ingested) -> Iterator[str]:
    """The app with the generated catalogue, served over HTTP on loopback (browsers, generated clients)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


#: Requests a server refuses before the app sees them (raw bytes: httpx would not send some of them).
LONG_QUERY = b"&".join([b"category=" + b"x" * 60] * 150)  # 10,499 bytes: over gunicorn's and nginx's 8 KiB
REQUEST_LINE_TOO_LONG = b"GET /v1/items:random?" + LONG_QUERY + b" HTTP/1.1\r\nHost: x\r\n\r\n"
HEADER_TOO_LARGE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n"
MALFORMED = b"GARBAGE\r\n\r\n"


def raw_request(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are (httpx would refuse some of them); the status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, {k.lower(): v for k, v in headers.items()}, body


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The API under gunicorn with the project's config, on a free port: (port, base URL). One per
    test module (its start is most of such a test's time); the tests leave no state in it."""
    tmp_path = tmp_path_factory.mktemp("gunicorn")
    env = {
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "MODEL_NAME": TEST_MODEL,
        "MODEL_PRETRAINED": "",
        "MODEL_CHECKPOINT": "",
        "REQUEST_BODY_TIMEOUT_S": "3",
    }
    with running_service(env, timeout_s=120, ready_path="/healthz") as (url, _, _):  # no collection: never ready
        yield int(url.rsplit(":", 1)[1]), url
